"""ParaRNN language models for Hugging Face transformers: ``ParaRNNConfig`` / ``ParaRNNForCausalLM``.

    import nlseq.integrations.pararnn_lm as pararnn_lm
    pararnn_lm.register()                       # AutoConfig / AutoModelForCausalLM know "nlseq_pararnn"
    config = pararnn_lm.ParaRNNConfig(vocab_size=256, hidden_size=256, num_hidden_layers=4, cell="gru")
    model = AutoModelForCausalLM.from_config(config)
    loss = model(ids, labels=ids).loss          # training: every layer runs nlseq's parallel ParaRNN
    model.save_pretrained(path); AutoModelForCausalLM.from_pretrained(path)
    model.generate(ids, max_new_tokens=32)      # decoding: one recurrent step per token

Architecture (docs/spec.md §1.3 gives the cells; the block arrangement is ours, as the paper's
language models are described: pre-norm residual blocks of a recurrent mixer and an MLP):

    x = embed(ids)
    for each layer:  x = x + W_out · cell(RMSNorm(x))          cell = ParaGRU or ParaLSTM (heads)
                     x = x + W_down · (silu(W_gate u) ⊙ W_up u),  u = RMSNorm(x)
    logits = lm_head(RMSNorm(x))                                  (lm_head tied to embed by default)

Decoding keeps one recurrent state per layer (``ParaRNNCache``: h for ParaGRU, (h, c) for
ParaLSTM), so each new token costs one cell step and the memory does not grow with the length;
the logits equal those of the full forward over the whole sequence (tested). Padding: the models
run left-to-right recurrences, so pad on the right for training (labels −100 on pads); batched
generation from prompts of different lengths is not supported (a left pad would enter the state).

transformers is imported when this module is imported; ``import nlseq`` never imports it.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from ..nn.pararnn import ParaGRU, ParaLSTM

MODEL_TYPE = "nlseq_pararnn"
CELLS = {"gru": ParaGRU, "lstm": ParaLSTM}


class ParaRNNConfig(PretrainedConfig):
    """Configuration of a ParaRNN language model.

    Args:
        vocab_size: tokens (256 for bytes).
        hidden_size: model width d; the recurrent state of every layer has d channels.
        num_hidden_layers: blocks.
        cell: "gru" (ParaGRU) or "lstm" (ParaLSTM).
        heads: heads of the cells' block-diagonal input projection (divides hidden_size).
        intermediate_size: MLP width (default 4·d rounded to a multiple of 64... exactly 4·d here).
        mode, backend, max_iters, tol, on_nonconvergence: passed to the cells (see ``nlseq.pararnn``).
        rms_norm_eps, initializer_range, tie_word_embeddings: as in other transformers models.
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        vocab_size: int = 256,
        hidden_size: int = 128,
        num_hidden_layers: int = 2,
        cell: str = "gru",
        heads: int = 2,
        intermediate_size: Optional[int] = None,
        mode: str = "auto",
        backend: str = "auto",
        max_iters: Optional[int] = None,
        tol: Optional[float] = None,
        on_nonconvergence: str = "sequential",
        rms_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        **kwargs,
    ):
        if cell not in CELLS:
            raise ValueError(f"ParaRNNConfig: cell must be one of {tuple(CELLS)}, got {cell!r}")
        for name, v in (
            ("vocab_size", vocab_size),
            ("hidden_size", hidden_size),
            ("num_hidden_layers", num_hidden_layers),
            ("heads", heads),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"ParaRNNConfig: {name} must be a positive int, got {v!r}")
        if hidden_size % heads:
            raise ValueError(f"ParaRNNConfig: hidden_size ({hidden_size}) must be divisible by heads ({heads})")
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.cell, self.heads = cell, heads
        self.intermediate_size = 4 * hidden_size if intermediate_size is None else intermediate_size
        self.mode, self.backend, self.max_iters, self.tol = mode, backend, max_iters, tol
        self.on_nonconvergence = on_nonconvergence
        self.rms_norm_eps, self.initializer_range, self.use_cache = rms_norm_eps, initializer_range, use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class ParaRNNCache:
    """The decoding state: per layer, ParaGRU's h [B, N] or ParaLSTM's (h, c), and the tokens seen."""

    def __init__(self, num_layers: int):
        self.states: list[Optional[tuple[Tensor, ...]]] = [None] * num_layers
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Beam search: keep the states of the chosen beams."""
        self.states = [
            None if s is None else tuple(t.index_select(0, beam_idx.to(t.device)) for t in s) for s in self.states
        ]


class _RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


class ParaRNNBlock(nn.Module):
    def __init__(self, config: ParaRNNConfig):
        super().__init__()
        d = config.hidden_size
        self.is_lstm = config.cell == "lstm"
        self.norm_mix = _RMSNorm(d, config.rms_norm_eps)
        self.cell = CELLS[config.cell](
            d,
            d,
            heads=config.heads,
            batch_first=True,
            backend=config.backend,
            mode=config.mode,
            max_iters=config.max_iters,
            tol=config.tol,
            on_nonconvergence=config.on_nonconvergence,
        )
        self.out_proj = nn.Linear(d, d, bias=False)
        self.norm_mlp = _RMSNorm(d, config.rms_norm_eps)
        self.gate = nn.Linear(d, config.intermediate_size, bias=False)
        self.up = nn.Linear(d, config.intermediate_size, bias=False)
        self.down = nn.Linear(config.intermediate_size, d, bias=False)

    def forward(self, x: Tensor, state: Optional[tuple[Tensor, ...]]) -> tuple[Tensor, tuple[Tensor, ...]]:
        u = self.norm_mix(x)
        if self.is_lstm:
            y, (h_n, c_n) = self.cell(u, state)
            new_state = (h_n, c_n)
        else:
            y, h_n = self.cell(u, None if state is None else state[0])
            new_state = (h_n,)
        x = x + self.out_proj(y)
        v = self.norm_mlp(x)
        x = x + self.down(nn.functional.silu(self.gate(v)) * self.up(v))
        return x, new_state


class ParaRNNPreTrainedModel(PreTrainedModel):
    config_class = ParaRNNConfig
    base_model_prefix = "model"
    _no_split_modules = ["ParaRNNBlock"]

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
        elif isinstance(module, _RMSNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, (ParaGRU, ParaLSTM)):
            module.reset_parameters()  # the paper's initialisation (docs/spec.md §1.3)


class ParaRNNModel(ParaRNNPreTrainedModel):
    def __init__(self, config: ParaRNNConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([ParaRNNBlock(config) for _ in range(config.num_hidden_layers)])
        self.norm = _RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        inputs_embeds: Optional[Tensor] = None,
        cache: Optional[ParaRNNCache] = None,
        use_cache: bool = False,
    ) -> tuple[Tensor, Optional[ParaRNNCache]]:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("ParaRNNModel: pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and cache is None:
            cache = ParaRNNCache(len(self.layers))
        for i, layer in enumerate(self.layers):
            x, state = layer(x, cache.states[i] if cache is not None else None)
            if cache is not None:
                cache.states[i] = state
        if cache is not None:
            cache.seen_tokens += x.shape[1]
        return self.norm(x), cache


class ParaRNNForCausalLM(ParaRNNPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ParaRNNConfig):
        super().__init__(config)
        self.model = ParaRNNModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model makes its own recurrent ParaRNNCache

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        cache: Optional[ParaRNNCache] = None,
        use_cache: Optional[bool] = None,
        attention_mask: Optional[Tensor] = None,
        inputs_embeds: Optional[Tensor] = None,
        **kwargs,
    ):
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(
                "ParaRNNForCausalLM.generate: padded prompts are not supported (a recurrent state "
                "would absorb the pads); generate prompts of different lengths separately"
            )
        if cache is not None and cache.seen_tokens > 0:
            # every token before the last one is already folded into the recurrent state
            return {"input_ids": input_ids[:, cache.seen_tokens :], "cache": cache, "use_cache": True}
        if inputs_embeds is not None:
            return {"inputs_embeds": inputs_embeds, "cache": cache, "use_cache": use_cache}
        return {"input_ids": input_ids, "cache": cache, "use_cache": use_cache}

    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        inputs_embeds: Optional[Tensor] = None,
        cache: Optional[ParaRNNCache] = None,
        labels: Optional[Tensor] = None,
        use_cache: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutput:
        """``labels`` are the input ids (shifted inside, −100 ignored), as in every causal LM of transformers.

        ``attention_mask`` may only mark right padding (1s then 0s per row): the recurrence runs
        left to right, so pads after the last real token change nothing before it.
        """
        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[1] > 1:
            am = attention_mask.to(torch.int64)
            if bool((am[:, 1:] > am[:, :-1]).any()):
                raise ValueError(
                    "ParaRNNForCausalLM: attention_mask may only mark right padding (a 0 followed by "
                    "a 1 would feed pads into the recurrent state)"
                )
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        hidden, cache = self.model(input_ids, inputs_embeds, cache, use_cache=bool(use_cache))
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden).float()
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1).to(logits.device),
                ignore_index=-100,
            )
        out = CausalLMOutput(loss=loss, logits=logits)
        if use_cache:
            out["cache"] = cache
        return out

    def _reorder_cache(self, cache: ParaRNNCache, beam_idx: Tensor) -> ParaRNNCache:
        cache.reorder_cache(beam_idx)
        return cache


_registered = False


def register() -> None:
    """Register ``ParaRNNConfig`` / ``ParaRNNForCausalLM`` with AutoConfig, AutoModel and AutoModelForCausalLM."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    AutoConfig.register(MODEL_TYPE, ParaRNNConfig)
    AutoModel.register(ParaRNNConfig, ParaRNNModel)
    AutoModelForCausalLM.register(ParaRNNConfig, ParaRNNForCausalLM)
    _registered = True
