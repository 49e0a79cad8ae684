// Runs, under the CPU emulation of emu.h, the CUDA linear-recurrence kernels (csrc/cuda/scan.cu): forward and backward against a
// float64 sequential loop, every K, both directions, with and without h0, single-pass and
// multi-segment shapes, float32 and one bfloat16 case. Exit status 0 when all errors are small.
#include "emu.h"
#include "scan_emu.inc"  // csrc/cuda/scan.cu with its launches rewritten (tests/test_cuda_emulation.py)
#include <cstdio>
#include <random>

using namespace nlseq::cuda;
static std::mt19937 rng(0);
static double uni(double a, double b) { return std::uniform_real_distribution<double>(a, b)(rng); }

template <typename T> static float tf(T x);
template <> float tf<float>(float x) { return x; }
template <> float tf<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> static T ft(float x);
template <> float ft<float>(float x) { return x; }
template <> __nv_bfloat16 ft<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename E>
static double run(int64_t B, int64_t T_in, int64_t N, int K, bool reverse, bool with_h0, DType dt) {
  const int64_t T = T_in;
  std::vector<E> A(B * T * N * K * K), b(B * T * N * K), h0(B * N * K), h(B * T * N * K), hl(B * N * K);
  for (auto& x : A) x = ft<E>(uni(-1, 1) * 0.95 / K);
  for (auto& x : b) x = ft<E>(uni(-1, 1));
  for (auto& x : h0) x = ft<E>(uni(-1, 1));
  std::fill(h.begin(), h.end(), ft<E>(NAN));
  std::fill(hl.begin(), hl.end(), ft<E>(NAN));
  ScanShape s{B, T, N, K};
  size_t wsb = scan_fwd_workspace_bytes(dt, s);
  std::vector<float> ws(wsb / 4 + 1, NAN);
  long l0 = emu::launches;
  scan_fwd(dt, s, A.data(), b.data(), with_h0 ? h0.data() : nullptr, reverse, h.data(), hl.data(), wsb ? ws.data() : nullptr, wsb, nullptr);
  long nl = emu::launches - l0;
  // reference forward in double
  auto at = [&](int64_t bi, int64_t t, int64_t n) { return (bi * T + t) * N + n; };
  std::vector<double> H(B * T * N * K), HL(B * N * K);
  double err = 0;
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t n = 0; n < N; ++n) {
      std::vector<double> x(K, 0.0);
      if (with_h0) for (int k = 0; k < K; ++k) x[k] = tf<E>(h0[(bi * N + n) * K + k]);
      for (int64_t i = 0; i < T; ++i) {
        int64_t t = reverse ? T - 1 - i : i;
        std::vector<double> y(K);
        for (int r = 0; r < K; ++r) {
          double acc = tf<E>(b[at(bi, t, n) * K + r]);
          for (int c = 0; c < K; ++c) acc += double(tf<E>(A[at(bi, t, n) * K * K + r * K + c])) * x[c];
          y[r] = acc;
        }
        x = y;
        for (int k = 0; k < K; ++k) {
          H[at(bi, t, n) * K + k] = x[k];
          double v = tf<E>(h[at(bi, t, n) * K + k]);
          double e = std::fabs(v - x[k]);
          if (!(e <= err)) err = std::isnan(v) ? INFINITY : std::max(err, e);
        }
      }
      for (int k = 0; k < K; ++k) {
        double v = tf<E>(hl[(bi * N + n) * K + k]);
        double e = std::fabs(v - x[k]);
        if (!(e <= err)) err = std::isnan(v) ? INFINITY : std::max(err, e);
      }
    }
  // backward: use the kernel's h as the saved states
  std::vector<E> gh(B * T * N * K), gl(B * N * K), dA(A.size()), db(b.size()), dh0(h0.size());
  for (auto& x : gh) x = ft<E>(uni(-1, 1));
  for (auto& x : gl) x = ft<E>(uni(-1, 1));
  std::fill(dA.begin(), dA.end(), ft<E>(NAN));
  std::fill(db.begin(), db.end(), ft<E>(NAN));
  std::fill(dh0.begin(), dh0.end(), ft<E>(NAN));
  size_t wsb2 = scan_bwd_workspace_bytes(dt, s);
  std::vector<float> ws2(wsb2 / 4 + 1, NAN);
  scan_bwd(dt, s, A.data(), h.data(), with_h0 ? h0.data() : nullptr, gh.data(), gl.data(), reverse, dA.data(), db.data(), dh0.data(), wsb2 ? ws2.data() : nullptr, wsb2, nullptr);
  double gerr = 0;
  auto upd = [&](double v, double ref) { double e = std::fabs(v - ref); if (!(e <= gerr)) gerr = std::isnan(v) ? INFINITY : std::max(gerr, e); };
  for (int64_t bi = 0; bi < B; ++bi)
    for (int64_t n = 0; n < N; ++n) {
      std::vector<double> lam(K, 0.0);
      for (int64_t i = 0; i < T; ++i) {  // λ travels against the forward direction
        int64_t t = reverse ? i : T - 1 - i;
        bool last = reverse ? t == 0 : t == T - 1;
        std::vector<double> nl_(K);
        for (int r = 0; r < K; ++r) {
          double acc = tf<E>(gh[at(bi, t, n) * K + r]) + (last ? tf<E>(gl[(bi * N + n) * K + r]) : 0.0);
          if (!last) {
            int64_t nx = reverse ? t - 1 : t + 1;
            for (int c = 0; c < K; ++c) acc += double(tf<E>(A[at(bi, nx, n) * K * K + c * K + r])) * lam[c];
          }
          nl_[r] = acc;
        }
        lam = nl_;
        bool first = reverse ? t == T - 1 : t == 0;
        for (int r = 0; r < K; ++r) {
          upd(tf<E>(db[at(bi, t, n) * K + r]), lam[r]);
          for (int c = 0; c < K; ++c) {
            double hp = first ? (with_h0 ? tf<E>(h0[(bi * N + n) * K + c]) : 0.0) : tf<E>(h[at(bi, reverse ? t + 1 : t - 1, n) * K + c]);
            upd(tf<E>(dA[at(bi, t, n) * K * K + r * K + c]), lam[r] * hp);
          }
        }
      }
      int64_t tf0 = reverse ? T - 1 : 0;
      for (int c = 0; c < K; ++c) {
        double acc = 0;
        for (int r = 0; r < K; ++r) acc += double(tf<E>(A[at(bi, tf0, n) * K * K + r * K + c])) * lam[r];
        upd(tf<E>(dh0[(bi * N + n) * K + c]), acc);
      }
    }
  std::printf("B%ld T%ld N%ld K%d %s %s %s: launches %ld ws %zu B | fwd max err %.3e | bwd max err %.3e\n", (long)B, (long)T, (long)N, K,
              reverse ? "rev" : "fwd", with_h0 ? "h0" : "zero", dt == DType::kFloat32 ? "fp32" : "bf16", nl, wsb, err, gerr);
  return std::max(err, gerr);
}

int main() {
  double worst = 0;
  struct C { int64_t B, T, N; int K; };
  for (C c : {C{1, 1000, 5, 1}, C{1, 777, 3, 2}, C{2, 301, 2, 3}, C{1, 500, 2, 4}, C{3, 300, 70, 1}, C{2, 100, 40, 4}, C{1, 1, 3, 1}, C{2, 2, 1, 2}, C{1, 2049, 1, 1}})
    for (bool rev : {false, true})
      for (bool h0 : {false, true}) worst = std::max(worst, run<float>(c.B, c.T, c.N, c.K, rev, h0, DType::kFloat32));
  double lw = run<__nv_bfloat16>(1, 600, 33, 2, true, true, DType::kBFloat16);
  std::printf("WORST fp32 %.3e  bf16 %.3e\n", worst, lw);
  // float32: accumulation error only (states are O(1)); bfloat16: half an ulp of outputs up to ~4.
  return worst < 1e-5 && lw < 3e-2 ? 0 : 1;
}
