"""Hugging Face transformers models with context-parallel LSSA / LSSAR (docs/context_parallel.md).

    import nlseq.distributed.hf as cp_hf
    cp_hf.register(group=None, strategy="ring", layout="zigzag")   # adds "lssa_cp" and "lssar_cp"
    model = AutoModelForCausalLM.from_config(config, attn_implementation="lssar_cp")
    ids, sh = nlseq.distributed.shard(input_ids, dim=1, layout="zigzag")   # this rank's tokens
    logits = model(input_ids=ids, position_ids=sh.positions()[None]).logits  # global positions (RoPE)

Every rank feeds its shard of the token sequence with its *global* position ids; the attention
function runs ``nlseq.distributed.softplus_attention`` on the shards (global causal mask, N_i and
ln N_i), and everything else in the model is per token, so each rank gets its tokens' logits and
autograd its share of the parameter gradients (all-reduce them over the group, as data parallelism
does). Shift the labels on the full sequence before sharding them. No padding mask (pack
sequences instead), no dropout; decoding with a KV cache runs single-rank with the registered
"lssa"/"lssar" (nlseq.integrations.transformers) on the gathered cache.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from .attention import softplus_attention

NAMES = ("lssa_cp", "lssar_cp")
_settings: dict[str, Any] = {}


def _no_mask(*args, **kwargs):
    # The op applies the global causal mask itself; a mask built from local lengths would be wrong.
    return None


def _attention(module, query, key, value, attention_mask, *, reweight: bool, dropout: float = 0.0, **kwargs):
    if dropout and dropout > 0:
        raise ValueError("nlseq context-parallel attention: attention dropout is not supported; set it to 0")
    if attention_mask is not None:
        raise ValueError(
            "nlseq context-parallel attention: attention masks (padding) are not supported; pack the "
            "sequences (cu_seqlens) or run without a mask"
        )
    p = None
    if reweight:
        p = float(getattr(getattr(module, "config", None), "lssar_p", None) or _settings["p"])
    causal = bool(getattr(module, "is_causal", True))
    o = softplus_attention(
        query,
        key,
        value,
        group=_settings["group"],
        strategy=_settings["strategy"],
        layout=_settings["layout"],
        causal=causal,
        reweight_p=p,
        backend=_settings["backend"],
    )
    return o.transpose(1, 2).contiguous(), None


def lssa_cp_attention_forward(module, query, key, value, attention_mask, **kwargs):
    return _attention(module, query, key, value, attention_mask, reweight=False, **kwargs)


def lssar_cp_attention_forward(module, query, key, value, attention_mask, **kwargs):
    return _attention(module, query, key, value, attention_mask, reweight=True, **kwargs)


def register(
    group: Optional[Any] = None, strategy: str = "ring", layout: str = "zigzag", p: float = 15.0, backend: str = "auto"
) -> None:
    """Register "lssa_cp" and "lssar_cp" (attention + a no-op mask function) with transformers.

    ``group``/``strategy``/``layout``/``backend`` go to nlseq.distributed.softplus_attention; ``p`` is
    the LSSAR exponent when the config has no ``lssar_p``. Calling it again updates the settings.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p <= 0:
        raise ValueError(f"nlseq.distributed.hf.register: p must be a finite number > 0, got {p!r}")
    _settings.update(group=group, strategy=strategy, layout=layout, p=float(p), backend=backend)
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register("lssa_cp", lssa_cp_attention_forward)
    AttentionInterface.register("lssar_cp", lssar_cp_attention_forward)
    for name in NAMES:
        AttentionMaskInterface.register(name, _no_mask)
