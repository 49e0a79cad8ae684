"""Triton kernels of the ParaRNN family: fused Newton forward and fused implicit backward for the
built-in cells ParaGRU and ParaLSTM (docs/spec.md §1.1–1.3).

Launcher contract (the same for every backend):

    pararnn_fwd(cell, U, A, P, s0, max_iters, tol) -> (S_all, iters, residual)
    pararnn_bwd(cell, U, A, P, s0, S_all, dS, ds_last) -> (dU, dA, dP, ds0)

    cell      "gru" or "lstm"
    U         [B, T, 3, N]  projected pre-activations Wx + b (gate order GRU z, r, c; LSTM f, o, c̃),
                            float32 / bfloat16 / float16 (the I/O dtype), contiguous
    A         [3, N] float32 recurrent weights (GRU a_z, a_r, a_c; LSTM a_f, a_o, a_c)
    P         [2, N] float32 peepholes p_f, p_o (LSTM), or None (no peepholes; ignored by the GRU)
    s0        [B, S, N] initial state in the I/O dtype, or None (zeros); S = 1 (GRU h), 2 (LSTM c, h)
    S_all     [B, T, S, N] every state, I/O dtype
    iters     int64 0-dim tensor: Newton updates performed (see below)
    residual  float32 0-dim tensor: max_t |s_t − f(s_{t−1}, x_t)| of the float32 states the solver
              holds (S_all is those states rounded to the I/O dtype)
    dS, ds_last   [B, T, S, N] / [B, S, N] upstream gradients of S_all and of the final state
    dU [B, T, 3, N] I/O dtype, dA [3, N] float32, dP [2, N] float32 (None when P is None),
    ds0 [B, S, N] I/O dtype (the gradient of the initial state; returned also when s0 is None)

Every value is computed in float32 whatever the I/O dtype.

Forward: Newton's method on the chunk-boundary states (multiple shooting). The built-in cells are
channel-independent given U (the GRU Jacobian is diagonal, the LSTM one is a 2×2 block per
channel), so a program owns BN channels of one batch row and one time chunk of length L; there
are C = ⌈T / L⌉ chunks. With x_c the state entering chunk c (x_0 = s0, exact) and Φ_c the exact
map of chunk c, the system is x_{c+1} = Φ_c(x_c). One Newton iteration is

    sweep     every chunk runs its exact nonlinear recurrence from x_c, writing S_all, and carries
              the tangent M_c = ∂Φ_c/∂x_c (the product of the per-step Jacobians: a scalar per
              channel for the GRU, a 2×2 matrix for the LSTM);
    boundary  per channel, sequentially over chunks: the residual at each chunk start,
              |f(x_c, u_{t_c}) − f(Φ_{c−1}(x_{c−1}), u_{t_c})| (inside a chunk the residual is 0:
              the recurrence is run exactly), then the Newton update of the linearised system
              x_c ← Φ_{c−1}(x_{c−1}) + M_{c−1} (x_{c−1}^new − x_{c−1}^old).

The initial guess is the paper's, x_c = f(0, u_{t_c − 1}). After k updates the first k + 1 chunks
are exact (bit for bit), so sweep k skips chunks c < k and the boundary pass starts at c = k + 1;
the solve is exact after C − 1 updates, so at most min(max_iters, C − 1) updates run. Convergence
is decided on the device, without a host sync: every launch reads the previous residual and does
nothing once it is ≤ tol (or NaN), so the launch sequence is fixed and graph-capturable.
``iters`` is the number of Newton updates behind S_all (0 when the first sweep already met tol,
e.g. a single chunk, which is the exact sequential recurrence).

Backward (docs/spec.md §1.2): λ_t = g_t + J_{t+1}ᵀ λ_{t+1} with g_T += ds_last is linear, so it is a
chunked reverse scan: (A) each chunk runs its reverse recurrence from a zero carry, giving the
affine map carry_out = Q_c carry_in + q_c; (carry) a sequential pass over chunks per channel
gives every chunk's incoming carry; (B) each chunk reruns the reverse recurrence with its true
carry and fuses the per-step VJPs: dU_t, and per-program partial sums of dA, dP over its steps.
The partials ([B, C, 3, N]) are summed by one deterministic reduction (no atomics). With one
chunk (B·N fills the device) passes A and carry are skipped.
Jacobians in the backward are evaluated at S_all, i.e. at the stored (I/O dtype) states.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

CELLS = {"gru": (False, 1), "lstm": (True, 2)}  # name -> (is_lstm, state size S)


# ---------------------------------------------------------------------------------- cell math
@triton.jit
def _tanh(x):
    # tl has no tanh outside libdevice (not interpretable); tanh(x) = 2σ(2x) − 1
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _gru_step_jac(h, uz, ur, uc, az, ar, ac):
    """h = f(h₋) and J = ∂h/∂h₋ (docs/spec.md §1.3, ParaGRU)."""
    z = tl.sigmoid(az * h + uz)
    r = tl.sigmoid(ar * h + ur)
    c = _tanh(ac * (h * r) + uc)
    hn = z * c + (1.0 - z) * h
    j = (1.0 - z) + (c - h) * (z * (1.0 - z)) * az + z * (1.0 - c * c) * ac * (r + h * (r * (1.0 - r)) * ar)
    return hn, j


@triton.jit
def _lstm_step_jac(cp, hp, uf, uo, uc, af, ao, ac, pf, po):
    """(c, h) = f(c₋, h₋) and the 2×2 Jacobian ∂(c, h)/∂(c₋, h₋) (docs/spec.md §1.3, ParaLSTM)."""
    f = tl.sigmoid(af * hp + pf * cp + uf)
    ct = _tanh(ac * hp + uc)
    c = f * cp + (1.0 - f) * ct
    o = tl.sigmoid(ao * hp + po * c + uo)
    tc = _tanh(c)
    h = o * tc
    df = f * (1.0 - f)
    do = o * (1.0 - o)
    j00 = f + (cp - ct) * df * pf
    j01 = (cp - ct) * df * af + (1.0 - f) * (1.0 - ct * ct) * ac
    kappa = o * (1.0 - tc * tc) + tc * do * po
    j10 = kappa * j00
    j11 = tc * do * ao + kappa * j01
    return c, h, j00, j01, j10, j11


@triton.jit
def _gru_vjp(h, uz, ur, uc, az, ar, ac, lam):
    """λᵀ ∂h/∂(u, a, h₋) at (h₋ = h, u): (du_z, du_r, du_c, da_z, da_r, da_c, ds₋)."""
    z = tl.sigmoid(az * h + uz)
    r = tl.sigmoid(ar * h + ur)
    c = _tanh(ac * (h * r) + uc)
    dz = lam * (c - h) * (z * (1.0 - z))
    dc = lam * z * (1.0 - c * c)
    dr = dc * ac * h * (r * (1.0 - r))
    dsp = lam * (1.0 - z) + dz * az + dr * ar + dc * ac * r
    return dz, dr, dc, dz * h, dr * h, dc * (h * r), dsp


@triton.jit
def _lstm_vjp(cp, hp, uf, uo, uc, af, ao, ac, pf, po, lc, lh):
    """λᵀ ∂(c, h)/∂(u, a, p, c₋, h₋): (du_f, du_o, du_c, da_f, da_o, da_c, dp_f, dp_o, dc₋, dh₋)."""
    f = tl.sigmoid(af * hp + pf * cp + uf)
    ct = _tanh(ac * hp + uc)
    c = f * cp + (1.0 - f) * ct
    o = tl.sigmoid(ao * hp + po * c + uo)
    tc = _tanh(c)
    d_o = lh * tc * (o * (1.0 - o))
    d_c = lc + lh * o * (1.0 - tc * tc) + d_o * po
    d_f = d_c * (cp - ct) * (f * (1.0 - f))
    d_ct = d_c * (1.0 - f) * (1.0 - ct * ct)
    dcp = d_c * f + d_f * pf
    dhp = d_f * af + d_o * ao + d_ct * ac
    return d_f, d_o, d_ct, d_f * hp, d_o * hp, d_ct * hp, d_f * cp, d_o * c, dcp, dhp


@triton.jit
def _load_params(A, P, o_n, m_n, N, HAS_P: tl.constexpr, BN: tl.constexpr):
    """Recurrent weights a_0..a_2 [3, N] and peepholes p_0, p_1 [2, N] (zeros without) of channels o_n."""
    b_a0 = tl.load(A + o_n, mask=m_n, other=0.0)
    b_a1 = tl.load(A + N + o_n, mask=m_n, other=0.0)
    b_a2 = tl.load(A + 2 * N + o_n, mask=m_n, other=0.0)
    if HAS_P:
        b_p0 = tl.load(P + o_n, mask=m_n, other=0.0)
        b_p1 = tl.load(P + N + o_n, mask=m_n, other=0.0)
    else:
        b_p0 = tl.zeros([BN], dtype=tl.float32)
        b_p1 = tl.zeros([BN], dtype=tl.float32)
    return b_a0, b_a1, b_a2, b_p0, b_p1


@triton.jit
def _load_u(U, row, N, o_n, mask):
    """The three gate pre-activations U[b, t, :, o_n] of flat step row = b·T + t, in float32."""
    p_u = U + (row * 3) * N + o_n
    b_u0 = tl.load(p_u, mask=mask, other=0.0).to(tl.float32)
    b_u1 = tl.load(p_u + N, mask=mask, other=0.0).to(tl.float32)
    b_u2 = tl.load(p_u + 2 * N, mask=mask, other=0.0).to(tl.float32)
    return b_u0, b_u1, b_u2


@triton.jit
def _running(RES, it, tol):
    """1 while the residual of iteration it − 1 (it >= 1) is > tol; 0 once it is <= tol or NaN."""
    r = tl.load(RES + it - 1).to(tl.float32, bitcast=True)
    return (r > tol).to(tl.int32)


# ---------------------------------------------------------------------------------- forward
@triton.jit(do_not_specialize=["it"])  # one compiled kernel for every iteration index
def pararnn_fwd_sweep_kernel(
    U,
    A,
    P,
    S0,
    S,
    X,
    PHI,
    MT,
    RES,
    it,
    tol,
    T,
    N,
    L,
    IS_LSTM: tl.constexpr,
    HAS_P: tl.constexpr,
    HAS_S0: tl.constexpr,
    FIRST: tl.constexpr,
    BN: tl.constexpr,
):
    """Newton sweep: chunk i_c of batch row i_b, channels i_n·BN…, runs exactly from x_c."""
    i_n, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    C = tl.num_programs(1)
    SS: tl.constexpr = 2 if IS_LSTM else 1
    i_b = i_b.to(tl.int64)
    o_n = i_n * BN + tl.arange(0, BN)  # [BN]
    m_n = o_n < N
    run = (i_c >= it).to(tl.int32)
    if not FIRST:  # later sweeps: only while not converged
        run = run * _running(RES, it, tol)
    if run != 0:
        b_a0, b_a1, b_a2, b_p0, b_p1 = _load_params(A, P, o_n, m_n, N, HAS_P, BN)  # [BN] each
        t0 = i_c * L
        t1 = tl.minimum(t0 + L, T)
        p_x = X + ((i_b * C + i_c) * SS) * N + o_n
        # incoming state x_c
        if FIRST:
            # x_0 = s0 (or 0); x_c = f(0, u_{t_c − 1}) for c ≥ 1 (the paper's initial guess)
            tg = tl.maximum(t0 - 1, 0)
            b_g0, b_g1, b_g2 = _load_u(U, i_b * T + tg, N, o_n, m_n)
            b_zero = tl.zeros([BN], dtype=tl.float32)
            if HAS_S0:
                b_i0 = tl.load(S0 + (i_b * SS) * N + o_n, mask=m_n, other=0.0).to(tl.float32)
                if IS_LSTM:
                    b_i1 = tl.load(S0 + (i_b * SS + 1) * N + o_n, mask=m_n, other=0.0).to(tl.float32)
                else:
                    b_i1 = b_zero
            else:
                b_i0 = b_zero
                b_i1 = b_zero
            if IS_LSTM:
                b_g0, b_g1, _, _, _, _ = _lstm_step_jac(b_zero, b_zero, b_g0, b_g1, b_g2, b_a0, b_a1, b_a2, b_p0, b_p1)
            else:
                b_g0, _ = _gru_step_jac(b_zero, b_g0, b_g1, b_g2, b_a0, b_a1, b_a2)
                b_g1 = b_zero
            b_x0 = tl.where(i_c == 0, b_i0, b_g0)
            b_x1 = tl.where(i_c == 0, b_i1, b_g1)
            tl.store(p_x, b_x0, mask=m_n)
            if IS_LSTM:
                tl.store(p_x + N, b_x1, mask=m_n)
        else:
            b_x0 = tl.load(p_x, mask=m_n, other=0.0)
            if IS_LSTM:
                b_x1 = tl.load(p_x + N, mask=m_n, other=0.0)
            else:
                b_x1 = tl.zeros([BN], dtype=tl.float32)
        # tangent M = ∂(state)/∂x_c: scalar m00 (GRU) or 2×2 (LSTM)
        b_m00 = tl.full([BN], 1.0, dtype=tl.float32)
        b_m01 = tl.zeros([BN], dtype=tl.float32)
        b_m10 = tl.zeros([BN], dtype=tl.float32)
        b_m11 = tl.full([BN], 1.0, dtype=tl.float32)
        # loads of step t + 1 are issued before step t is computed (one step of lookahead)
        b_u0, b_u1, b_u2 = _load_u(U, i_b * T + t0, N, o_n, m_n)
        for t in range(t0, t1):
            m_next = o_n < tl.where(t + 1 < t1, N, 0)  # (m_n and t + 1 < t1)
            b_v0, b_v1, b_v2 = _load_u(U, i_b * T + t + 1, N, o_n, m_next)
            p_s = S + ((i_b * T + t) * SS) * N + o_n
            if IS_LSTM:
                b_x0, b_x1, j00, j01, j10, j11 = _lstm_step_jac(
                    b_x0, b_x1, b_u0, b_u1, b_u2, b_a0, b_a1, b_a2, b_p0, b_p1
                )
                n00 = j00 * b_m00 + j01 * b_m10
                n01 = j00 * b_m01 + j01 * b_m11
                n10 = j10 * b_m00 + j11 * b_m10
                n11 = j10 * b_m01 + j11 * b_m11
                b_m00, b_m01, b_m10, b_m11 = n00, n01, n10, n11
                tl.store(p_s, b_x0.to(S.dtype.element_ty), mask=m_n)
                tl.store(p_s + N, b_x1.to(S.dtype.element_ty), mask=m_n)
            else:
                b_x0, j00 = _gru_step_jac(b_x0, b_u0, b_u1, b_u2, b_a0, b_a1, b_a2)
                b_m00 = j00 * b_m00
                tl.store(p_s, b_x0.to(S.dtype.element_ty), mask=m_n)
            b_u0, b_u1, b_u2 = b_v0, b_v1, b_v2
        p_phi = PHI + ((i_b * C + i_c) * SS) * N + o_n
        p_mt = MT + ((i_b * C + i_c) * SS * SS) * N + o_n
        tl.store(p_phi, b_x0, mask=m_n)
        tl.store(p_mt, b_m00, mask=m_n)
        if IS_LSTM:
            tl.store(p_phi + N, b_x1, mask=m_n)
            tl.store(p_mt + N, b_m01, mask=m_n)
            tl.store(p_mt + 2 * N, b_m10, mask=m_n)
            tl.store(p_mt + 3 * N, b_m11, mask=m_n)


@triton.jit(do_not_specialize=["it"])
def pararnn_fwd_boundary_kernel(
    U,
    A,
    P,
    X,
    PHI,
    MT,
    RES,
    it,
    tol,
    T,
    N,
    L,
    C,
    IS_LSTM: tl.constexpr,
    HAS_P: tl.constexpr,
    CHECK: tl.constexpr,
    BN: tl.constexpr,
):
    """Residual at the chunk starts and the Newton update of the incoming states, chunk by chunk."""
    i_n, i_b = tl.program_id(0), tl.program_id(1)
    SS: tl.constexpr = 2 if IS_LSTM else 1
    i_b = i_b.to(tl.int64)
    o_n = i_n * BN + tl.arange(0, BN)  # [BN]
    m_n = o_n < N
    run = tl.full([], 1, dtype=tl.int32)
    if CHECK:  # it >= 1: only while not converged
        run = _running(RES, it, tol)
    if run != 0:
        b_a0, b_a1, b_a2, b_p0, b_p1 = _load_params(A, P, o_n, m_n, N, HAS_P, BN)  # [BN] each
        b_r = tl.zeros([BN], dtype=tl.float32)  # max |residual| so far
        b_nan = tl.zeros([BN], dtype=tl.int32)  # a NaN residual was seen
        # Newton step of the previous incoming state; x_it is exact and stays, so it starts at 0
        b_d0 = tl.zeros([BN], dtype=tl.float32)
        b_d1 = tl.zeros([BN], dtype=tl.float32)
        for c in range(it + 1, C):
            p_x = X + ((i_b * C + c) * SS) * N + o_n
            p_phi = PHI + ((i_b * C + c - 1) * SS) * N + o_n
            p_mt = MT + ((i_b * C + c - 1) * SS * SS) * N + o_n
            b_u0, b_u1, b_u2 = _load_u(U, i_b * T + c * L, N, o_n, m_n)
            b_x0 = tl.load(p_x, mask=m_n, other=0.0)
            b_f0 = tl.load(p_phi, mask=m_n, other=0.0)
            b_m00 = tl.load(p_mt, mask=m_n, other=0.0)
            if IS_LSTM:
                b_x1 = tl.load(p_x + N, mask=m_n, other=0.0)
                b_f1 = tl.load(p_phi + N, mask=m_n, other=0.0)
                b_m01 = tl.load(p_mt + N, mask=m_n, other=0.0)
                b_m10 = tl.load(p_mt + 2 * N, mask=m_n, other=0.0)
                b_m11 = tl.load(p_mt + 3 * N, mask=m_n, other=0.0)
                y0, y1, _, _, _, _ = _lstm_step_jac(b_x0, b_x1, b_u0, b_u1, b_u2, b_a0, b_a1, b_a2, b_p0, b_p1)
                w0, w1, _, _, _, _ = _lstm_step_jac(b_f0, b_f1, b_u0, b_u1, b_u2, b_a0, b_a1, b_a2, b_p0, b_p1)
                e0 = tl.abs(y0 - w0)
                e1 = tl.abs(y1 - w1)
                b_r = tl.maximum(b_r, tl.maximum(e0, e1))
                b_nan = b_nan | ((e0 != e0) | (e1 != e1)).to(tl.int32)
                n0 = b_f0 + b_m00 * b_d0 + b_m01 * b_d1
                n1 = b_f1 + b_m10 * b_d0 + b_m11 * b_d1
                b_d0 = n0 - b_x0
                b_d1 = n1 - b_x1
                tl.store(p_x, n0, mask=m_n)
                tl.store(p_x + N, n1, mask=m_n)
            else:
                y0, _ = _gru_step_jac(b_x0, b_u0, b_u1, b_u2, b_a0, b_a1, b_a2)
                w0, _ = _gru_step_jac(b_f0, b_u0, b_u1, b_u2, b_a0, b_a1, b_a2)
                e0 = tl.abs(y0 - w0)
                b_r = tl.maximum(b_r, e0)
                b_nan = b_nan | (e0 != e0).to(tl.int32)
                n0 = b_f0 + b_m00 * b_d0
                b_d0 = n0 - b_x0
                tl.store(p_x, n0, mask=m_n)
        # residuals are >= 0, so their float32 bits order like the values; NaN (0x7FC00000) is the
        # largest, so a NaN anywhere wins the max
        r = tl.max(tl.where(m_n, b_r, 0.0), axis=0)
        bits = tl.where(tl.max(b_nan, axis=0) > 0, 0x7FC00000, r.to(tl.int32, bitcast=True))
        tl.atomic_max(RES + it, bits)


# ---------------------------------------------------------------------------------- backward
@triton.jit
def pararnn_bwd_chunk_kernel(
    U,
    A,
    P,
    S0,
    S,
    DS,
    MU,
    DU,
    QQ,
    PA,
    PP,
    DS0,
    T,
    N,
    L,
    IS_LSTM: tl.constexpr,
    HAS_P: tl.constexpr,
    HAS_S0: tl.constexpr,
    FINAL: tl.constexpr,
    BN: tl.constexpr,
):
    """Reverse recurrence of one chunk. FINAL=False: from a zero carry, accumulating the transposed
    tangent; stores (Q_c, q_c). FINAL=True: from the true carry MU[c], with the fused VJPs."""
    i_n, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    C = tl.num_programs(1)
    SS: tl.constexpr = 2 if IS_LSTM else 1
    i_b = i_b.to(tl.int64)
    o_n = i_n * BN + tl.arange(0, BN)  # [BN]
    m_n = o_n < N
    b_a0, b_a1, b_a2, b_p0, b_p1 = _load_params(A, P, o_n, m_n, N, HAS_P, BN)  # [BN] each
    t0 = i_c * L
    t1 = tl.minimum(t0 + L, T)
    # carry into the chunk's last step (λ_{t1−1} = g_{t1−1} + carry)
    if FINAL:
        p_mu = MU + ((i_b * C + i_c) * SS) * N + o_n
        b_k0 = tl.load(p_mu, mask=m_n, other=0.0).to(tl.float32)
        if IS_LSTM:
            b_k1 = tl.load(p_mu + N, mask=m_n, other=0.0).to(tl.float32)
        else:
            b_k1 = tl.zeros([BN], dtype=tl.float32)
    else:
        b_k0 = tl.zeros([BN], dtype=tl.float32)
        b_k1 = tl.zeros([BN], dtype=tl.float32)
    # transposed tangent G = ∂carry/∂(incoming carry) (pass A only)
    b_g00 = tl.full([BN], 1.0, dtype=tl.float32)
    b_g01 = tl.zeros([BN], dtype=tl.float32)
    b_g10 = tl.zeros([BN], dtype=tl.float32)
    b_g11 = tl.full([BN], 1.0, dtype=tl.float32)
    # parameter-gradient partial sums over this chunk's steps
    b_da0 = tl.zeros([BN], dtype=tl.float32)
    b_da1 = tl.zeros([BN], dtype=tl.float32)
    b_da2 = tl.zeros([BN], dtype=tl.float32)
    b_dp0 = tl.zeros([BN], dtype=tl.float32)
    b_dp1 = tl.zeros([BN], dtype=tl.float32)
    for i in range(0, t1 - t0):
        t = t1 - 1 - i
        b_u0, b_u1, b_u2 = _load_u(U, i_b * T + t, N, o_n, m_n)
        # previous state s_{t−1}: S_all[t − 1], or s0 (zeros) at t = 0
        p_sp = S + ((i_b * T + t - 1) * SS) * N + o_n
        m_sp = o_n < tl.where(t > 0, N, 0)
        b_s0 = tl.load(p_sp, mask=m_sp, other=0.0).to(tl.float32)
        if IS_LSTM:
            b_s1 = tl.load(p_sp + N, mask=m_sp, other=0.0).to(tl.float32)
        else:
            b_s1 = tl.zeros([BN], dtype=tl.float32)
        if HAS_S0:
            m_i = o_n < tl.where(t == 0, N, 0)
            b_s0 += tl.load(S0 + (i_b * SS) * N + o_n, mask=m_i, other=0.0).to(tl.float32)
            if IS_LSTM:
                b_s1 += tl.load(S0 + (i_b * SS + 1) * N + o_n, mask=m_i, other=0.0).to(tl.float32)
        p_g = DS + ((i_b * T + t) * SS) * N + o_n
        b_l0 = b_k0 + tl.load(p_g, mask=m_n, other=0.0).to(tl.float32)  # λ_t
        if IS_LSTM:
            b_l1 = b_k1 + tl.load(p_g + N, mask=m_n, other=0.0).to(tl.float32)
        if FINAL:
            p_du = DU + ((i_b * T + t) * 3) * N + o_n
            if IS_LSTM:
                du0, du1, du2, da0, da1, da2, dp0, dp1, b_k0, b_k1 = _lstm_vjp(
                    b_s0, b_s1, b_u0, b_u1, b_u2, b_a0, b_a1, b_a2, b_p0, b_p1, b_l0, b_l1
                )
                b_dp0 += dp0
                b_dp1 += dp1
            else:
                du0, du1, du2, da0, da1, da2, b_k0 = _gru_vjp(b_s0, b_u0, b_u1, b_u2, b_a0, b_a1, b_a2, b_l0)
            b_da0 += da0
            b_da1 += da1
            b_da2 += da2
            tl.store(p_du, du0.to(DU.dtype.element_ty), mask=m_n)
            tl.store(p_du + N, du1.to(DU.dtype.element_ty), mask=m_n)
            tl.store(p_du + 2 * N, du2.to(DU.dtype.element_ty), mask=m_n)
        else:
            if IS_LSTM:
                _, _, j00, j01, j10, j11 = _lstm_step_jac(b_s0, b_s1, b_u0, b_u1, b_u2, b_a0, b_a1, b_a2, b_p0, b_p1)
                b_k0 = j00 * b_l0 + j10 * b_l1  # Jᵀ λ
                b_k1 = j01 * b_l0 + j11 * b_l1
                n00 = j00 * b_g00 + j10 * b_g10  # Jᵀ G
                n01 = j00 * b_g01 + j10 * b_g11
                n10 = j01 * b_g00 + j11 * b_g10
                n11 = j01 * b_g01 + j11 * b_g11
                b_g00, b_g01, b_g10, b_g11 = n00, n01, n10, n11
            else:
                _, j00 = _gru_step_jac(b_s0, b_u0, b_u1, b_u2, b_a0, b_a1, b_a2)
                b_k0 = j00 * b_l0
                b_g00 = j00 * b_g00
    if FINAL:
        p_pa = PA + ((i_b * C + i_c) * 3) * N + o_n
        tl.store(p_pa, b_da0, mask=m_n)
        tl.store(p_pa + N, b_da1, mask=m_n)
        tl.store(p_pa + 2 * N, b_da2, mask=m_n)
        if HAS_P:
            p_pp = PP + ((i_b * C + i_c) * 2) * N + o_n
            tl.store(p_pp, b_dp0, mask=m_n)
            tl.store(p_pp + N, b_dp1, mask=m_n)
        if i_c == 0:  # the carry out of the first step is ∂L/∂s0 = J_1ᵀ λ_1
            tl.store(DS0 + (i_b * SS) * N + o_n, b_k0.to(DS0.dtype.element_ty), mask=m_n)
            if IS_LSTM:
                tl.store(DS0 + (i_b * SS + 1) * N + o_n, b_k1.to(DS0.dtype.element_ty), mask=m_n)
    else:
        # q_c (carry out from a zero carry in) and Q_c
        p_q = QQ + ((i_b * C + i_c) * (SS + SS * SS)) * N + o_n
        tl.store(p_q, b_k0, mask=m_n)
        if IS_LSTM:
            tl.store(p_q + N, b_k1, mask=m_n)
            tl.store(p_q + 2 * N, b_g00, mask=m_n)
            tl.store(p_q + 3 * N, b_g01, mask=m_n)
            tl.store(p_q + 4 * N, b_g10, mask=m_n)
            tl.store(p_q + 5 * N, b_g11, mask=m_n)
        else:
            tl.store(p_q + N, b_g00, mask=m_n)


@triton.jit
def pararnn_bwd_carry_kernel(QQ, DSL, MU, N, C, IS_LSTM: tl.constexpr, BN: tl.constexpr):
    """Incoming carry of every chunk, from the last chunk (carry ds_last) back to the first."""
    i_n, i_b = tl.program_id(0), tl.program_id(1)
    SS: tl.constexpr = 2 if IS_LSTM else 1
    i_b = i_b.to(tl.int64)
    o_n = i_n * BN + tl.arange(0, BN)  # [BN]
    m_n = o_n < N
    b_k0 = tl.load(DSL + (i_b * SS) * N + o_n, mask=m_n, other=0.0).to(tl.float32)
    if IS_LSTM:
        b_k1 = tl.load(DSL + (i_b * SS + 1) * N + o_n, mask=m_n, other=0.0).to(tl.float32)
    for i in range(0, C):
        c = C - 1 - i
        p_mu = MU + ((i_b * C + c) * SS) * N + o_n
        tl.store(p_mu, b_k0, mask=m_n)
        if IS_LSTM:
            tl.store(p_mu + N, b_k1, mask=m_n)
        if c > 0:
            p_q = QQ + ((i_b * C + c) * (SS + SS * SS)) * N + o_n
            b_q0 = tl.load(p_q, mask=m_n, other=0.0)
            if IS_LSTM:
                b_q1 = tl.load(p_q + N, mask=m_n, other=0.0)
                g00 = tl.load(p_q + 2 * N, mask=m_n, other=0.0)
                g01 = tl.load(p_q + 3 * N, mask=m_n, other=0.0)
                g10 = tl.load(p_q + 4 * N, mask=m_n, other=0.0)
                g11 = tl.load(p_q + 5 * N, mask=m_n, other=0.0)
                n0 = g00 * b_k0 + g01 * b_k1 + b_q0
                n1 = g10 * b_k0 + g11 * b_k1 + b_q1
                b_k0, b_k1 = n0, n1
            else:
                g00 = tl.load(p_q + N, mask=m_n, other=0.0)
                b_k0 = g00 * b_k0 + b_q0


# ---------------------------------------------------------------------------------- launchers
def _cell(cell: str):
    if cell not in CELLS:
        raise ValueError(f"nlseq.kernels.pararnn: cell must be one of {tuple(CELLS)}, got {cell!r}")
    return CELLS[cell]


@functools.lru_cache(maxsize=None)
def _target_threads(device_index: int) -> int:
    """Channels × chunks wanted in flight: about one resident thread per SM slot."""
    sms = torch.cuda.get_device_properties(device_index).multi_processor_count
    return sms * 1024


def _chunk_len(B: int, N: int, T: int, device: torch.device) -> int:
    """Chunk length L: one chunk per sequence when B·N alone fills the device, else enough chunks
    to fill it, none shorter than 64 steps (shorter chunks contract less and need more updates)."""
    if device.type != "cuda":
        return max(T, 1)  # the interpreter runs programs one at a time: parallelism buys nothing
    want = _target_threads(device.index if device.index is not None else torch.cuda.current_device())
    chunks = max(1, min(-(-want // max(B * N, 1)), T // 64))
    return -(-T // chunks)


def _block_n(N: int) -> tuple[int, int]:
    BN = min(128, triton.next_power_of_2(max(N, 1)))
    return BN, max(1, BN // 32)


def pararnn_fwd(cell, U, A, P, s0, max_iters, tol):
    """Fused Newton forward (see the module docstring for the contract and the algorithm)."""
    return _pararnn_fwd(cell, U, A, P, s0, max_iters, tol)


def pararnn_bwd(cell, U, A, P, s0, S_all, dS, ds_last):
    """Fused implicit backward (see the module docstring for the contract and the algorithm)."""
    return _pararnn_bwd(cell, U, A, P, s0, S_all, dS, ds_last)


def _pararnn_fwd(cell, U, A, P, s0, max_iters, tol, chunk_len=None):
    is_lstm, SS = _cell(cell)
    B, T, G, N = U.shape
    dev = U.device
    U = U.contiguous()
    A = A.to(torch.float32).contiguous()
    has_p = is_lstm and P is not None
    P = P.to(torch.float32).contiguous() if has_p else A
    has_s0 = s0 is not None
    s0 = s0.to(U.dtype).contiguous() if has_s0 else U
    S_all = torch.empty(B, T, SS, N, dtype=U.dtype, device=dev)
    iters = torch.zeros((), dtype=torch.int64, device=dev)
    residual = torch.zeros((), dtype=torch.float32, device=dev)
    if B == 0 or T == 0 or N == 0:
        return S_all, iters, residual
    L = int(chunk_len) if chunk_len is not None else _chunk_len(B, N, T, dev)
    L = max(1, min(L, T))
    C = -(-T // L)
    K = max(0, min(int(max_iters), C - 1))
    X = torch.empty(B, C, SS, N, dtype=torch.float32, device=dev)
    PHI = torch.empty(B, C, SS, N, dtype=torch.float32, device=dev)
    MT = torch.empty(B, C, SS * SS, N, dtype=torch.float32, device=dev)
    RES = torch.zeros(K + 1, dtype=torch.int32, device=dev)  # float32 bits of each residual
    BN, warps = _block_n(N)
    for k in range(K + 1):
        pararnn_fwd_sweep_kernel[(triton.cdiv(N, BN), C, B)](
            U,
            A,
            P,
            s0,
            S_all,
            X,
            PHI,
            MT,
            RES,
            k,
            float(tol),
            T,
            N,
            L,
            IS_LSTM=is_lstm,
            HAS_P=has_p,
            HAS_S0=has_s0,
            FIRST=(k == 0),
            BN=BN,
            num_warps=warps,
        )
        if C > 1:
            pararnn_fwd_boundary_kernel[(triton.cdiv(N, BN), B)](
                U,
                A,
                P,
                X,
                PHI,
                MT,
                RES,
                k,
                float(tol),
                T,
                N,
                L,
                C,
                IS_LSTM=is_lstm,
                HAS_P=has_p,
                CHECK=(k > 0),
                BN=BN,
                num_warps=warps,
            )
    # first iteration whose residual stopped the solve (skipped ones read 0), else the last
    R = RES.view(torch.float32)
    stop = (R <= tol) | torch.isnan(R)
    first = torch.clamp((~stop).to(torch.int64).cumprod(0).sum(), max=K)
    iters.copy_(first)
    residual.copy_(R[first])
    return S_all, iters, residual


def _pararnn_bwd(cell, U, A, P, s0, S_all, dS, ds_last, chunk_len=None):
    is_lstm, SS = _cell(cell)
    B, T, G, N = U.shape
    dev = U.device
    U, S_all, dS = U.contiguous(), S_all.contiguous(), dS.contiguous()
    A = A.to(torch.float32).contiguous()
    has_p = is_lstm and P is not None
    P = P.to(torch.float32).contiguous() if has_p else A
    has_s0 = s0 is not None
    s0 = s0.to(U.dtype).contiguous() if has_s0 else U
    dU = torch.empty_like(U)
    ds0 = torch.empty(B, SS, N, dtype=U.dtype, device=dev)
    if B == 0 or T == 0 or N == 0:
        dA = torch.zeros(3, N, dtype=torch.float32, device=dev)
        dP = torch.zeros(2, N, dtype=torch.float32, device=dev) if has_p else None
        ds0.copy_(ds_last)
        return dU, dA, dP, ds0
    L = int(chunk_len) if chunk_len is not None else _chunk_len(B, N, T, dev)
    L = max(1, min(L, T))
    C = -(-T // L)
    BN, warps = _block_n(N)
    grid = (triton.cdiv(N, BN), C, B)
    dsl = ds_last.to(torch.float32).contiguous()
    if C == 1:
        MU = dsl
        QQ = dsl  # unused
    else:
        QQ = torch.empty(B, C, SS + SS * SS, N, dtype=torch.float32, device=dev)
        MU = torch.empty(B, C, SS, N, dtype=torch.float32, device=dev)
        pararnn_bwd_chunk_kernel[grid](
            U,
            A,
            P,
            s0,
            S_all,
            dS,
            MU,
            dU,
            QQ,
            QQ,
            QQ,
            ds0,
            T,
            N,
            L,
            IS_LSTM=is_lstm,
            HAS_P=has_p,
            HAS_S0=has_s0,
            FINAL=False,
            BN=BN,
            num_warps=warps,
        )
        pararnn_bwd_carry_kernel[(triton.cdiv(N, BN), B)](QQ, dsl, MU, N, C, IS_LSTM=is_lstm, BN=BN, num_warps=warps)
    PA = torch.empty(B, C, 3, N, dtype=torch.float32, device=dev)
    PP = torch.empty(B, C, 2, N, dtype=torch.float32, device=dev) if has_p else PA
    pararnn_bwd_chunk_kernel[grid](
        U,
        A,
        P,
        s0,
        S_all,
        dS,
        MU,
        dU,
        QQ,
        PA,
        PP,
        ds0,
        T,
        N,
        L,
        IS_LSTM=is_lstm,
        HAS_P=has_p,
        HAS_S0=has_s0,
        FINAL=True,
        BN=BN,
        num_warps=warps,
    )
    dA = PA.sum(dim=(0, 1))
    dP = PP.sum(dim=(0, 1)) if has_p else None
    return dU, dA, dP, ds0


__all__ = ["pararnn_fwd", "pararnn_bwd"]
