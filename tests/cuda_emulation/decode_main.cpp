// Runs, under the CPU emulation of emu.h, the CUDA decoding kernel of softplus attention (csrc/cuda/softplus_attention_decode.cu)
// against a float64 loop of docs/spec.md §2: LSSA and LSSAR (p = 3, 15), GQA/MQA, several key splits,
// row tiles, D up to 256, clamped N, Tk = 1, and all-zero LSSAR rows. Exit status 0 when all
// errors are small.
#include "emu.h"
#include "decode_emu.inc"  // csrc/cuda/softplus_attention_decode.cu, launches rewritten
#include <cstdio>
#include <random>

using namespace nlseq::cuda;
static std::mt19937 rng(1);
static double gauss() { return std::normal_distribution<double>(0, 1)(rng); }
static double sp(double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::fabs(x))); }

static double run(int64_t B, int64_t H, int64_t Hkv, int64_t Tq, int64_t Tk, int64_t D, bool causal, double p, int64_t off, bool same_keys = false) {
  std::vector<float> q(B * H * Tq * D), k(B * Hkv * Tk * D), v(B * Hkv * Tk * D), o(B * H * Tq * D, NAN);
  for (auto& x : q) x = gauss();
  for (auto& x : k) x = gauss();
  for (auto& x : v) x = gauss();
  if (same_keys) for (int64_t i = 0; i < (int64_t)k.size(); ++i) k[i] = k[i % D];
  else if (Tk > 8)  // peaky: key 3 of each kv head aligned with the first query of its group
    for (int64_t b = 0; b < B; ++b) for (int64_t hk = 0; hk < Hkv; ++hk) for (int64_t d = 0; d < D; ++d)
      k[((b * Hkv + hk) * Tk + 3) * D + d] = q[((b * H + hk * (H / Hkv)) * Tq + 0) * D + d];
  DecodeShape s{B, H, Hkv, Tq, Tk, D};
  size_t wsb = softplus_attention_decode_workspace_bytes(DType::kFloat32, s, causal, off);
  std::vector<float> ws(wsb / 4 + 1, NAN);
  long l0 = emu::launches;
  softplus_attention_decode(DType::kFloat32, s, q.data(), k.data(), v.data(), causal, (float)p, off, o.data(), ws.data(), wsb, nullptr);
  long nl = emu::launches - l0;
  double err = 0, omax = 0;
  int zero_rows = 0;
  const int64_t G = H / Hkv;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Tq; ++i) {
        const float* qi = &q[((b * H + h) * Tq + i) * D];
        const int64_t hk = h / G;
        int64_t n = causal ? std::min(i + 1 + off, Tk) : Tk;
        double qn = 0; for (int d = 0; d < D; ++d) qn += double(qi[d]) * qi[d];
        qn = std::max(std::sqrt(qn), 1e-12);
        double c = n > 1 ? std::log(double(D)) * std::log(double(n)) : 0.0;
        std::vector<double> w(n);
        double L = 0;
        for (int64_t j = 0; j < n; ++j) {
          const float* kj = &k[((b * Hkv + hk) * Tk + j) * D];
          double kn = 0, dot = 0;
          for (int d = 0; d < D; ++d) { kn += double(kj[d]) * kj[d]; dot += double(qi[d]) * kj[d]; }
          kn = std::max(std::sqrt(kn), 1e-12);
          w[j] = sp(c * dot / (qn * kn));
          L += w[j];
        }
        std::vector<double> P(n, 0.0);
        if (p <= 0) { for (int64_t j = 0; j < n; ++j) P[j] = L > 0 ? w[j] / L : 0; }
        else {
          double O = n > 3 ? 1 : 0, M = -INFINITY;
          std::vector<double> base(n);
          for (int64_t j = 0; j < n; ++j) { base[j] = n * w[j] / L - O; M = std::max(M, base[j]); }
          if (M > 1e-4 && L > 0) {
            double R = 0;
            for (int64_t j = 0; j < n; ++j) { P[j] = base[j] > 0 ? std::pow(base[j] / M, p) : 0; R += P[j]; }
            for (auto& x : P) x /= R;
          } else ++zero_rows;
        }
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < n; ++j) acc += P[j] * v[((b * Hkv + hk) * Tk + j) * D + d];
          double got = o[((b * H + h) * Tq + i) * D + d];
          double e = std::fabs(got - acc);
          if (!(e <= err)) err = std::isnan(got) ? INFINITY : std::max(err, e);
          omax = std::max(omax, std::fabs(acc));
        }
      }
  std::printf("B%ld H%ld Hkv%ld Tq%ld Tk%ld D%ld %s p=%g off=%ld%s: launches %ld ws %zu B | zero rows %d | max|o| %.3f max err %.3e\n",
              (long)B, (long)H, (long)Hkv, (long)Tq, (long)Tk, (long)D, causal ? "causal" : "full", p, (long)off,
              same_keys ? " same-keys" : "", nl, wsb, zero_rows, omax, err);
  return err;
}

int main() {
  double worst = 0;
  for (double p : {0.0, 3.0, 15.0}) {
    worst = std::max(worst, run(1, 4, 2, 5, 300, 33, true, p, 295));
    worst = std::max(worst, run(1, 3, 1, 16, 70, 256, false, p, 0));
    worst = std::max(worst, run(2, 2, 2, 7, 5, 8, true, p, 0));        // Tk < Tq + off: N clamped
    worst = std::max(worst, run(1, 2, 1, 16, 16, 64, true, p, 0));     // prefill-like: N = 1..16
    worst = std::max(worst, run(1, 2, 1, 3, 1, 1, false, p, 0));       // Tk = 1, D = 1
  }
  worst = std::max(worst, run(1, 2, 1, 6, 6, 16, true, 15.0, 0, true));  // identical keys: rows N > 3 are zero
  std::printf("WORST %.3e\n", worst);
  // float32 throughout; LSSAR's exponent p multiplies the relative error of each weight.
  return worst < 1e-4 ? 0 : 1;
}
