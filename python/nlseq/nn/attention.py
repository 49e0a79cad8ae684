"""``nlseq.nn.SoftplusAttention``: multi-head softplus attention (LSSA / LSSAR) with its projections."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .._checks import check_backend, check_bool, check_float, check_int, check_same, check_tensor, check_tuple
from ..ops.softplus_attention import softplus_attention

_OP = "nn.SoftplusAttention"
Rotary = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def rotary_embedding(x: Tensor, positions: Tensor, theta: float = 10000.0) -> Tensor:
    """Rotary position embedding (RoPE, the rotate-half form of GPT-NeoX / Llama) of x [B, n, T, D].

    Channel pairs (i, i + D/2) rotate by positions · theta^(−2i/D); the angles are computed in
    float32 (float64 for float64 x). ``positions``: [T] or [B, T] integer positions.
    """
    D = x.shape[-1]
    if D % 2:
        raise ValueError(f"nlseq.nn.rotary_embedding: the head dim must be even, got D = {D}")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv = theta ** (-torch.arange(0, D // 2, device=x.device, dtype=acc) * 2 / D)
    ang = positions.to(device=x.device, dtype=acc)[..., None] * inv  # [(B,) T, D/2]
    if ang.dim() == 3:
        ang = ang[:, None]  # [B, 1, T, D/2]
    cos, sin = torch.cos(ang).to(x.dtype), torch.sin(ang).to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class SoftplusAttention(nn.Module):
    """Self-attention block ``out = o_proj(softplus_attention(q_proj x, k_proj x, v_proj x))`` (docs/spec.md §2).

    Args:
        embed_dim: model width E; the head dim is D = E // num_heads.
        num_heads: query heads H.
        num_kv_heads: key/value heads Hkv (GQA; default H, 1 is MQA); H must be a multiple.
        causal, reweight_p, qk_norm, backend: passed to ``nlseq.softplus_attention``
            (reweight_p=None is LSSA, p > 0 is LSSAR).
        bias: whether the four projections have a bias.
        rope_theta: apply rotary position embeddings (``rotary_embedding``, base ``rope_theta``) to
            q and k before the attention, hence before its QK-norm, as the paper's models do.
        rotary: instead of ``rope_theta``, any callable ``rotary(q, k, positions) -> (q, k)`` on
            q [B, H, T, D], k [B, Hkv, T, D] (e.g. a model's own RoPE with scaling).

    Parameters (``nn.Linear`` layout, weight [out, in]): q_proj [H·D, E], k_proj and v_proj
    [Hkv·D, E], o_proj [E, H·D].

    ``forward(x, kv_cache=None, positions=None) -> (out, kv_cache)``: x and out are [B, T, E]
    (batch first, as every nlseq module). ``kv_cache`` is ``(k, v)`` with k, v [B, Hkv, T_past, D]
    from an earlier call (or None); the returned cache holds the past and the new keys/values (keys
    already rotated), and the new queries attend causally with kv_offset = T_past. ``positions``
    ([T] or [B, T]) are the rotary positions of x's rows, by default T_past, T_past + 1, ...

    Context parallelism (docs/context_parallel.md): with ``context_parallel_group`` (a
    ProcessGroup, a 1-D DeviceMesh) x is this rank's shard [B, T_local, E] of the sequence in
    ``cp_layout`` ("contiguous" or "zigzag"), attention runs through
    ``nlseq.distributed.softplus_attention(strategy=cp_strategy)`` and the returned cache holds
    this rank's shards; the rotary positions default to the shard's global positions. Decoding
    with a cache stays single-rank: gather the cache once with ``gather_kv_cache`` (an
    all_gather) and pass the full cache with the new tokens (the same on every rank); a call with
    a cache runs the single-device op.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_kv_heads: Optional[int] = None,
        *,
        causal: bool = True,
        reweight_p: Optional[float] = None,
        qk_norm: bool = True,
        bias: bool = False,
        backend: str = "auto",
        rope_theta: Optional[float] = None,
        rotary: Optional[Rotary] = None,
        device=None,
        dtype=None,
        context_parallel_group=None,
        cp_strategy: str = "all_gather",
        cp_layout: str = "contiguous",
    ):
        super().__init__()
        check_int(_OP, "embed_dim", embed_dim, lo=1)
        check_int(_OP, "num_heads", num_heads, lo=1)
        num_kv_heads = num_heads if num_kv_heads is None else check_int(_OP, "num_kv_heads", num_kv_heads, lo=1)
        for name, flag in (("causal", causal), ("qk_norm", qk_norm), ("bias", bias)):
            check_bool(_OP, name, flag)
        if reweight_p is not None:
            reweight_p = check_float(
                _OP,
                "reweight_p",
                reweight_p,
                lo=0.0,
                lo_open=True,
                what="(None for LSSA, a finite number > 0 for LSSAR)",
            )
        check_backend(_OP, backend)
        if embed_dim % num_heads != 0:
            raise ValueError(f"nlseq.{_OP}: embed_dim = {embed_dim} must be divisible by num_heads = {num_heads}")
        if num_heads % num_kv_heads != 0:
            raise ValueError(
                f"nlseq.{_OP}: num_heads = {num_heads} must be a multiple of num_kv_heads = {num_kv_heads}"
            )
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.causal, self.reweight_p, self.qk_norm, self.backend = causal, reweight_p, qk_norm, backend
        if rope_theta is not None and rotary is not None:
            raise ValueError(f"nlseq.{_OP}: pass rope_theta or rotary, not both")
        if rope_theta is not None:
            rope_theta = check_float(_OP, "rope_theta", rope_theta, lo=1.0, lo_open=True, what="(the RoPE base, > 1)")
            if self.head_dim % 2:
                raise ValueError(f"nlseq.{_OP}: rotary embeddings need an even head dim, got {self.head_dim}")
        if rotary is not None and not callable(rotary):
            raise TypeError(
                f"nlseq.{_OP}: rotary must be callable(q, k, positions) -> (q, k), got {type(rotary).__name__}"
            )
        self.rope_theta, self.rotary = rope_theta, rotary
        f = dict(device=device, dtype=dtype)
        self.q_proj = nn.Linear(embed_dim, num_heads * self.head_dim, bias=bias, **f)
        self.k_proj = nn.Linear(embed_dim, num_kv_heads * self.head_dim, bias=bias, **f)
        self.v_proj = nn.Linear(embed_dim, num_kv_heads * self.head_dim, bias=bias, **f)
        self.o_proj = nn.Linear(num_heads * self.head_dim, embed_dim, bias=bias, **f)
        self._init_context_parallel(context_parallel_group, cp_strategy, cp_layout)

    def _heads(self, x: Tensor, n: int) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)  # [B, n, T, D]

    def _rotate(self, q: Tensor, k: Tensor, positions: Optional[Tensor], past: int) -> tuple[Tensor, Tensor]:
        if self.rope_theta is None and self.rotary is None:
            return q, k
        T = q.shape[2]
        if positions is None and self.context_parallel_group is not None and past == 0:
            positions = self._cp_positions(T, q.device)
        elif positions is None:
            positions = torch.arange(past, past + T, device=q.device)
        elif not isinstance(positions, Tensor) or positions.shape[-1] != T or positions.dim() not in (1, 2):
            raise ValueError(
                f"nlseq.{_OP}: positions must be a tensor [T] or [B, T] with T = {T}, got "
                f"{tuple(positions.shape) if isinstance(positions, Tensor) else type(positions).__name__}"
            )
        if self.rotary is not None:
            return self.rotary(q, k, positions)
        return rotary_embedding(q, positions, self.rope_theta), rotary_embedding(k, positions, self.rope_theta)

    def forward(
        self, x: Tensor, kv_cache: Optional[tuple[Tensor, Tensor]] = None, positions: Optional[Tensor] = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        check_tensor(
            "x",
            x,
            op=_OP,
            ndim=3,
            layout=f"[B, T, E = {self.embed_dim}]",
            device=self.q_proj.weight.device,
            device_of="the module's parameters",
        )
        if x.shape[-1] != self.embed_dim:
            raise ValueError(f"nlseq.{_OP}: x must be [B, T, E = {self.embed_dim}], got shape {tuple(x.shape)}")
        B, T, _ = x.shape
        q = self._heads(self.q_proj(x), self.num_heads)
        k = self._heads(self.k_proj(x), self.num_kv_heads)
        v = self._heads(self.v_proj(x), self.num_kv_heads)
        past = 0
        if kv_cache is not None:
            k_past, v_past = self._check_cache(kv_cache, k)
            past = k_past.shape[2]
        q, k = self._rotate(q, k, positions, past)
        if kv_cache is not None:
            k, v = torch.cat([k_past, k], dim=2), torch.cat([v_past, v], dim=2)
        if self.context_parallel_group is not None and kv_cache is None:
            o = self._context_parallel_attention(q, k, v)
        else:
            o = softplus_attention(
                q,
                k,
                v,
                causal=self.causal,
                reweight_p=self.reweight_p,
                qk_norm=self.qk_norm,
                kv_offset=past if self.causal else 0,
                backend=self.backend,
            )
        out = self.o_proj(o.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))
        return out, (k, v)

    def _check_cache(self, kv_cache, k_new: Tensor) -> tuple[Tensor, Tensor]:
        """kv_cache = (k, v), each [B, Hkv, T_past, D] in the dtype and on the device of the new keys."""
        B, Hkv, _, D = k_new.shape
        layout = f"(k and v [B, Hkv, T_past, D] = [{B}, {Hkv}, T_past, {D}])"
        k_past, v_past = check_tuple(_OP, "kv_cache", kv_cache, 2, "(k, v)")
        for name, t in (("kv_cache[0] (k)", k_past), ("kv_cache[1] (v)", v_past)):
            check_tensor(name, t, op=_OP, ndim=4, layout=layout)
            if (t.shape[0], t.shape[1], t.shape[3]) != (B, Hkv, D):
                raise ValueError(f"nlseq.{_OP}: {name} must have shape {layout}, got {tuple(t.shape)}")
        check_same(_OP, "the new keys", k_new, **{"kv_cache[0] (k)": k_past, "kv_cache[1] (v)": v_past})
        if k_past.shape[2] != v_past.shape[2]:
            raise ValueError(
                f"nlseq.{_OP}: kv_cache's k and v must hold the same number of past positions, got "
                f"{k_past.shape[2]} and {v_past.shape[2]}"
            )
        return k_past, v_past

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
            f"causal={self.causal}, reweight_p={self.reweight_p}, qk_norm={self.qk_norm}"
            + (f", rope_theta={self.rope_theta}" if self.rope_theta is not None else "")
            + (", rotary=<callable>" if self.rotary is not None else "")
        )

    # ---------------------------------------------------------------- context parallelism
    def _init_context_parallel(self, group, strategy: str, layout: str) -> None:
        from ..distributed.attention import STRATEGIES
        from ..distributed.sharding import LAYOUTS

        if strategy not in STRATEGIES:
            raise ValueError(f"nlseq.{_OP}: cp_strategy must be one of {STRATEGIES}, got {strategy!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"nlseq.{_OP}: cp_layout must be one of {LAYOUTS}, got {layout!r}")
        self.context_parallel_group, self.cp_strategy, self.cp_layout = group, strategy, layout

    def _context_parallel_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        from ..distributed.attention import softplus_attention as cp_attention

        return cp_attention(
            q,
            k,
            v,
            group=self.context_parallel_group,
            strategy=self.cp_strategy,
            layout=self.cp_layout,
            causal=self.causal,
            reweight_p=self.reweight_p,
            qk_norm=self.qk_norm,
            backend=self.backend,
        )

    def _cp_positions(self, T_local: int, device) -> Tensor:
        """Global positions of this rank's rows (one all_gather of the shard lengths)."""
        import torch.distributed as dist

        from ..distributed._group import resolve_group
        from ..distributed.sharding import layout_shard

        info = resolve_group(self.context_parallel_group, op="nn.SoftplusAttention")
        n = torch.tensor([T_local], dtype=torch.int64)
        lengths = [torch.zeros_like(n) for _ in range(info.size)]
        dist.all_gather(lengths, n, group=info.group)
        lengths = [int(t) for t in lengths]
        if self.cp_layout == "zigzag":
            return layout_shard(sum(lengths), info.size, info.rank, "zigzag").positions(device)
        start = sum(lengths[: info.rank])
        return torch.arange(start, start + T_local, device=device)

    def gather_kv_cache(self, kv_cache: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The full (k, v) cache from this rank's shards after a context-parallel call (one all_gather
        of the lengths and one of the data per tensor), for single-rank decoding."""
        from ..distributed.sharding import unshard

        if self.context_parallel_group is None:
            return kv_cache
        return tuple(
            unshard(t, dim=2, group=self.context_parallel_group, layout=self.cp_layout)  # type: ignore[return-value]
            for t in kv_cache
        )
