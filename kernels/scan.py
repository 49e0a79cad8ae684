"""Triton kernels of ``nlseq.linear_recurrence`` (SPEC.md §1.1–1.2): h_t = A_t h_{t-1} + b_t.

Layout (the launchers' contract, see python/nlseq/ops/scan.py): A [B, T, N, K, K], b [B, T, N, K],
h0 [B, N, K] or None, contiguous, float32 / bfloat16 / float16; the carried state is float32 and
outputs are rounded once to the input dtype.

Design: chunked over time. Time is cut into NC chunks of L steps; each chunk is sequential inside
and the chunks are combined by a scan over the chunk axis:

    1. ``_*_chunk_kernel`` with SUMMARY: every (batch, channel block, chunk) program composes its
       chunk's steps into one affine map per channel, (A_prod, b_acc) = (A_L ⋯ A_1, state from 0);
    2. ``_combine_kernel``: one program per (batch, channel block) walks the NC chunk maps in order
       and writes each chunk's incoming state (NC is small: a short loop);
    3. ``_*_chunk_kernel`` again: every chunk re-runs from its incoming state and writes h.

When B·N alone fills the GPU, NC = 1 and only pass 3 runs (read A, read b, write h: three memory
passes, the floor). The launcher picks NC from B·N, T and the number of SMs.

Two kernel shapes, one per block size:
    K = 1 (diagonal, the fast path): [BT, BN] tiles, channels contiguous (coalesced), a
        ``tl.associative_scan`` along time inside each tile with a float32 carry between tiles.
        Many independent loads in flight per program is what makes the scan bandwidth-bound.
    K = 2..4: [BN, KP, KP] tiles of K×K blocks (KP = K padded to a power of two with masks), one
        time step per iteration (each step reads BN·K² contiguous elements), matrix-vector and
        matrix-matrix products as broadcast-and-sum over the small K axes.

The backward (SPEC.md §1.2) is the same machinery run the other way (flag BWD): in its scan order
q (reverse time for a forward recurrence), λ_q = A'_q λ_{q−1} + g_q with A'_q = A_{q−1}ᵀ (the
forward A one step later in forward time, read shifted inside the kernel: no shifted copy), A'_0 = I
and λ_{−1} = ḡ (the gradient of h_last), which puts ḡ on the first step. The epilogue writes
db = λ, dA_q = λ_q h_{q+1}ᵀ (h_{q+1}: forward state one step earlier in forward time; h0 or 0
past the end) and dh0 = A_{T−1}ᵀ λ_{T−1}, all fused.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from nlseq.registry import triton_interpret

_INTERPRET = triton_interpret()

# Chunk length under the interpreter: T = 1000 gives 4 chunks, T <= 256 runs single-pass, so the
# parity suite exercises both paths.
_INTERPRET_CHUNK = 256


# ---------------------------------------------------------------- autotune configs
def _diag_configs():
    if _INTERPRET:
        # BT = 1: the interpreter runs associative_scan element by element in Python, so the
        # default interpreted path scans one step per iteration (the tile path BT > 1 is tested
        # on small shapes in tests/test_scan_triton.py by passing explicit meta-parameters).
        return [triton.Config({"BT": 1, "BN": 64}, num_warps=1, num_stages=1)]
    return [
        triton.Config({"BT": BT, "BN": BN}, num_warps=w, num_stages=s)
        for BT, BN, w, s in [
            (32, 64, 4, 3), (64, 64, 4, 2), (64, 64, 8, 3), (32, 128, 4, 3),
            (64, 128, 8, 2), (16, 128, 4, 4), (128, 32, 4, 2), (32, 32, 4, 4),
        ]
    ]


def _block_configs():
    if _INTERPRET:
        return [triton.Config({"BN": 32}, num_warps=1, num_stages=1)]
    return [
        triton.Config({"BN": BN}, num_warps=w, num_stages=s)
        for BN, w, s in [(16, 2, 3), (32, 2, 3), (32, 4, 4), (64, 4, 3), (64, 4, 4), (128, 4, 3), (128, 8, 3)]
    ]


_KEY = ["N", "L", "K", "BWD", "SUMMARY"]


# ---------------------------------------------------------------- K = 1: tiles over time
@triton.jit
def _affine_combine(a1, x1, a2, x2):
    # (a2, x2) after (a1, x1): h -> a2 (a1 h + x1) + x2
    return a1 * a2, a2 * x1 + x2


@triton.autotune(configs=_diag_configs(), key=_KEY)
@triton.jit
def _diag_chunk_kernel(
    A, X, S0, SIN, AS, XS, H, FIN, HF, H0, DA,
    T, N, L, K: tl.constexpr,
    REV: tl.constexpr, BWD: tl.constexpr, SUMMARY: tl.constexpr,
    HAS_S0: tl.constexpr, HAS_SIN: tl.constexpr, HAS_H0: tl.constexpr,
    BT: tl.constexpr, BN: tl.constexpr,
):
    """One (channel block, chunk, batch) program of the K = 1 scan, A and X [B, T, N].

    Scan position q (0..T-1) is time q, or T-1-q when REV. Forward: the state starts at SIN
    (chunk's incoming state) / S0 / 0, H = h, FIN = h_last. BWD: A is read one scan position
    earlier (identity at q = 0), X = g, S0 = ḡ, H = db, DA = λ·h_next with HF = forward h and
    H0 = forward h0, FIN = dh0. SUMMARY: writes the chunk's map (AS, XS) instead.
    """
    i_n, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    NC = tl.num_programs(1)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    o_r = tl.arange(0, BT)
    # row r of a tile is one time step later (earlier when REV) than row r - 1
    if REV:
        o_x = -o_r[:, None] * N + o_n[None, :]  # [BT, BN]
        D_PREV = N   # forward A of the previous scan position: one step later in time
    else:
        o_x = o_r[:, None] * N + o_n[None, :]  # [BT, BN]
        D_PREV = -N
    i_b64 = i_b.to(tl.int64)
    p_A = A + i_b64 * T * N
    p_X = X + i_b64 * T * N
    q_lo = i_c * L
    q_hi = tl.minimum(q_lo + L, T)

    if SUMMARY:
        b_s = tl.zeros([BN], dtype=tl.float32)  # [BN]
        b_p = tl.full([BN], 1.0, dtype=tl.float32)  # [BN] product of A over the chunk
    elif HAS_SIN:
        b_s = tl.load(SIN + (i_b64 * NC + i_c) * N + o_n, mask=m_n, other=0.0)  # [BN] float32
    elif HAS_S0:
        b_s = tl.load(S0 + i_b64 * N + o_n, mask=m_n, other=0.0).to(tl.float32)  # [BN]
    else:
        b_s = tl.zeros([BN], dtype=tl.float32)
    if BWD and not SUMMARY:
        p_H = H + i_b64 * T * N
        p_HF = HF + i_b64 * T * N
        p_DA = DA + i_b64 * T * N
        if HAS_H0:
            b_h0 = tl.load(H0 + i_b64 * N + o_n, mask=m_n, other=0.0).to(tl.float32)  # [BN]
    elif not SUMMARY:
        p_H = H + i_b64 * T * N

    # offset of the time of scan position q0 (the tile's first row), carried in int64
    if REV:
        o_t0 = (T - 1 - q_lo).to(tl.int64) * N
        D_TILE = -BT * N
    else:
        o_t0 = q_lo.to(tl.int64) * N
        D_TILE = BT * N
    for q0 in range(q_lo, q_hi, BT):
        o_q = q0 + o_r  # [BT] scan positions
        m = (o_q < q_hi)[:, None] & m_n[None, :]  # [BT, BN]
        if BWD:
            # A'_q = A at the previous scan position (transpose is a no-op for K = 1); I at q = 0
            b_a = tl.load(p_A + o_t0 + D_PREV + o_x, mask=m & (o_q > 0)[:, None], other=1.0).to(tl.float32)
        else:
            b_a = tl.load(p_A + o_t0 + o_x, mask=m, other=1.0).to(tl.float32)  # [BT, BN]
        b_x = tl.load(p_X + o_t0 + o_x, mask=m, other=0.0).to(tl.float32)  # [BT, BN]
        if BT > 1:
            b_a, b_x = tl.associative_scan((b_a, b_x), 0, _affine_combine)  # [BT, BN] each
        b_h = b_a * b_s[None, :] + b_x  # [BT, BN]; padded rows (a = 1, x = 0) carry the state
        # the last row is the state after the tile (device-function calls are slow when
        # interpreted, so the row extraction is written out)
        if BT == 1:
            b_s = tl.sum(b_h, axis=0)  # [BN]
        else:
            b_s = tl.sum(tl.where((o_r == BT - 1)[:, None], b_h, 0.0), axis=0)  # [BN]
        if SUMMARY:
            if BT == 1:
                b_p = tl.sum(b_a, axis=0) * b_p
            else:
                b_p = tl.sum(tl.where((o_r == BT - 1)[:, None], b_a, 0.0), axis=0) * b_p
        elif BWD:
            tl.store(p_H + o_t0 + o_x, b_h.to(H.dtype.element_ty), mask=m)  # db = λ
            # h at the next scan position (one step earlier in forward time); h0 past the end
            b_f = tl.load(p_HF + o_t0 - D_PREV + o_x, mask=m & (o_q + 1 < T)[:, None], other=0.0).to(tl.float32)
            if HAS_H0:
                b_f = tl.where((o_q == T - 1)[:, None], b_h0[None, :], b_f)
            tl.store(p_DA + o_t0 + o_x, (b_h * b_f).to(DA.dtype.element_ty), mask=m)
        else:
            tl.store(p_H + o_t0 + o_x, b_h.to(H.dtype.element_ty), mask=m)
        o_t0 += D_TILE

    if SUMMARY:
        o_s = (i_b64 * NC + i_c) * N + o_n
        tl.store(AS + o_s, b_p, mask=m_n)
        tl.store(XS + o_s, b_s, mask=m_n)
    elif q_hi == T:  # the chunk holding the last scan position writes the final output
        if BWD:
            if REV:
                t_last = 0
            else:
                t_last = T - 1
            b_a = tl.load(p_A + t_last * N + o_n, mask=m_n, other=0.0).to(tl.float32)  # [BN]
            tl.store(FIN + i_b64 * N + o_n, (b_a * b_s).to(FIN.dtype.element_ty), mask=m_n)  # dh0
        else:
            tl.store(FIN + i_b64 * N + o_n, b_s.to(FIN.dtype.element_ty), mask=m_n)  # h_last


# ---------------------------------------------------------------- K = 2..4: K×K blocks, step by step
@triton.autotune(configs=_block_configs(), key=_KEY)
@triton.jit
def _block_chunk_kernel(
    A, X, S0, SIN, AS, XS, H, FIN, HF, H0, DA,
    T, N, L, K: tl.constexpr,
    REV: tl.constexpr, BWD: tl.constexpr, SUMMARY: tl.constexpr,
    HAS_S0: tl.constexpr, HAS_SIN: tl.constexpr, HAS_H0: tl.constexpr,
    KP: tl.constexpr, BN: tl.constexpr,
):
    """One (channel block, chunk, batch) program of the K×K block scan; same contract as
    ``_diag_chunk_kernel`` with A [B, T, N, K, K] and X [B, T, N, K] (BWD reads Aᵀ)."""
    i_n, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    NC = tl.num_programs(1)
    o_n = i_n * BN + tl.arange(0, BN)
    o_i = tl.arange(0, KP)
    m_n = o_n < N
    m_i = o_i < K
    # A[n, i, j] at n·K² + i·K + j; the backward reads the transpose
    o_an = o_n[:, None, None] * K * K + o_i[None, :, None] * K + o_i[None, None, :]  # [BN, KP, KP]
    if BWD:
        o_a = o_n[:, None, None] * K * K + o_i[None, None, :] * K + o_i[None, :, None]
    else:
        o_a = o_an
    m_a = m_n[:, None, None] & m_i[None, :, None] & m_i[None, None, :]  # [BN, KP, KP]
    o_x = o_n[:, None] * K + o_i[None, :]  # [BN, KP]
    m_x = m_n[:, None] & m_i[None, :]
    b_eye = (o_i[:, None] == o_i[None, :]).to(tl.float32)  # [KP, KP]
    i_b64 = i_b.to(tl.int64)
    p_A = A + i_b64 * T * N * K * K
    p_X = X + i_b64 * T * N * K
    q_lo = i_c * L
    q_hi = tl.minimum(q_lo + L, T)
    if REV:
        D_PREV = 1
    else:
        D_PREV = -1

    if SUMMARY:
        b_s = tl.zeros([BN, KP], dtype=tl.float32)
        b_p = tl.zeros([BN, KP, KP], dtype=tl.float32) + b_eye[None, :, :]  # [BN, KP, KP]
    elif HAS_SIN:
        b_s = tl.load(SIN + (i_b64 * NC + i_c) * N * K + o_x, mask=m_x, other=0.0)  # [BN, KP]
    elif HAS_S0:
        b_s = tl.load(S0 + i_b64 * N * K + o_x, mask=m_x, other=0.0).to(tl.float32)
    else:
        b_s = tl.zeros([BN, KP], dtype=tl.float32)
    if BWD and not SUMMARY:
        p_H = H + i_b64 * T * N * K
        p_HF = HF + i_b64 * T * N * K
        p_DA = DA + i_b64 * T * N * K * K
        if HAS_H0:
            b_h0 = tl.load(H0 + i_b64 * N * K + o_x, mask=m_x, other=0.0).to(tl.float32)  # [BN, KP]
    elif not SUMMARY:
        p_H = H + i_b64 * T * N * K

    # time of scan position q, carried in int64
    if REV:
        t = (T - 1 - q_lo).to(tl.int64)
    else:
        t = q_lo.to(tl.int64)
    for q in range(q_lo, q_hi):
        o_q = q + tl.zeros([KP], dtype=tl.int32)  # [KP] the scan position, as a vector for masks
        if BWD:
            # A'_q = A_{prev}ᵀ, identity at q = 0
            m_q = (o_q > 0)[None, None, :]
            b_a = tl.load(p_A + (t + D_PREV) * N * K * K + o_a, mask=m_a & m_q, other=0.0).to(tl.float32)
            b_a = tl.where(m_q, b_a, b_eye[None, :, :])  # [BN, KP, KP]
        else:
            b_a = tl.load(p_A + t * N * K * K + o_a, mask=m_a, other=0.0).to(tl.float32)  # [BN, KP, KP]
        b_x = tl.load(p_X + t * N * K + o_x, mask=m_x, other=0.0).to(tl.float32)  # [BN, KP]
        b_s = tl.sum(b_a * b_s[:, None, :], axis=2) + b_x  # [BN, KP] = a · s + x
        if SUMMARY:
            b_p = tl.sum(b_a[:, :, :, None] * b_p[:, None, :, :], axis=2)  # [BN, KP, KP] = a · p
        elif BWD:
            tl.store(p_H + t * N * K + o_x, b_s.to(H.dtype.element_ty), mask=m_x)  # db = λ
            # h at the next scan position (one step earlier in forward time); h0 past the end
            m_f = (o_q + 1 < T)[None, :]
            b_f = tl.load(p_HF + (t - D_PREV) * N * K + o_x, mask=m_x & m_f, other=0.0).to(tl.float32)
            if HAS_H0:
                b_f = tl.where(m_f, b_f, b_h0)  # [BN, KP]
            b_da = b_s[:, :, None] * b_f[:, None, :]  # [BN, KP, KP]: λ_i h_j
            tl.store(p_DA + t * N * K * K + o_an, b_da.to(DA.dtype.element_ty), mask=m_a)
        else:
            tl.store(p_H + t * N * K + o_x, b_s.to(H.dtype.element_ty), mask=m_x)
        t -= D_PREV

    if SUMMARY:
        o_s = (i_b64 * NC + i_c) * N
        tl.store(AS + o_s * K * K + o_an, b_p, mask=m_a)
        tl.store(XS + o_s * K + o_x, b_s, mask=m_x)
    elif q_hi == T:
        if BWD:
            if REV:
                t_last = 0
            else:
                t_last = T - 1
            b_a = tl.load(p_A + t_last * N * K * K + o_a, mask=m_a, other=0.0).to(tl.float32)  # Aᵀ
            tl.store(FIN + i_b64 * N * K + o_x, tl.sum(b_a * b_s[:, None, :], axis=2).to(FIN.dtype.element_ty), mask=m_x)
        else:
            tl.store(FIN + i_b64 * N * K + o_x, b_s.to(FIN.dtype.element_ty), mask=m_x)


# ---------------------------------------------------------------- across chunks
@triton.jit
def _combine_kernel(AS, XS, S0, SIN, N, NC, K: tl.constexpr, HAS_S0: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr):
    """Walk the NC chunk maps (AS [B, NC, N, K, K], XS [B, NC, N, K], float32) in scan order and
    write each chunk's incoming state SIN [B, NC, N, K] (float32), starting from S0 or 0."""
    i_n, i_b = tl.program_id(0), tl.program_id(1)
    o_n = i_n * BN + tl.arange(0, BN)
    o_i = tl.arange(0, KP)
    m_n = o_n < N
    m_i = o_i < K
    o_a = o_n[:, None, None] * K * K + o_i[None, :, None] * K + o_i[None, None, :]  # [BN, KP, KP]
    m_a = m_n[:, None, None] & m_i[None, :, None] & m_i[None, None, :]
    o_x = o_n[:, None] * K + o_i[None, :]  # [BN, KP]
    m_x = m_n[:, None] & m_i[None, :]
    i_b64 = i_b.to(tl.int64)
    if HAS_S0:
        b_s = tl.load(S0 + i_b64 * N * K + o_x, mask=m_x, other=0.0).to(tl.float32)  # [BN, KP]
    else:
        b_s = tl.zeros([BN, KP], dtype=tl.float32)
    for c in range(NC):
        o_c = (i_b64 * NC + c) * N
        tl.store(SIN + o_c * K + o_x, b_s, mask=m_x)
        b_a = tl.load(AS + o_c * K * K + o_a, mask=m_a, other=0.0)  # [BN, KP, KP]
        b_x = tl.load(XS + o_c * K + o_x, mask=m_x, other=0.0)  # [BN, KP]
        b_s = tl.sum(b_a * b_s[:, None, :], axis=2) + b_x  # [BN, KP]


# ---------------------------------------------------------------- launchers
@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _chunk_length(B: int, T: int, N: int, K: int, device: torch.device) -> int:
    """Steps per chunk. One chunk (single pass, 3 memory passes) when B·N channel blocks alone
    give every SM work; otherwise enough chunks for ~2 programs per SM (5 memory passes)."""
    if _INTERPRET:
        return _INTERPRET_CHUNK
    n_sm = _num_sms(device.index if device.index is not None else torch.cuda.current_device())
    programs = B * triton.cdiv(N, 32)  # the smallest channel block the configs use
    if programs >= n_sm // 2:
        return T
    min_chunk = 512 if K == 1 else 128
    nc = min(triton.cdiv(2 * n_sm, programs), triton.cdiv(T, min_chunk))
    if nc <= 1:
        return T
    return triton.cdiv(triton.cdiv(T, nc), 128) * 128  # whole tiles of every BT in the configs


def _scan(A, X, S0, *, rev: bool, bwd: bool, H, FIN, HF=None, H0=None, DA=None, chunk=None, meta=None):
    """Run the chunked scan; writes H and FIN (and DA when bwd). ``chunk`` forces the chunk
    length and ``meta`` explicit meta-parameters (both for tests; ``meta`` bypasses autotuning)."""
    B, T, N, K = X.shape
    L = chunk if chunk is not None else _chunk_length(B, T, N, K, X.device)
    L = max(1, min(L, T))
    NC = triton.cdiv(T, L)
    kernel = _diag_chunk_kernel if K == 1 else _block_chunk_kernel
    extra = {} if K == 1 else {"KP": triton.next_power_of_2(K)}
    if meta is not None:
        extra.update(meta)
        launch = kernel.fn  # the plain jit function: no autotuning
        grid = lambda m: (triton.cdiv(N, meta["BN"]), NC, B)  # noqa: E731
    else:
        launch = kernel
        grid = lambda m: (triton.cdiv(N, m["BN"]), NC, B)  # noqa: E731
    dummy = X
    flags = dict(REV=rev, BWD=bwd, HAS_H0=H0 is not None)
    SIN = None
    if NC > 1:
        f32 = dict(dtype=torch.float32, device=X.device)
        AS = torch.empty(B, NC, N, K, K, **f32)
        XS = torch.empty(B, NC, N, K, **f32)
        launch[grid](
            A, X, dummy, dummy, AS, XS, dummy, dummy, dummy, dummy, dummy, T, N, L, K,
            SUMMARY=True, HAS_S0=False, HAS_SIN=False, **flags, **extra,
        )
        SIN = torch.empty(B, NC, N, K, **f32)
        KP = triton.next_power_of_2(K)
        BN = 64 if _INTERPRET else max(16, 256 // (KP * KP))
        _combine_kernel[(triton.cdiv(N, BN), B)](
            AS, XS, dummy if S0 is None else S0, SIN, N, NC, K, HAS_S0=S0 is not None, KP=KP, BN=BN,
        )
    launch[grid](
        A, X, dummy if S0 is None else S0, dummy if SIN is None else SIN, dummy, dummy, H, FIN,
        dummy if HF is None else HF, dummy if H0 is None else H0, dummy if DA is None else DA, T, N, L, K,
        SUMMARY=False, HAS_S0=S0 is not None, HAS_SIN=SIN is not None, **flags, **extra,
    )


def linear_recurrence_fwd(A, b, h0, reverse, *, chunk=None, meta=None):
    """Forward launcher: A [B, T, N, K, K], b [B, T, N, K], h0 [B, N, K] or None -> (h, h_last),
    in the dtype of b (float32 state). ``chunk`` / ``meta``: test knobs, see ``_scan``."""
    A, b = A.contiguous(), b.contiguous()
    h0 = None if h0 is None else h0.contiguous()
    B, T, N, K = b.shape
    h = torch.empty_like(b)
    h_last = torch.empty(B, N, K, dtype=b.dtype, device=b.device)
    _scan(A, b, h0, rev=reverse, bwd=False, H=h, FIN=h_last, chunk=chunk, meta=meta)
    return h, h_last


def linear_recurrence_bwd(A, h, h0, grad_h, grad_h_last, reverse, *, chunk=None, meta=None):
    """Backward launcher: (dA, db, dh0) of the recurrence for upstream grad_h [B, T, N, K] and
    grad_h_last [B, N, K]; dh0 [B, N, K] is always returned (it is A_firstᵀ λ_first)."""
    A, h, grad_h, grad_h_last = A.contiguous(), h.contiguous(), grad_h.contiguous(), grad_h_last.contiguous()
    h0 = None if h0 is None else h0.contiguous()
    B, T, N, K = h.shape
    dA = torch.empty_like(A)
    db = torch.empty_like(h)
    dh0 = torch.empty(B, N, K, dtype=h.dtype, device=h.device)
    _scan(A, grad_h, grad_h_last, rev=not reverse, bwd=True, H=db, FIN=dh0, HF=h, H0=h0, DA=dA,
          chunk=chunk, meta=meta)
    return dA, db, dh0
