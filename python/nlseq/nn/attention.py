"""``nlseq.nn.SoftplusAttention``: multi-head softplus attention (LSSA / LSSAR) with its projections."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..ops.softplus_attention import softplus_attention


class SoftplusAttention(nn.Module):
    """Self-attention block ``out = o_proj(softplus_attention(q_proj x, k_proj x, v_proj x))`` (SPEC.md §2).

    Args:
        embed_dim: model width E; the head dim is D = E // num_heads.
        num_heads: query heads H.
        num_kv_heads: key/value heads Hkv (GQA; default H, 1 is MQA); H must be a multiple.
        causal, reweight_p, qk_norm, backend: passed to ``nlseq.softplus_attention``
            (reweight_p=None is LSSA, p > 0 is LSSAR).
        bias: whether the four projections have a bias.

    Parameters (``nn.Linear`` layout, weight [out, in]): q_proj [H·D, E], k_proj and v_proj
    [Hkv·D, E], o_proj [E, H·D].

    ``forward(x, kv_cache=None) -> (out, kv_cache)``: x and out are [B, T, E] (batch first).
    ``kv_cache`` is ``(k, v)`` with k, v [B, Hkv, T_past, D] from an earlier call (or None); the
    returned cache holds the past and the new keys/values, and the new queries attend causally
    with kv_offset = T_past.

    Context parallelism (docs/context_parallel.md): with ``context_parallel_group`` (a
    ProcessGroup, a 1-D DeviceMesh) x is this rank's shard [B, T_local, E] of the sequence in
    ``cp_layout`` ("contiguous" or "zigzag"), attention runs through
    ``nlseq.distributed.softplus_attention(strategy=cp_strategy)`` and the returned cache holds
    this rank's shards. Decoding with a cache stays single-rank: gather the cache once with
    ``gather_kv_cache`` (an all_gather) and pass the full cache with the new tokens (the same on
    every rank); a call with a cache runs the single-device op.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: Optional[int] = None, *, causal: bool = True,
                 reweight_p: Optional[float] = None, qk_norm: bool = True, bias: bool = False, backend: str = "auto",
                 device=None, dtype=None, context_parallel_group=None, cp_strategy: str = "all_gather",
                 cp_layout: str = "contiguous"):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if embed_dim % num_heads != 0:
            raise ValueError(f"SoftplusAttention: embed_dim = {embed_dim} must be divisible by num_heads = {num_heads}")
        if num_kv_heads <= 0 or num_heads % num_kv_heads != 0:
            raise ValueError(f"SoftplusAttention: num_heads = {num_heads} must be a multiple of num_kv_heads = {num_kv_heads}")
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.causal, self.reweight_p, self.qk_norm, self.backend = causal, reweight_p, qk_norm, backend
        f = dict(device=device, dtype=dtype)
        self.q_proj = nn.Linear(embed_dim, num_heads * self.head_dim, bias=bias, **f)
        self.k_proj = nn.Linear(embed_dim, num_kv_heads * self.head_dim, bias=bias, **f)
        self.v_proj = nn.Linear(embed_dim, num_kv_heads * self.head_dim, bias=bias, **f)
        self.o_proj = nn.Linear(num_heads * self.head_dim, embed_dim, bias=bias, **f)
        self._init_context_parallel(context_parallel_group, cp_strategy, cp_layout)

    def _heads(self, x: Tensor, n: int) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)  # [B, n, T, D]

    def forward(self, x: Tensor, kv_cache: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"SoftplusAttention: x must be [B, T, {self.embed_dim}], got {tuple(x.shape)}")
        B, T, _ = x.shape
        q = self._heads(self.q_proj(x), self.num_heads)
        k = self._heads(self.k_proj(x), self.num_kv_heads)
        v = self._heads(self.v_proj(x), self.num_kv_heads)
        past = 0
        if kv_cache is not None:
            k_past, v_past = kv_cache
            past = k_past.shape[2]
            k, v = torch.cat([k_past, k], dim=2), torch.cat([v_past, v], dim=2)
        if self.context_parallel_group is not None and kv_cache is None:
            o = self._context_parallel_attention(q, k, v)
        else:
            o = softplus_attention(q, k, v, causal=self.causal, reweight_p=self.reweight_p, qk_norm=self.qk_norm,
                                   kv_offset=past if self.causal else 0, backend=self.backend)
        out = self.o_proj(o.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))
        return out, (k, v)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                f"causal={self.causal}, reweight_p={self.reweight_p}, qk_norm={self.qk_norm}")

    # ---------------------------------------------------------------- context parallelism
    def _init_context_parallel(self, group, strategy: str, layout: str) -> None:
        from ..distributed.attention import STRATEGIES
        from ..distributed.sharding import LAYOUTS

        if strategy not in STRATEGIES:
            raise ValueError(f"SoftplusAttention: cp_strategy must be one of {STRATEGIES}, got {strategy!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"SoftplusAttention: cp_layout must be one of {LAYOUTS}, got {layout!r}")
        self.context_parallel_group, self.cp_strategy, self.cp_layout = group, strategy, layout

    def _context_parallel_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        from ..distributed.attention import softplus_attention as cp_attention

        return cp_attention(q, k, v, group=self.context_parallel_group, strategy=self.cp_strategy,
                            layout=self.cp_layout, causal=self.causal, reweight_p=self.reweight_p,
                            qk_norm=self.qk_norm, backend=self.backend)

    def gather_kv_cache(self, kv_cache: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The full (k, v) cache from this rank's shards after a context-parallel call (one all_gather
        of the lengths and one of the data per tensor), for single-rank decoding."""
        from ..distributed.sharding import unshard

        if self.context_parallel_group is None:
            return kv_cache
        return tuple(unshard(t, dim=2, group=self.context_parallel_group, layout=self.cp_layout)  # type: ignore[return-value]
                     for t in kv_cache)
