"""PyTorch reference of softplus attention, LSSA and LSSAR (docs/spec.md §2): the definition of correct.

Definitions, per query row i of one (batch, head) or one packed sequence, with N_i the number of
keys row i may see (see ``visible``):

    q̂_i = q_i / max(‖q_i‖₂, EPS),  k̂_j = k_j / max(‖k_j‖₂, EPS)     (qk_norm=True; else q̂ = q, k̂ = k)
    s_ij = ln D · ln N_i · q̂_i·k̂_j            (no 1/√D; c_i = ln D · ln N_i = 0 when N_i <= 1)
    w_ij = softplus(s_ij) on visible j, 0 elsewhere;   L_i = Σ_j w_ij
    LSSA:   P_ij = w_ij / L_i
    LSSAR:  base_ij = N_i w_ij / L_i − O_i  (O_i = 0 if N_i <= 3 else 1),  M_i = max_j base_ij
            P_ij = ReLU(base_ij)^p / Σ_j ReLU(base_ij)^p  =  (ReLU(base_ij)/M_i)^p / R_i,
            R_i = Σ_j (ReLU(base_ij)/M_i)^p  (the overflow-safe form: every term is <= 1)
    o_i = Σ_j P_ij v_j

All-zero rows: a row with no visible key (N_i = 0), or an LSSAR row whose largest base
M_i <= ZERO_ROW_TOL, gives o_i = 0 and zero gradients. docs/spec.md §2 says all-zero rows give 0; the
paper's code divides by (Σ + 1e-8) instead, which also shrinks rows whose Σ_j ReLU(base)^p is
merely small (below ~1e-6, e.g. p = 15 with M_i < 0.4). We normalise exactly (the ratio is
scale-free) and only call a row zero when its largest base is within ZERO_ROW_TOL of 0, where the
float32 row sum L_i can no longer resolve the sign of N_i w_ij / L_i − 1 (identical keys give
base = 0 exactly in real arithmetic and ±1e-6 in float32).

Functions:
- ``softplus_attention_naive``: forms the full [Tq, Tk] matrix in the accumulation dtype; with
  float64 inputs it is the test oracle (differentiable through autograd).
- ``softplus_attention_fwd`` / ``softplus_attention_bwd``: the ``reference`` backend. Queries are
  processed in chunks of ``chunk`` rows against all keys (memory O(chunk·Tk) per (batch, head)
  instead of O(Tq·Tk)), and the backward recomputes each chunk with the explicit gradient
  formulas the kernels use (no autograd graph is kept).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-12  # norm clamp of the QK-norm (as torch.nn.functional.normalize)
# A row whose largest visible score is below this is shifted (weights e^(s − m) instead of
# softplus(s)), so that it cannot underflow to an all-zero row; L then stores ln Σ softplus(s) < 0
# (nlseq/softplus_attention.h kShiftBelow, docs/numerics.md).
SHIFT_BELOW = -40.0
ZERO_ROW_TOL = 1e-4  # an LSSAR row whose largest base N·a − O is <= this is an all-zero row
CHUNK = 256  # query rows per chunk of the chunked reference


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def softplus(x: Tensor) -> Tensor:
    """log(1 + e^x), accurate for every x (relative error ~1 ulp also for x << 0)."""
    return torch.clamp_min(x, 0) + torch.log1p(torch.exp(-x.abs()))


def visible(Tq: int, Tk: int, causal: bool, kv_offset: int, device, rows: Optional[slice] = None, n_offset: int = -1):
    """(mask [Tq', Tk] bool, N [Tq'] int64) for query rows ``rows`` (default all) of one sequence.

    Causal: row i sees keys j <= i + kv_offset (and j < Tk), so N_i = min(i + 1 + kv_offset, Tk).
    Non-causal: every key, N_i = Tk.
    Context parallelism (the keys are one block of a longer sequence): kv_offset may be negative
    (the block starts after the row: N_i clamps at 0), and ``n_offset >= 0`` sets the global N_i =
    n_offset + i + 1 (causal; n_offset = global position of row 0) or N_i = n_offset (non-causal).
    """
    i = torch.arange(Tq, device=device)
    if rows is not None:
        i = i[rows]
    j = torch.arange(Tk, device=device)
    if causal:
        mask = j[None, :] <= (i[:, None] + kv_offset)
        n = torch.clamp(i + 1 + kv_offset, min=0, max=Tk)
    else:
        mask = torch.ones(i.numel(), Tk, dtype=torch.bool, device=device)
        n = torch.full_like(i, Tk)
    if n_offset >= 0:
        n = n_offset + i + 1 if causal else torch.full_like(i, n_offset)
    return mask, n


def length_scale(n: Tensor, D: int, dtype) -> Tensor:
    """c_i = ln D · ln N_i (0 where N_i <= 1)."""
    return math.log(D) * torch.log(torch.clamp_min(n, 1).to(dtype))


def reweight_offset(n: Tensor, dtype) -> Tensor:
    """O_i = 0 for N_i <= 3 (the first three positions), else 1."""
    return (n > 3).to(dtype)


def normalize(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1, eps=EPS)


def _rowmax(x: Tensor, keepdim: bool = False) -> Tensor:
    """Max over the last dim; −inf for an empty row (a sequence without keys)."""
    if x.shape[-1] == 0:
        shape = x.shape[:-1] + ((1,) if keepdim else ())
        return torch.full(shape, -math.inf, dtype=x.dtype, device=x.device)
    return x.amax(-1, keepdim=keepdim)


def row_shift(m: Tensor) -> Tensor:
    """The shift of rows with largest visible score m: m where finite and < SHIFT_BELOW, else 0."""
    return torch.where((m < SHIFT_BELOW) & (m > -math.inf), m, torch.zeros_like(m))


def shifted_weights(s: Tensor, shift: Tensor) -> Tensor:
    """softplus(s), or e^(s − shift) on shifted rows (shift [..., rows] < 0)."""
    sh = shift[..., None]
    return torch.where(sh < 0, torch.exp(torch.clamp_max(s - sh, 0.0)), softplus(s))


def stored_sum(sum_: Tensor, shift: Tensor) -> Tensor:
    """L as stored: the row sum, or ln(row sum) + shift (< 0) on shifted rows."""
    return torch.where(shift < 0, torch.log(sum_) + shift, sum_)


def over_sum(s: Tensor, L: Tensor) -> tuple[Tensor, Tensor]:
    """(softplus(s) / L, sigmoid(s) / L) from the stored L [..., rows] (both e^(s − L) on shifted
    rows, 0 on rows without keys). Entries of s that the row does not see must be masked after."""
    Lc = L[..., None]
    shifted = Lc < 0
    e = torch.exp(torch.clamp_max(torch.where(shifted, s - Lc, torch.zeros_like(s)), 0.0))
    Lsafe = torch.where(Lc > 0, Lc, torch.ones_like(Lc))
    a = torch.where(shifted, e, softplus(s) / Lsafe)
    g = torch.where(shifted, e, torch.sigmoid(s) / Lsafe)
    empty = Lc == 0
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    return torch.where(empty, zero, a), torch.where(empty, zero, g)


def _split(x: Tensor, cu: Tensor) -> list[Tensor]:
    bounds = cu.tolist()
    return [x[:, :, bounds[z] : bounds[z + 1]] for z in range(len(bounds) - 1)]


# ------------------------------------------------------------------------------------ naive oracle
def _naive_dense(q, k, v, causal, reweight_p, qk_norm, kv_offset):
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    G = H // Hkv
    k = k.repeat_interleave(G, dim=1)
    v = v.repeat_interleave(G, dim=1)
    if qk_norm:
        q, k = normalize(q), normalize(k)
    mask, n = visible(Tq, Tk, causal, kv_offset, q.device)
    c = length_scale(n, D, q.dtype)
    s = c[:, None] * (q @ k.transpose(-1, -2))
    shift = row_shift(_rowmax(torch.where(mask, s, torch.full((), -math.inf, dtype=s.dtype, device=s.device))))
    # weights scaled by e^(−shift) on rows whose scores all lie below SHIFT_BELOW: P is unchanged
    w = torch.where(mask, shifted_weights(s, shift), torch.zeros((), dtype=s.dtype, device=s.device))
    L = w.sum(-1, keepdim=True)
    a = w / torch.where(L > 0, L, torch.ones_like(L))
    if reweight_p is None:
        P = a
    else:
        nf = n.to(a.dtype)[:, None]
        base = torch.where(mask, nf * a - reweight_offset(n, a.dtype)[:, None], torch.zeros_like(a))
        zero = (_rowmax(base, keepdim=True) <= ZERO_ROW_TOL) | (L <= 0)
        r = torch.relu(base) ** reweight_p  # direct power: fine in float64 (N^15 << 1e308)
        R = r.sum(-1, keepdim=True)
        P = torch.where(zero, torch.zeros_like(r), r / torch.where(zero, torch.ones_like(R), R))
    return P @ v


def softplus_attention_naive(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = True,
    reweight_p: Optional[float] = None,
    qk_norm: bool = True,
    kv_offset: int = 0,
    cu_seqlens_q: Optional[Tensor] = None,
    cu_seqlens_k: Optional[Tensor] = None,
) -> Tensor:
    """docs/spec.md §2 written out with the full [Tq, Tk] matrix, in the accumulation dtype.

    q [B, H, Tq, D], k/v [B, Hkv, Tk, D]; with cu_seqlens_* (B = 1) each packed sequence is
    attended separately. Forms (N a)^p directly, so use float64 for large p (the oracle).
    """
    dtype = q.dtype
    acc = acc_dtype(dtype)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    if cu_seqlens_q is None:
        return _naive_dense(q, k, v, causal, reweight_p, qk_norm, kv_offset).to(dtype)
    outs = [
        _naive_dense(qs, ks, vs, causal, reweight_p, qk_norm, kv_offset)
        for qs, ks, vs in zip(_split(q, cu_seqlens_q), _split(k, cu_seqlens_k), _split(v, cu_seqlens_k))
    ]
    return torch.cat(outs, dim=2).to(dtype)


# --------------------------------------------------------------- chunked reference backend
def _row_weights(qc, k, rows, Tq, causal, reweight_p, kv_offset, stats=None, n_offset=-1):
    """Recompute one chunk of rows. qc [B, Hkv, G, C, D] (already normalised), k [B, Hkv, 1, Tk, D].

    Returns s, a = w / L, g = σ(s) / L (see ``over_sum``), P, mask, n, c and the row statistics
    (L, M, R) [B, Hkv, G, C]; when ``stats`` is given (the backward) L, M, R are taken from it
    instead of being recomputed.
    """
    D, Tk = qc.shape[-1], k.shape[-2]
    mask, n = visible(Tq, Tk, causal, kv_offset, qc.device, rows, n_offset)
    c = length_scale(n, D, qc.dtype)
    s = (qc @ k.transpose(-1, -2)) * c[:, None]  # [B, Hkv, G, C, Tk]
    zero_t = torch.zeros((), dtype=s.dtype, device=s.device)
    m = _rowmax(torch.where(mask, s, torch.full((), -math.inf, dtype=s.dtype, device=s.device)))
    if stats is None:
        shift = row_shift(m)
        L = stored_sum(torch.where(mask, shifted_weights(s, shift), zero_t).sum(-1), shift)
    else:
        L = stats[0]
    a, g = over_sum(s, L)  # w / L and σ(s) / L
    a, g = torch.where(mask, a, zero_t), torch.where(mask, g, zero_t)
    if reweight_p is None:
        P = _nan_rows(a, L)
        M = R = torch.zeros_like(L)
        return s, a, g, P, mask, n, c, (L, M, R)
    nf = n.to(s.dtype)
    O = reweight_offset(n, s.dtype)
    if stats is None:  # M from the row max of s: softplus is monotonic (docs/spec.md §2)
        M = nf * over_sum(m[..., None], L)[0][..., 0] - O
        M = torch.where(((M > ZERO_ROW_TOL) & (L != 0)) | M.isnan(), M, torch.zeros_like(M))  # NaN stays NaN
    else:
        M = stats[1]
    Msafe = torch.where(M > 0, M, torch.ones_like(M))
    base = nf[:, None] * a - O[:, None]
    t = torch.where(mask & (M > 0)[..., None], torch.relu(base) / Msafe[..., None], zero_t)
    r = t**reweight_p
    R = r.sum(-1) if stats is None else stats[2]
    Rsafe = torch.where(R > 0, R, torch.ones_like(R))
    P = _nan_rows(r / Rsafe[..., None], L, M)
    return s, a, g, P, mask, n, c, (L, M, R)


def _nan_rows(P: Tensor, *row_stats: Tensor) -> Tensor:
    """P with every row whose statistics are NaN (a NaN score it sees) set to NaN: NaN in, NaN out,
    where a failed comparison (L > 0, M > 0) would otherwise turn the row into an all-zero row."""
    bad = torch.zeros_like(row_stats[0], dtype=torch.bool)
    for st in row_stats:
        bad = bad | st.isnan()
    return torch.where(bad[..., None], torch.full((), math.nan, dtype=P.dtype, device=P.device), P)


def _prepare(q, k, v, qk_norm):
    acc = acc_dtype(q.dtype)
    B, H, Tq, D = q.shape
    Hkv = k.shape[1]
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    if qk_norm:
        q, k = normalize(q), normalize(k)
    return q.view(B, Hkv, H // Hkv, Tq, D), k[:, :, None], v[:, :, None]


def _fwd_dense(q, k, v, causal, reweight_p, qk_norm, kv_offset, chunk):
    B, H, Tq, D = q.shape
    qg, kg, vg = _prepare(q, k, v, qk_norm)
    o = torch.empty(B, H, Tq, D, dtype=q.dtype, device=q.device)
    stats = torch.empty(3, B, H, Tq, dtype=acc_dtype(q.dtype), device=q.device)
    for start in range(0, Tq, chunk):
        rows = slice(start, min(start + chunk, Tq))
        _, _, _, P, _, _, _, st = _row_weights(qg[:, :, :, rows], kg, rows, Tq, causal, reweight_p, kv_offset)
        o[:, :, rows] = (P @ vg).view(B, H, -1, D).to(q.dtype)
        stats[:, :, :, rows] = torch.stack(st).view(3, B, H, -1)
    return o, stats


def _bwd_dense(
    q, k, v, o, do, stats, causal, reweight_p, qk_norm, kv_offset, chunk, n_offset=-1, gamma=None, gamma_out=None
):
    """Gradients w.r.t. q̂, k̂ (float32/float64, before the QK-norm backward) and v.

    Context parallelism: ``gamma`` [B, H, Tq] supplies the global Γ_i (LSSAR); with ``gamma_out``
    [B, H, Tq] only this key block's Σ_j dbase_ij w_ij is written there (see partial_bwd_gamma).
    """
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    G = H // Hkv
    acc = acc_dtype(q.dtype)
    qg, kg, vg = _prepare(q, k, v, qk_norm)
    dog = do.to(acc).view(B, Hkv, G, Tq, D)
    delta = (do.to(acc) * o.to(acc)).sum(-1).view(B, Hkv, G, Tq)  # Δ_i = do_i·o_i = Σ_j P_ij dP_ij
    st = stats.to(acc).view(3, B, Hkv, G, Tq)
    dq = torch.empty(B, Hkv, G, Tq, D, dtype=acc, device=q.device)
    dk = torch.zeros(B, Hkv, Tk, D, dtype=acc, device=q.device)
    dv = torch.zeros(B, Hkv, Tk, D, dtype=acc, device=q.device)
    for start in range(0, Tq, chunk):
        rows = slice(start, min(start + chunk, Tq))
        qc, doc, dl = qg[:, :, :, rows], dog[:, :, :, rows], delta[..., rows]
        s, a, g, P, mask, n, c, (L, M, R) = _row_weights(
            qc, kg, rows, Tq, causal, reweight_p, kv_offset, stats=st[..., rows], n_offset=n_offset
        )
        dv += (P.transpose(-1, -2) @ doc).sum(2)
        dP = doc @ vg.transpose(-1, -2)  # [B, Hkv, G, C, Tk]
        # with a = w / L and g = σ(s) / L (over_sum): ds = g · L · dP/dw
        if reweight_p is None:  # P = a: ds = g (dP − Δ)
            dsg = dP - dl[..., None]
        else:  # P = t^p / R, t = ReLU(base)/M, base = N a − O
            Msafe = torch.where(M > 0, M, torch.ones_like(M))[..., None]
            Rsafe = torch.where(R > 0, R, torch.ones_like(R))[..., None]
            nf = n.to(acc)[:, None]
            base = nf * a - reweight_offset(n, acc)[:, None]
            t = torch.where(mask & (base > 0) & (M > 0)[..., None], base / Msafe, torch.zeros_like(base))
            dbase = (dP - dl[..., None]) * reweight_p * t ** (reweight_p - 1) / (Msafe * Rsafe)
            dbase = torch.where(t > 0, dbase, torch.zeros_like(dbase))
            gsum = (dbase * a).sum(-1, keepdim=True)  # this key block's share of Γ_i = Σ_j dbase_ij w_ij / L_i
            if gamma_out is not None:  # context parallelism: the block's Σ_j dbase_ij w_ij (L > 0, unshifted)
                gamma_out[:, :, rows] = (gsum * torch.where(L > 0, L, torch.zeros_like(L))[..., None]).view(B, H, -1)
                continue
            g_row = gsum if gamma is None else gamma.to(acc).view(B, Hkv, G, Tq)[..., rows, None]
            dsg = nf * (dbase - g_row)
        ds = torch.where(mask, dsg * g, torch.zeros_like(dsg)) * c[:, None]  # includes c_i
        ds = torch.where(mask, _nan_rows(ds, L, M), ds)
        dq[:, :, :, rows] = ds @ kg
        dk += (ds.transpose(-1, -2) @ qc).sum(2)
    return dq.view(B, H, Tq, D), dk, dv


def norm_backward(x: Tensor, dxhat: Tensor) -> Tensor:
    """Gradient through x̂ = x / max(‖x‖, EPS): (dx̂ − x̂ (x̂·dx̂)) / ‖x‖, or dx̂ / EPS when clamped.

    Works in place on ``dxhat`` (a fresh buffer from a backward launcher) and returns it, so the
    QK-norm backward adds no [.., T, D] temporaries to the backward's peak memory.
    """
    acc = dxhat.dtype
    x = x.to(acc)
    nrm = torch.linalg.vector_norm(x, dim=-1)
    inv = 1.0 / torch.clamp_min(nrm, EPS)
    proj = torch.einsum("...d,...d->...", x, dxhat) * inv  # x̂·dx̂, without an [.., T, D] product
    proj = torch.where(nrm <= EPS, torch.zeros_like(proj), proj)
    dxhat.addcmul_(x, (proj * inv)[..., None], value=-1.0)  # dx̂ − x̂ (x̂·dx̂)
    return dxhat.mul_(inv[..., None])


def softplus_attention_fwd(
    q, k, v, causal, reweight_p, qk_norm, kv_offset, cu_seqlens_q, cu_seqlens_k, chunk: int = CHUNK
):
    """Chunked forward: (o [B, H, Tq, D] in q's dtype, stats [3, B, H, Tq] = (L, M, R)).

    stats are in the accumulation dtype (float32; float64 for float64 inputs); M = R = 0 for LSSA.
    """
    if cu_seqlens_q is None:
        return _fwd_dense(q, k, v, causal, reweight_p, qk_norm, kv_offset, chunk)
    parts = [
        _fwd_dense(qs, ks, vs, causal, reweight_p, qk_norm, kv_offset, chunk)
        for qs, ks, vs in zip(_split(q, cu_seqlens_q), _split(k, cu_seqlens_k), _split(v, cu_seqlens_k))
    ]
    return torch.cat([p[0] for p in parts], dim=2), torch.cat([p[1] for p in parts], dim=3)


def softplus_attention_bwd(
    q, k, v, o, do, stats, causal, reweight_p, qk_norm, kv_offset, cu_seqlens_q, cu_seqlens_k, chunk: int = CHUNK
):
    """Chunked backward: (dq̂ [B, H, Tq, D], dk̂ [B, Hkv, Tk, D], dv [B, Hkv, Tk, D]), accumulation dtype.

    dq̂ and dk̂ are gradients w.r.t. the normalised q̂, k̂ (w.r.t. q, k when qk_norm=False);
    ``norm_backward`` finishes them.
    """
    if cu_seqlens_q is None:
        return _bwd_dense(q, k, v, o, do, stats, causal, reweight_p, qk_norm, kv_offset, chunk)
    bq, bk = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    parts = []
    for z in range(len(bq) - 1):
        rq, rk = slice(bq[z], bq[z + 1]), slice(bk[z], bk[z + 1])
        parts.append(
            _bwd_dense(
                q[:, :, rq],
                k[:, :, rk],
                v[:, :, rk],
                o[:, :, rq],
                do[:, :, rq],
                stats[:, :, :, rq],
                causal,
                reweight_p,
                qk_norm,
                kv_offset,
                chunk,
            )
        )
    return tuple(torch.cat([p[i] for p in parts], dim=2) for i in range(3))


# --------------------------------------------------------------- context parallelism: key blocks
# One block of keys of a longer sequence (python/nlseq/distributed/attention.py): kv_offset is
# signed and n_offset gives the global N_i (see ``visible``). Partials of the blocks of one row merge
# by addition; the cpp backend has the same three functions (nlseq_ext::softplus_attention_*_partial,
# softplus_attention_bwd_gamma).


def partial_fwd(q, k, v, causal, reweight_p, qk_norm, kv_offset, n_offset, stats_in=None, chunk: int = CHUNK):
    """Unnormalised forward of one key block: (U [B, H, Tq, D], stats [3, B, H, Tq]), accumulation dtype.

    LSSA: U = Σ_j w_ij v_j, stats = (Σ_j w_ij, max_j s_ij, 0) (max −inf for a row without visible keys).
    LSSAR without ``stats_in``: the statistics pass only, U = 0, stats = (Σ_j softplus(s_ij), max_j s_ij, 0).
    LSSAR with the global ``stats_in`` = (L, M, ·): U = Σ_j t_ij^p v_j, stats = (L, M, Σ_j t_ij^p),
    t_ij = ReLU(N_i w_ij / L_i − O_i) / M_i.
    """
    B, H, Tq, D = q.shape
    Hkv = k.shape[1]
    acc = acc_dtype(q.dtype)
    qg, kg, vg = _prepare(q, k, v, qk_norm)
    U = torch.zeros(B, H, Tq, D, dtype=acc, device=q.device)
    stats = torch.zeros(3, B, H, Tq, dtype=acc, device=q.device)
    st_in = None  # (L, M, 1): with R = 1, _row_weights returns the unnormalised t^p
    if stats_in is not None:
        st_in = torch.stack((stats_in[0], stats_in[1], torch.ones_like(stats_in[0]))).to(acc)
        st_in = st_in.view(3, B, Hkv, H // Hkv, Tq)
    ninf = torch.full((), -math.inf, dtype=acc, device=q.device)
    for start in range(0, Tq, chunk):
        rows = slice(start, min(start + chunk, Tq))
        if reweight_p is None or st_in is None:
            s, _, _, _, mask, _, _, _ = _row_weights(
                qg[:, :, :, rows], kg, rows, Tq, causal, None, kv_offset, n_offset=n_offset
            )
            # unshifted weights: partials of one row from different key blocks must share one scale to
            # merge by addition (so the underflow shift of SHIFT_BELOW does not apply across ranks)
            w = torch.where(mask, softplus(s), torch.zeros((), dtype=s.dtype, device=s.device))
            L = w.sum(-1)
            m = _rowmax(torch.where(mask, s, ninf))
            if reweight_p is None:
                U[:, :, rows] = (w @ vg).view(B, H, -1, D)
            R = torch.zeros_like(L)
        else:
            _, _, _, Pn, _, _, _, (L, m, R) = _row_weights(
                qg[:, :, :, rows],
                kg,
                rows,
                Tq,
                causal,
                reweight_p,
                kv_offset,
                stats=st_in[..., rows],
                n_offset=n_offset,
            )
            r = Pn  # = t^p, since R = 1 in st_in
            U[:, :, rows] = (r @ vg).view(B, H, -1, D)
            R = r.sum(-1)
        stats[:, :, :, rows] = torch.stack((L, m, R)).view(3, B, H, -1)
    return U, stats


def partial_bwd(
    q, k, v, o, do, stats, causal, reweight_p, qk_norm, kv_offset, n_offset, gamma=None, chunk: int = CHUNK
):
    """Backward of one key block with the global o, stats (L, M, R) and, for LSSAR, Γ [B, H, Tq]:
    (this block's share of dq̂, dk̂ and dv of this block's keys from these rows), accumulation dtype."""
    if reweight_p is not None and gamma is None:
        raise ValueError("nlseq.reference.softplus_attention.partial_bwd: LSSAR needs the global gamma")
    return _bwd_dense(q, k, v, o, do, stats, causal, reweight_p, qk_norm, kv_offset, chunk, n_offset, gamma)


def partial_bwd_gamma(q, k, v, o, do, stats, causal, reweight_p, qk_norm, kv_offset, n_offset, chunk: int = CHUNK):
    """This key block's Σ_j dbase_ij w_ij [B, H, Tq] (LSSAR); Γ_i = (Σ over blocks) / L_i."""
    B, H, Tq, _ = q.shape
    out = torch.zeros(B, H, Tq, dtype=acc_dtype(q.dtype), device=q.device)
    _bwd_dense(q, k, v, o, do, stats, causal, reweight_p, qk_norm, kv_offset, chunk, n_offset, gamma_out=out)
    return out
