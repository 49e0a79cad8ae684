// Runs, under the CPU emulation of emu.h, the CUDA analog crossbar + NL-ADC kernel
// (csrc/cuda/analog.cu), compiled with NLSEQ_ANALOG_MAX_GRID_Y=2 so that M is tiled over several
// launches at a small size (the real limit is 65535 row tiles): every output code must equal a
// sequential float32 loop of the same definitions (nlseq/analog.h; the kernel sums k in order, so
// the GEMM rounds identically), in-kernel Philox noise, supplied noise and no noise. Exit status 0
// when all codes agree and the launch count is the tiled one.
#include <cmath>
inline float __fsqrt_rn(float x) { return std::sqrt(x); }  // device intrinsics, IEEE on the host
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
#include "emu.h"
#include "analog_emu.inc"  // csrc/cuda/analog.cu with its launches rewritten (tests/test_cuda_emulation.py)
#include <cstdio>
#include <random>

using namespace nlseq;
static std::mt19937 rng(2);

static int run(int64_t M, int64_t K, int64_t N, int L, int mode /*0 none, 1 philox, 2 supplied*/) {
  std::uniform_int_distribution<int> q(-8, 8);
  std::vector<float> x(M * K), w(N * K), cs(N), thr(N * (L - 1)), lev(N * L), z(M * N), y(M * N, NAN);
  for (auto& v : x) v = q(rng) / 4.0f;
  for (auto& v : w) v = q(rng) / 8.0f;
  for (int64_t n = 0; n < N; ++n) {
    cs[n] = 1.0f + 0.25f * (n % 3);
    for (int l = 0; l < L - 1; ++l) thr[n * (L - 1) + l] = -6.0f + 12.0f * l / (L - 2);
    for (int l = 0; l < L; ++l) lev[n * L + l] = -1.0f + 2.0f * l / (L - 1);
  }
  std::normal_distribution<float> g(0, 1);
  for (auto& v : z) v = g(rng);
  cuda::AnalogMvmArgs a{x.data(), w.data(), cs.data(), thr.data(), lev.data(), mode == 2 ? z.data() : nullptr, y.data(),
                        M, K, N, L, 8, 2.0, mode ? 0.25f : 0.0f, mode ? 0.5f : 0.0f, 0x5EADBEEFCAFEBABEull, 7};
  const long l0 = emu::launches;
  if (cuda::analog_mvm_fwd(a, nullptr) != cudaSuccess) { std::printf("launch failed\n"); return 1; }
  const long launches = emu::launches - l0;
  const long want = cuda::analog_mvm_fwd_launches(M);
  const analog::Dac dac = analog::Dac::make(8, 2.0);
  int64_t bad = 0;
  for (int64_t m = 0; m < M; ++m) {
    float ssq = 0.0f;
    std::vector<float> xq(K);
    for (int64_t k = 0; k < K; ++k) {
      xq[k] = analog::dac_quantize(x[m * K + k], dac);
      ssq += xq[k] * xq[k];
    }
    const float sigma = mode ? std::sqrt(ssq * 0.25f + 0.5f) : 0.0f;
    for (int64_t n = 0; n < N; ++n) {
      float acc = 0.0f;
      for (int64_t k = 0; k < K; ++k) acc += xq[k] * w[n * K + k];
      float zz = 0.0f;
      if (mode == 1) zz = analog::normal_at(a.seed, a.offset, uint64_t(m * N + n));
      if (mode == 2) zz = z[m * N + n];
      const float cur = acc * cs[n] + sigma * zz;
      const float ref = analog::adc_level(cur, &lev[n * L], analog::ramp_code(cur, &thr[n * (L - 1)], L));
      if (!(y[m * N + n] == ref)) ++bad;
    }
  }
  std::printf("M=%ld K=%ld N=%ld mode=%d launches=%ld (want %ld) codes differing: %ld\n", long(M), long(K), long(N), mode,
              launches, want, long(bad));
  return bad != 0 || launches != want || want < 2;
}

int main() {
  int fail = 0;
  fail |= run(64 * 5 + 7, 24, 70, 16, 1);  // 6 row tiles: 3 launches of at most 2
  fail |= run(64 * 4, 17, 64, 8, 2);       // 4 row tiles: 2 launches
  fail |= run(64 * 3 + 1, 5, 3, 4, 0);     // 4 row tiles, N < one tile
  return fail;
}
