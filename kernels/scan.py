"""Triton kernels of ``nlseq.linear_recurrence`` (docs/spec.md §1.1–1.2): h_t = A_t h_{t-1} + b_t.

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

Two kernels, one per block size:
    K = 1 (diagonal, the fast path): [BT, BN] tiles, channels contiguous (coalesced), a
        ``tl.associative_scan`` along time inside each tile with a float32 carry between tiles,
        and the next tile's loads issued before the current one is scanned. Many independent
        loads in flight per SM is what makes the scan bandwidth-bound.
    K = 2..4: [BT, BN, KP, KP] tiles of K×K blocks (KP = K padded to a power of two, masked);
        on the GPU BT = 1, one time step per iteration (each step reads BN·K² contiguous
        elements), matrix-vector and matrix-matrix products as broadcast-and-sum over the K axes.
Under the interpreter both scan whole tiles with DOT_SCAN (see the configs below).

The backward (docs/spec.md §1.2) is the same machinery run the other way (flag BWD): in its scan order
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
from triton.language.standard import _sum_combine

from nlseq.registry import triton_interpret

from ._autotune import tuned

_INTERPRET = triton_interpret()

# Chunk length under the interpreter: T = 1000 gives 4 chunks, T <= 256 runs single-pass, so the
# parity suite exercises both paths.
_INTERPRET_CHUNK = 256


# ---------------------------------------------------------------- autotune configs
# Meta-parameters: BT time rows and BN channels per tile; DOT_SCAN selects how a tile is scanned
# along time (below). GPU configs use tl.associative_scan (K = 1) or one step per iteration
# (K > 1, BT = 1). The interpreter runs associative_scan element by element in Python and pays
# milliseconds per Triton op, so its single config scans whole tiles with DOT_SCAN instead; the
# GPU configs' paths are run under the interpreter, on small shapes, in tests/test_scan_triton.py.
# GPU config lists (module-level so that tests can read them under the interpreter too).
# 8 tile elements per thread: with the prefetched tile that is ~96-130 registers in the forward and
# ~170-180 in the backward, no spills (AOT-compiled for sm_90 with triton 3.9), so 3-5 programs per
# SM, each with two tiles of A and b in flight.
_DIAG_GPU = [(16, 64, 4), (8, 128, 4), (32, 64, 8), (16, 128, 8), (16, 32, 2), (8, 64, 2)]  # (BT, BN, warps)
_BLOCK_GPU = [
    (16, 2, 3),
    (32, 2, 3),
    (32, 4, 4),
    (64, 4, 3),
    (64, 4, 4),
    (128, 4, 3),
    (128, 8, 3),
]  # (BN, warps, stages)


def _diag_configs():
    if _INTERPRET:
        return [triton.Config({"BT": 64, "BN": 64, "DOT_SCAN": True}, num_warps=1, num_stages=1)]
    return tuned(
        [triton.Config({"BT": BT, "BN": BN, "DOT_SCAN": False}, num_warps=w, num_stages=2) for BT, BN, w in _DIAG_GPU]
    )


def _block_configs():
    if _INTERPRET:
        return [triton.Config({"BT": 32, "BN": 16, "DOT_SCAN": True}, num_warps=1, num_stages=1)]
    return tuned(
        [triton.Config({"BT": 1, "BN": BN, "DOT_SCAN": False}, num_warps=w, num_stages=s) for BN, w, s in _BLOCK_GPU]
    )


# ---------------------------------------------------------------- occupancy rule
# A scan program is a chain of dependent loads; the GPU hides their latency only with many
# programs in flight. The launcher wants at least _PROGRAMS_PER_SM programs per SM (one "wave"
# = _PROGRAMS_PER_SM · SMs programs): a single pass (NC = 1) only when B·⌈N/BN⌉ reaches one wave,
# else enough time chunks to reach it. The SM count is the device's on a GPU; under the
# interpreter and for reasoning about AOT-compiled code it is _DEFAULT_SMS (an H100 SXM / H200).
_PROGRAMS_PER_SM = 4
_DEFAULT_SMS = 132


def _wave_efficiency(programs: int, wave: int) -> float:
    """Fraction of the launched waves' program slots that hold a program (1.0: whole waves)."""
    return programs / (triton.cdiv(programs, wave) * wave)


def _prune_configs(configs, named_args, **kwargs):
    """``early_config_prune`` of both chunk kernels: block widths sized to whole waves.

    Programs = B·⌈N/BN⌉·NC for each config's BN. Configs that fill at least one wave are kept
    when their wave efficiency is within 0.1 of the best one's (a short last wave idles most SMs
    for a whole program's time); when no config fills a wave, the ones with the most programs
    (the narrowest blocks) are kept.
    """
    X, N, T, L = named_args["X"], named_args["N"], named_args["T"], named_args["L"]
    programs = {c: X.shape[0] * triton.cdiv(N, c.kwargs["BN"]) * triton.cdiv(T, L) for c in configs}
    wave = _PROGRAMS_PER_SM * _sm_count(X.device)
    full = [c for c in configs if programs[c] >= wave]
    if not full:
        most = max(programs.values())
        return [c for c in configs if programs[c] == most]
    best = max(_wave_efficiency(programs[c], wave) for c in full)
    return [c for c in full if _wave_efficiency(programs[c], wave) >= best - 0.1]


def _bucket(x: int) -> int:
    """⌈log2 x⌉ (0 for x <= 1): the autotune key's size bucket."""
    return max(int(x) - 1, 0).bit_length()


# Tuned per channel count, block size, mode and dtype (the autotuner appends the pointer dtypes),
# and per power-of-two bucket of B·N (LOG2_BXN) and of T (LOG2_T): the best block width and the
# chunking depend on how many programs a call launches, so a config tuned at one size is not
# reused at a size with a different wave count. Buckets, not exact sizes: sequence lengths vary
# call to call and each new key costs one tuning run.
_KEY = ["N", "K", "BWD", "SUMMARY", "LOG2_BXN", "LOG2_T"]
_PRUNE = {"early_config_prune": _prune_configs}

# Sums are written tl.reduce(x, axis, _sum_combine): that is tl.sum without the device-function
# call, which the interpreter re-patches on every call (milliseconds each); on the GPU both
# compile to the same reduction. For the same reason the loops call no @triton.jit helper per
# step (only ``_cast_out``, once per tile).
#
# DOT_SCAN: an inclusive scan of a tile along time by log2(BT) Hillis–Steele steps, where the
# shift by d rows is a product with the 0/1 matrix S_d[i, j] = (j == i − d) in IEEE fp32 (exact:
# one nonzero term per row). Rows i < d combine with the identity.


# The interpreter casts float32 to bfloat16 by truncation (the GPU rounds to nearest even), so
# under the interpreter outputs are rounded to nearest even by hand before the cast.
_ROUND_BF16 = tl.constexpr(_INTERPRET)


@triton.jit
def _cast_out(x, P):
    """x (float32) in the element type of the pointer P, rounded to nearest even."""
    if _ROUND_BF16 and P.dtype.element_ty == tl.bfloat16:
        u = x.to(tl.uint32, bitcast=True)
        u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
        x = u.to(tl.float32, bitcast=True)
    return x.to(P.dtype.element_ty)


# ---------------------------------------------------------------- K = 1: tiles over time
@triton.jit
def _affine_combine(a1, x1, a2, x2):
    # (a2, x2) after (a1, x1): h -> a2 (a1 h + x1) + x2
    return a1 * a2, a2 * x1 + x2


@triton.autotune(configs=_diag_configs(), key=_KEY, prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=["LOG2_BXN", "LOG2_T"])  # key-only arguments: no recompiles
def _diag_chunk_kernel(
    A,
    X,
    S0,
    SIN,
    AS,
    XS,
    H,
    FIN,
    HF,
    H0,
    DA,
    T,
    N,
    L,
    LOG2_BXN,
    LOG2_T,
    K: tl.constexpr,
    REV: tl.constexpr,
    BWD: tl.constexpr,
    SUMMARY: tl.constexpr,
    HAS_S0: tl.constexpr,
    HAS_SIN: tl.constexpr,
    HAS_H0: tl.constexpr,
    BT: tl.constexpr,
    BN: tl.constexpr,
    DOT_SCAN: tl.constexpr,
):
    """One (channel block, chunk, batch) program of the K = 1 scan, A and X [B, T, N].

    Scan position q (0..T-1) is time q, or T-1-q when REV. Forward: the state starts at SIN
    (chunk's incoming state) / S0 / 0, H = h, FIN = h_last. BWD: A is read one scan position
    earlier (identity at q = 0), X = g, S0 = ḡ, H = db, DA = λ·h_next with HF = forward h and
    H0 = forward h0, FIN = dh0. SUMMARY: writes the chunk's map (AS, XS) instead. LOG2_BXN and
    LOG2_T are read by the autotuner only (its key).
    """
    i_n, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    NC = tl.num_programs(1)
    o_n = i_n * BN + tl.arange(0, BN)
    m_n = o_n < N
    o_r = tl.arange(0, BT)
    i_b64 = i_b.to(tl.int64)
    q_lo = i_c * L
    q_hi = tl.minimum(q_lo + L, T)
    # row r of a tile is scan position q0 + r: one time step later (earlier when REV) per row
    if REV:
        o_x = -o_r[:, None] * N + o_n[None, :]  # [BT, BN]
        o_bt = i_b64 * T * N + (T - 1 - q_lo).to(tl.int64) * N
        D_PREV = N  # from a scan position to the previous one, in elements
    else:
        o_x = o_r[:, None] * N + o_n[None, :]  # [BT, BN]
        o_bt = i_b64 * T * N + q_lo.to(tl.int64) * N
        D_PREV = -N
    D_TILE = -D_PREV * BT
    # o_bt (int64, the tile's first row) is the only offset carried across iterations: pointer
    # tiles would hold a 64-bit address per element for each of the five streams
    if BWD:
        D_A = D_PREV  # A'_q = A at the previous scan position (Aᵀ = A for K = 1)
    else:
        D_A = 0

    if SUMMARY:
        b_s = tl.zeros([BN], dtype=tl.float32)  # [BN]
        b_p = tl.full([BN], 1.0, dtype=tl.float32)  # [BN] product of A over the chunk
    elif HAS_SIN:
        b_s = tl.load(SIN + (i_b64 * NC + i_c) * N + o_n, mask=m_n, other=0.0)  # [BN] float32
    elif HAS_S0:
        b_s = tl.load(S0 + i_b64 * N + o_n, mask=m_n, other=0.0).to(tl.float32)  # [BN]
    else:
        b_s = tl.zeros([BN], dtype=tl.float32)
    if BWD and HAS_H0 and not SUMMARY:
        b_h0 = tl.load(H0 + i_b64 * N + o_n, mask=m_n, other=0.0).to(tl.float32)  # [BN]

    # Software prefetch: the loads of tile i + 1 are issued before tile i is scanned, so each
    # program keeps two tiles of A and b in flight (Triton does not pipeline these loads itself).
    o_q = q_lo + o_r  # [BT] scan positions of the first tile
    m = (o_q < q_hi)[:, None] & m_n[None, :]  # [BT, BN]
    if BWD:
        m_a = m & (o_q > 0)[:, None]
    else:
        m_a = m
    b_an = tl.load(A + o_bt + D_A + o_x, mask=m_a, other=1.0)  # [BT, BN]; padding is identity
    b_xn = tl.load(X + o_bt + o_x, mask=m, other=0.0)  # [BT, BN]
    for q0 in range(q_lo, q_hi, BT):
        o_q = q0 + o_r  # [BT] scan positions
        m = (o_q < q_hi)[:, None] & m_n[None, :]  # [BT, BN]
        b_a = b_an.to(tl.float32)
        b_x = b_xn.to(tl.float32)
        m_nx = (o_q + BT < q_hi)[:, None] & m_n[None, :]  # the next tile (its positions are > 0)
        b_an = tl.load(A + o_bt + D_TILE + D_A + o_x, mask=m_nx, other=1.0)
        b_xn = tl.load(X + o_bt + D_TILE + o_x, mask=m_nx, other=0.0)
        if BWD and not SUMMARY:
            # h at the next scan position (one step earlier in forward time), for dA; h0 past the end
            b_f = tl.load(HF + o_bt - D_PREV + o_x, mask=m & (o_q + 1 < T)[:, None], other=0.0).to(tl.float32)
            if HAS_H0:
                b_f = tl.where((o_q == T - 1)[:, None], b_h0[None, :], b_f)  # [BT, BN]
        if BT > 1:
            if DOT_SCAN:
                for i_d in tl.static_range(16):
                    if (1 << i_d) < BT:
                        b_S = (o_r[None, :] == o_r[:, None] - (1 << i_d)).to(tl.float32)  # [BT, BT]
                        b_ap = tl.dot(b_S, b_a, input_precision="ieee")  # [BT, BN] a one shift up
                        b_ap = tl.where((o_r < (1 << i_d))[:, None], 1.0, b_ap)
                        b_xp = tl.dot(b_S, b_x, input_precision="ieee")  # [BT, BN]
                        b_x = b_a * b_xp + b_x
                        b_a = b_a * b_ap
            else:
                b_a, b_x = tl.associative_scan((b_a, b_x), 0, _affine_combine)  # [BT, BN] each
        b_h = b_a * b_s[None, :] + b_x  # [BT, BN]; padded rows (a = 1, x = 0) carry the state
        # the last row is the state after the tile
        if BT == 1:
            b_s = tl.reshape(b_h, [BN])  # [BN]
        else:
            b_s = tl.reduce(tl.where((o_r == BT - 1)[:, None], b_h, 0.0), 0, _sum_combine)  # [BN]
        if SUMMARY:
            if BT == 1:
                b_p = tl.reshape(b_a, [BN]) * b_p
            else:
                b_p = tl.reduce(tl.where((o_r == BT - 1)[:, None], b_a, 0.0), 0, _sum_combine) * b_p
        else:
            tl.store(H + o_bt + o_x, _cast_out(b_h, H), mask=m)  # h, or db = λ
            if BWD:
                tl.store(DA + o_bt + o_x, _cast_out(b_h * b_f, DA), mask=m)  # dA = λ · h_next
        o_bt += D_TILE

    if SUMMARY:
        o_s = (i_b64 * NC + i_c) * N + o_n
        tl.store(AS + o_s, b_p, mask=m_n)
        tl.store(XS + o_s, b_s, mask=m_n)
    elif q_hi == T:  # the chunk holding the last scan position writes the final output
        if BWD:
            if REV:
                o_last = i_b64 * T * N
            else:
                o_last = i_b64 * T * N + (T - 1) * N
            b_a = tl.load(A + o_last + o_n, mask=m_n, other=0.0).to(tl.float32)  # [BN]
            tl.store(FIN + i_b64 * N + o_n, _cast_out(b_a * b_s, FIN), mask=m_n)  # dh0
        else:
            tl.store(FIN + i_b64 * N + o_n, _cast_out(b_s, FIN), mask=m_n)  # h_last


# ---------------------------------------------------------------- K = 2..4: K×K blocks
@triton.autotune(configs=_block_configs(), key=_KEY, prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=["LOG2_BXN", "LOG2_T"])  # key-only arguments: no recompiles
def _block_chunk_kernel(
    A,
    X,
    S0,
    SIN,
    AS,
    XS,
    H,
    FIN,
    HF,
    H0,
    DA,
    T,
    N,
    L,
    LOG2_BXN,
    LOG2_T,
    K: tl.constexpr,
    REV: tl.constexpr,
    BWD: tl.constexpr,
    SUMMARY: tl.constexpr,
    HAS_S0: tl.constexpr,
    HAS_SIN: tl.constexpr,
    HAS_H0: tl.constexpr,
    KP: tl.constexpr,
    BT: tl.constexpr,
    BN: tl.constexpr,
    DOT_SCAN: tl.constexpr,
):
    """One (channel block, chunk, batch) program of the K×K block scan; same contract as
    ``_diag_chunk_kernel`` with A [B, T, N, K, K] and X [B, T, N, K] (BWD reads Aᵀ).

    Tiles are [BT, BN, KP, KP] for A and [BT, BN, KP] for states, KP = K padded to a power of
    two (padding masked: zero A entries and states). On the GPU BT = 1: one step per iteration,
    each reading BN·K² contiguous elements; BT > 1 needs DOT_SCAN (the interpreter's config).
    """
    i_n, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    NC = tl.num_programs(1)
    KK: tl.constexpr = K * K
    o_r = tl.arange(0, BT)
    o_n = i_n * BN + tl.arange(0, BN)
    o_i = tl.arange(0, KP)
    m_n = o_n < N
    m_i = o_i < K
    i_b64 = i_b.to(tl.int64)
    q_lo = i_c * L
    q_hi = tl.minimum(q_lo + L, T)
    if REV:
        o_rt = -o_r  # [BT] time offset of each row from the tile's first row
        o_t = (T - 1 - q_lo).to(tl.int64)
        D_PREV = 1
    else:
        o_rt = o_r
        o_t = q_lo.to(tl.int64)
        D_PREV = -1
    # A[t, n, i, j] at (t·N + n)·K² + i·K + j; the backward reads the transpose
    o_a4 = (o_rt[:, None, None, None] * N + o_n[None, :, None, None]) * KK  # [BT, BN, 1, 1]
    o_an = o_a4 + o_i[None, None, :, None] * K + o_i[None, None, None, :]  # [BT, BN, KP, KP]
    if BWD:
        o_a = o_a4 + o_i[None, None, None, :] * K + o_i[None, None, :, None]
    else:
        o_a = o_an
    m_a = m_n[:, None, None] & m_i[None, :, None] & m_i[None, None, :]  # [BN, KP, KP]
    o_x = (o_rt[:, None, None] * N + o_n[None, :, None]) * K + o_i[None, None, :]  # [BT, BN, KP]
    m_x = m_n[:, None] & m_i[None, :]  # [BN, KP]
    o_s = o_n[:, None] * K + o_i[None, :]  # [BN, KP] offsets of one state
    b_eye = (o_i[:, None] == o_i[None, :]).to(tl.float32)  # [KP, KP]

    p_x = X + (i_b64 * T + o_t) * N * K + o_x
    if BWD:
        p_a = A + (i_b64 * T + o_t + D_PREV) * N * KK + o_a  # A'_q = Aᵀ at the previous scan position
    else:
        p_a = A + (i_b64 * T + o_t) * N * KK + o_a
    if not SUMMARY:
        p_h = H + (i_b64 * T + o_t) * N * K + o_x
        if BWD:
            p_f = HF + (i_b64 * T + o_t - D_PREV) * N * K + o_x  # forward h at the next scan position
            p_da = DA + (i_b64 * T + o_t) * N * KK + o_an
    D_TILE_A = -D_PREV * BT * N * KK
    D_TILE_X = -D_PREV * BT * N * K

    if SUMMARY:
        b_s = tl.zeros([BN, KP], dtype=tl.float32)  # [BN, KP]
        b_p = tl.zeros([BN, KP, KP], dtype=tl.float32) + b_eye[None, :, :]  # [BN, KP, KP]
    elif HAS_SIN:
        b_s = tl.load(SIN + (i_b64 * NC + i_c) * N * K + o_s, mask=m_x, other=0.0)  # [BN, KP]
    elif HAS_S0:
        b_s = tl.load(S0 + i_b64 * N * K + o_s, mask=m_x, other=0.0).to(tl.float32)
    else:
        b_s = tl.zeros([BN, KP], dtype=tl.float32)
    if BWD and HAS_H0 and not SUMMARY:
        b_h0 = tl.load(H0 + i_b64 * N * K + o_s, mask=m_x, other=0.0).to(tl.float32)  # [BN, KP]

    # software prefetch, as in the K = 1 kernel: the next step's (tile's) loads go out first
    o_q = q_lo + o_r  # [BT] scan positions of the first tile
    m_q = o_q < q_hi
    if BWD:
        m_qa = m_q & (o_q > 0)
    else:
        m_qa = m_q
    b_an = tl.load(p_a, mask=m_qa[:, None, None, None] & m_a[None, :, :, :], other=0.0)
    b_xn = tl.load(p_x, mask=m_q[:, None, None] & m_x[None, :, :], other=0.0)
    for q0 in range(q_lo, q_hi, BT):
        o_q = q0 + o_r  # [BT] scan positions
        m_q = o_q < q_hi
        if BWD:
            m_qa = m_q & (o_q > 0)
        else:
            m_qa = m_q
        m = m_q[:, None, None] & m_x[None, :, :]  # [BT, BN, KP]
        b_a = tl.where(m_qa[:, None, None, None], b_an.to(tl.float32), b_eye[None, None, :, :])  # [BT, BN, KP, KP]
        b_x = b_xn.to(tl.float32)  # [BT, BN, KP]
        m_nx = o_q + BT < q_hi  # [BT] the next tile (its positions are > 0)
        b_an = tl.load(p_a + D_TILE_A, mask=m_nx[:, None, None, None] & m_a[None, :, :, :], other=0.0)
        b_xn = tl.load(p_x + D_TILE_X, mask=m_nx[:, None, None] & m_x[None, :, :], other=0.0)
        if BT > 1:
            if DOT_SCAN:
                for i_d in tl.static_range(16):
                    if (1 << i_d) < BT:
                        b_S = (o_r[None, :] == o_r[:, None] - (1 << i_d)).to(tl.float32)  # [BT, BT]
                        b_ap = tl.dot(b_S, tl.reshape(b_a, [BT, BN * KP * KP]), input_precision="ieee")
                        b_ap = tl.reshape(b_ap, [BT, BN, KP, KP])  # a one shift up
                        b_ap = tl.where((o_r < (1 << i_d))[:, None, None, None], b_eye[None, None, :, :], b_ap)
                        b_xp = tl.dot(b_S, tl.reshape(b_x, [BT, BN * KP]), input_precision="ieee")
                        b_xp = tl.reshape(b_xp, [BT, BN, KP])
                        b_x = tl.reduce(b_a * b_xp[:, :, None, :], 3, _sum_combine) + b_x
                        b_a = tl.reduce(b_a[:, :, :, :, None] * b_ap[:, :, None, :, :], 3, _sum_combine)
            else:
                tl.static_assert(False, "the block kernel scans tiles with BT > 1 only with DOT_SCAN")
        b_h = tl.reduce(b_a * b_s[None, :, None, :], 3, _sum_combine) + b_x  # [BT, BN, KP] = a · s + x
        if BT == 1:
            b_s = tl.reshape(b_h, [BN, KP])
        else:
            b_s = tl.reduce(tl.where((o_r == BT - 1)[:, None, None], b_h, 0.0), 0, _sum_combine)  # [BN, KP]
        if SUMMARY:
            if BT == 1:
                b_al = tl.reshape(b_a, [BN, KP, KP])
            else:
                b_al = tl.reduce(tl.where((o_r == BT - 1)[:, None, None, None], b_a, 0.0), 0, _sum_combine)
            b_p = tl.reduce(b_al[:, :, :, None] * b_p[:, None, :, :], 2, _sum_combine)  # [BN, KP, KP] = a · p
        else:
            tl.store(p_h, _cast_out(b_h, H), mask=m)  # h, or db = λ
            if BWD:
                # dA = λ h_nextᵀ, h_next = forward h one step earlier in forward time; h0 past the end
                m_f = (o_q + 1 < T)[:, None, None]
                b_f = tl.load(p_f, mask=m & m_f, other=0.0).to(tl.float32)  # [BT, BN, KP]
                if HAS_H0:
                    b_f = tl.where(m_f, b_f, b_h0[None, :, :])
                b_da = b_h[:, :, :, None] * b_f[:, :, None, :]  # [BT, BN, KP, KP]: λ_i h_j
                tl.store(p_da, _cast_out(b_da, DA), mask=m_q[:, None, None, None] & m_a[None, :, :, :])
                p_f += D_TILE_X
                p_da += D_TILE_A
            p_h += D_TILE_X
        p_a += D_TILE_A
        p_x += D_TILE_X

    if SUMMARY:
        o_c = (i_b64 * NC + i_c) * N
        o_s2 = o_n[:, None, None] * KK + o_i[None, :, None] * K + o_i[None, None, :]  # [BN, KP, KP]
        tl.store(AS + o_c * KK + o_s2, b_p, mask=m_a)
        tl.store(XS + o_c * K + o_s, b_s, mask=m_x)
    elif q_hi == T:
        if BWD:
            if REV:
                o_last = i_b64 * T * N * KK
            else:
                o_last = (i_b64 * T + T - 1) * N * KK
            # Aᵀ of the last scan position: the row-0 offsets of o_a
            o_at = o_n[:, None, None] * KK + o_i[None, None, :] * K + o_i[None, :, None]  # [BN, KP, KP]
            b_a = tl.load(A + o_last + o_at, mask=m_a, other=0.0).to(tl.float32)
            b_d = tl.reduce(b_a * b_s[:, None, :], 2, _sum_combine)  # [BN, KP] dh0 = Aᵀ λ
            tl.store(FIN + i_b64 * N * K + o_s, _cast_out(b_d, FIN), mask=m_x)
        else:
            tl.store(FIN + i_b64 * N * K + o_s, _cast_out(b_s, FIN), mask=m_x)


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
        b_s = tl.reduce(b_a * b_s[:, None, :], 2, _sum_combine) + b_x  # [BN, KP]


# ---------------------------------------------------------------- launchers
@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sm_count(device: torch.device) -> int:
    """SMs of ``device`` on a GPU; _DEFAULT_SMS under the interpreter (or off a CUDA device)."""
    if _INTERPRET or device.type != "cuda":
        return _DEFAULT_SMS
    return _num_sms(device.index if device.index is not None else torch.cuda.current_device())


def _min_block_n(K: int) -> int:
    """The narrowest channel block of the GPU configs (the most programs a call can launch)."""
    return min(BN for _, BN, _ in _DIAG_GPU) if K == 1 else min(BN for BN, _, _ in _BLOCK_GPU)


def _chunk_length(B: int, T: int, N: int, K: int, device: torch.device) -> int:
    """Steps per chunk. One chunk (single pass, 3 memory passes) when the B·⌈N/BN⌉ channel blocks
    alone reach one wave (_PROGRAMS_PER_SM programs per SM); otherwise NC chunks (5 memory passes)
    for at least one wave, NC chosen among [nc_min, 2·nc_min] for the most whole waves, no chunk
    shorter than min_chunk steps, lengths in whole tiles of every BT of the configs."""
    if _INTERPRET:
        return _INTERPRET_CHUNK
    wave = _PROGRAMS_PER_SM * _sm_count(device)
    programs = B * triton.cdiv(N, _min_block_n(K))
    if programs >= wave:
        return T
    min_chunk = 512 if K == 1 else 128
    nc_max = triton.cdiv(T, min_chunk)
    nc_min = min(triton.cdiv(wave, programs), nc_max)
    if nc_min <= 1:
        return T
    best = None
    for c in range(nc_min, min(2 * nc_min, nc_max) + 1):
        L = triton.cdiv(triton.cdiv(T, c), 128) * 128  # whole tiles of every BT in the configs
        nc = triton.cdiv(T, L)  # rounding L up can merge chunks: judge the chunks actually launched
        score = (programs * nc >= wave, _wave_efficiency(programs * nc, wave), -nc)
        if best is None or score > best[0]:
            best = (score, L)
    return best[1]


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
    buckets = (_bucket(B * N), _bucket(T))  # LOG2_BXN, LOG2_T: autotune key only
    flags = dict(REV=rev, BWD=bwd, HAS_H0=H0 is not None)
    SIN = None
    if NC > 1:
        f32 = dict(dtype=torch.float32, device=X.device)
        AS = torch.empty(B, NC, N, K, K, **f32)
        XS = torch.empty(B, NC, N, K, **f32)
        launch[grid](
            A,
            X,
            dummy,
            dummy,
            AS,
            XS,
            dummy,
            dummy,
            dummy,
            dummy,
            dummy,
            T,
            N,
            L,
            *buckets,
            K,
            SUMMARY=True,
            HAS_S0=False,
            HAS_SIN=False,
            **flags,
            **extra,
        )
        SIN = torch.empty(B, NC, N, K, **f32)
        KP = triton.next_power_of_2(K)
        BN = 64 if _INTERPRET else max(16, 256 // (KP * KP))
        _combine_kernel[(triton.cdiv(N, BN), B)](
            AS,
            XS,
            dummy if S0 is None else S0,
            SIN,
            N,
            NC,
            K,
            HAS_S0=S0 is not None,
            KP=KP,
            BN=BN,
        )
    launch[grid](
        A,
        X,
        dummy if S0 is None else S0,
        dummy if SIN is None else SIN,
        dummy,
        dummy,
        H,
        FIN,
        dummy if HF is None else HF,
        dummy if H0 is None else H0,
        dummy if DA is None else DA,
        T,
        N,
        L,
        *buckets,
        K,
        SUMMARY=False,
        HAS_S0=S0 is not None,
        HAS_SIN=SIN is not None,
        **flags,
        **extra,
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
    _scan(A, grad_h, grad_h_last, rev=not reverse, bwd=True, H=db, FIN=dh0, HF=h, H0=h0, DA=dA, chunk=chunk, meta=meta)
    return dA, db, dh0
