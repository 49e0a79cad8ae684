// Cell math of the built-in ParaRNN cells (docs/spec.md §1.3), shared by the CPU and CUDA kernels.
//
// Everything here is per channel: the built-in cells are diagonal in the channel index, so one
// channel n of one batch row evolves independently of the others once the input projection
// U = Wx + b is known. For channel n a cell sees
//   u[3]  the projected pre-activations of its three gates at step t (U[b, t, :, n]),
//   a[3]  the recurrent weights A[:, n],
//   p[2]  the peepholes P[:, n] (LSTM only; the GRU ignores them),
//   s[S]  its state before the step (GRU: S = 1, s = {h}; LSTM: S = 2, s = {c, h}).
// Gate orders follow docs/spec.md §1.3: GRU (z, r, c), LSTM (f, o, c̃), peepholes (p_f, p_o).
//
// Each cell offers, for one step:
//   step(u, a, p, s_prev, s)            s = f(s_prev, x)
//   step_jac(u, a, p, s_prev, s, J)     s and J = ∂s/∂s_prev (S×S per channel)
//   vjp(u, a, p, s_prev, lam, du, da, dp, ds_prev)
//       for λ = ∂L/∂s: du = λᵀ ∂s/∂u, da = λᵀ ∂s/∂a, dp = λᵀ ∂s/∂p (zeros for the GRU),
//       ds_prev = λᵀ ∂s/∂s_prev = Jᵀ λ (the term that carries λ back in time, docs/spec.md §1.2).
// M is the elementary-function policy (StdMath by default).
// T is the accumulation type (float, or double for float64 tensors); callers convert storage
// types (half, bfloat16) to it before calling.
#pragma once
#include <cmath>

#include "nlseq/common.h"

// Cell functions are small and sit in the innermost loop of every kernel: force inlining on the
// host too (GCC stops inlining in large translation units, which would keep the CPU channel
// loops from vectorising). On the device NLSEQ_HD already forces it.
#if defined(__CUDACC__) || !defined(__GNUC__)
#define NLSEQ_CELL_FN NLSEQ_HD
#else
#define NLSEQ_CELL_FN inline __attribute__((always_inline))
#endif

namespace nlseq {
namespace pararnn {

NLSEQ_HD float exp_(float x) { return ::expf(x); }
NLSEQ_HD double exp_(double x) { return ::exp(x); }
NLSEQ_HD float tanh_(float x) { return ::tanhf(x); }
NLSEQ_HD double tanh_(double x) { return ::tanh(x); }

// The elementary functions a cell uses. The cells take the policy as a template parameter so
// that a kernel can substitute its own (the CPU kernel uses a branch-free exp that vectorises);
// StdMath is the default: the C library (CUDA's device math on the GPU).
struct StdMath {
  template <typename T>
  NLSEQ_HD static T exp(T x) { return exp_(x); }
  template <typename T>
  NLSEQ_HD static T tanh(T x) { return tanh_(x); }
};

// 1 / (1 + e^{-x}): exp overflows to inf for very negative x, giving the correct limit 0.
template <typename M, typename T>
NLSEQ_CELL_FN T sigmoid_(T x) {
  return T(1) / (T(1) + M::exp(-x));
}

// The built-in cells, shared by every backend and binding.
enum class CellKind : int { kGru = 0, kLstm = 1 };

// State size per channel: 1 for the GRU (h), 2 for the LSTM (c, h).
NLSEQ_HD constexpr int state_size(CellKind cell) { return cell == CellKind::kGru ? 1 : 2; }

// ParaGRU (docs/spec.md §1.3):
//   z = σ(a_z h₋ + u_z),  r = σ(a_r h₋ + u_r),  c = tanh(a_c (h₋ r) + u_c),  h = z c + (1 − z) h₋
template <typename T, typename M = StdMath>
struct Gru {
  static constexpr int S = 1;     // state size per channel
  static constexpr int G = 3;     // gates
  static constexpr int NP = 0;    // peephole rows used

  NLSEQ_CELL_FN static void step(const T (&u)[3], const T (&a)[3], const T (&p)[2], const T (&sp)[1], T (&s)[1]) {
    (void)p;
    const T h = sp[0];
    const T z = sigmoid_<M>(a[0] * h + u[0]);
    const T r = sigmoid_<M>(a[1] * h + u[1]);
    const T c = M::tanh(a[2] * (h * r) + u[2]);
    s[0] = z * c + (T(1) - z) * h;
  }

  // ∂h/∂h₋ = (1 − z) + (c − h₋) σ'(ẑ) a_z + z tanh'(ĉ) a_c (r + h₋ σ'(r̂) a_r)
  NLSEQ_CELL_FN static void step_jac(const T (&u)[3], const T (&a)[3], const T (&p)[2], const T (&sp)[1], T (&s)[1],
                                T (&J)[1][1]) {
    (void)p;
    const T h = sp[0];
    const T z = sigmoid_<M>(a[0] * h + u[0]);
    const T r = sigmoid_<M>(a[1] * h + u[1]);
    const T c = M::tanh(a[2] * (h * r) + u[2]);
    s[0] = z * c + (T(1) - z) * h;
    J[0][0] = (T(1) - z) + (c - h) * (z * (T(1) - z)) * a[0] +
              z * (T(1) - c * c) * a[2] * (r + h * (r * (T(1) - r)) * a[1]);
  }

  NLSEQ_CELL_FN static void vjp(const T (&u)[3], const T (&a)[3], const T (&p)[2], const T (&sp)[1], const T (&lam)[1],
                           T (&du)[3], T (&da)[3], T (&dp)[2], T (&dsp)[1]) {
    (void)p;
    const T h = sp[0];
    const T z = sigmoid_<M>(a[0] * h + u[0]);
    const T r = sigmoid_<M>(a[1] * h + u[1]);
    const T c = M::tanh(a[2] * (h * r) + u[2]);
    const T l = lam[0];
    const T dz = l * (c - h) * (z * (T(1) - z));    // ∂L/∂ẑ
    const T dc = l * z * (T(1) - c * c);             // ∂L/∂ĉ
    const T dr = dc * a[2] * h * (r * (T(1) - r));   // ∂L/∂r̂
    du[0] = dz;
    du[1] = dr;
    du[2] = dc;
    da[0] = dz * h;
    da[1] = dr * h;
    da[2] = dc * (h * r);
    dp[0] = T(0);
    dp[1] = T(0);
    dsp[0] = l * (T(1) - z) + dz * a[0] + dr * a[1] + dc * a[2] * r;
  }
};

// ParaLSTM, CIFG with peepholes (docs/spec.md §1.3); state {c, h}:
//   f = σ(a_f h₋ + p_f c₋ + u_f),  c̃ = tanh(a_c h₋ + u_c),  c = f c₋ + (1 − f) c̃,
//   o = σ(a_o h₋ + p_o c + u_o),   h = o tanh(c)
// Jacobian per channel, rows/columns ordered (c, h):
//   ∂c/∂c₋ = f + (c₋ − c̃) σ'(f̂) p_f
//   ∂c/∂h₋ = (c₋ − c̃) σ'(f̂) a_f + (1 − f) tanh'(ĉ) a_c
//   κ      = o tanh'(c) + tanh(c) σ'(ô) p_o            (total ∂h/∂c, through o's peephole too)
//   ∂h/∂c₋ = κ ∂c/∂c₋
//   ∂h/∂h₋ = tanh(c) σ'(ô) a_o + κ ∂c/∂h₋
template <typename T, typename M = StdMath>
struct Lstm {
  static constexpr int S = 2;
  static constexpr int G = 3;
  static constexpr int NP = 2;

  NLSEQ_CELL_FN static void step(const T (&u)[3], const T (&a)[3], const T (&p)[2], const T (&sp)[2], T (&s)[2]) {
    const T cp = sp[0], hp = sp[1];
    const T f = sigmoid_<M>(a[0] * hp + p[0] * cp + u[0]);
    const T ct = M::tanh(a[2] * hp + u[2]);
    const T c = f * cp + (T(1) - f) * ct;
    const T o = sigmoid_<M>(a[1] * hp + p[1] * c + u[1]);
    s[0] = c;
    s[1] = o * M::tanh(c);
  }

  NLSEQ_CELL_FN static void step_jac(const T (&u)[3], const T (&a)[3], const T (&p)[2], const T (&sp)[2], T (&s)[2],
                                T (&J)[2][2]) {
    const T cp = sp[0], hp = sp[1];
    const T f = sigmoid_<M>(a[0] * hp + p[0] * cp + u[0]);
    const T ct = M::tanh(a[2] * hp + u[2]);
    const T c = f * cp + (T(1) - f) * ct;
    const T o = sigmoid_<M>(a[1] * hp + p[1] * c + u[1]);
    const T tc = M::tanh(c);
    s[0] = c;
    s[1] = o * tc;
    const T df = f * (T(1) - f);    // σ'(f̂)
    const T dO = o * (T(1) - o);    // σ'(ô)
    const T dc_dcp = f + (cp - ct) * df * p[0];
    const T dc_dhp = (cp - ct) * df * a[0] + (T(1) - f) * (T(1) - ct * ct) * a[2];
    const T kappa = o * (T(1) - tc * tc) + tc * dO * p[1];
    J[0][0] = dc_dcp;
    J[0][1] = dc_dhp;
    J[1][0] = kappa * dc_dcp;
    J[1][1] = tc * dO * a[1] + kappa * dc_dhp;
  }

  NLSEQ_CELL_FN static void vjp(const T (&u)[3], const T (&a)[3], const T (&p)[2], const T (&sp)[2], const T (&lam)[2],
                           T (&du)[3], T (&da)[3], T (&dp)[2], T (&dsp)[2]) {
    const T cp = sp[0], hp = sp[1];
    const T f = sigmoid_<M>(a[0] * hp + p[0] * cp + u[0]);
    const T ct = M::tanh(a[2] * hp + u[2]);
    const T c = f * cp + (T(1) - f) * ct;
    const T o = sigmoid_<M>(a[1] * hp + p[1] * c + u[1]);
    const T tc = M::tanh(c);
    const T d_o = lam[1] * tc * (o * (T(1) - o));                    // ∂L/∂ô
    const T d_c = lam[0] + lam[1] * o * (T(1) - tc * tc) + d_o * p[1]; // total ∂L/∂c
    const T d_f = d_c * (cp - ct) * (f * (T(1) - f));                // ∂L/∂f̂
    const T d_ct = d_c * (T(1) - f) * (T(1) - ct * ct);              // ∂L/∂ĉ (candidate)
    du[0] = d_f;
    du[1] = d_o;
    du[2] = d_ct;
    da[0] = d_f * hp;
    da[1] = d_o * hp;
    da[2] = d_ct * hp;
    dp[0] = d_f * cp;
    dp[1] = d_o * c;
    dsp[0] = d_c * f + d_f * p[0];
    dsp[1] = d_f * a[0] + d_o * a[1] + d_ct * a[2];
  }
};

}  // namespace pararnn
}  // namespace nlseq
