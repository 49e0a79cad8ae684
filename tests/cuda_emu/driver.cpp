// Test driver of the emulated CUDA pararnn kernels: reads inputs (float32 files), runs
// nlseq::cuda::pararnn_fwd then pararnn_bwd on the CPU, writes outputs (float32 files).
//   driver DIR cell io B T N L max_iters tol has_p has_s0
// DIR holds U A [P] [s0] dS ds_last .bin; it receives S_all iters residual dU dA dP ds0 .bin.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cuda/pararnn.h"

using namespace nlseq;

static std::vector<float> read(const std::string& path, size_t n) {
  std::vector<float> v(n);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f || std::fread(v.data(), 4, n, f) != n) { std::fprintf(stderr, "cannot read %s\n", path.c_str()); std::exit(2); }
  std::fclose(f);
  return v;
}
static void write(const std::string& path, const float* p, size_t n) {
  FILE* f = std::fopen(path.c_str(), "wb");
  std::fwrite(p, 4, n, f);
  std::fclose(f);
}

template <typename T> T cvt(float x);
template <> float cvt<float>(float x) { return x; }
template <> __nv_bfloat16 cvt<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __half cvt<__half>(float x) { return __float2half(x); }
static float back(float x) { return x; }
static float back(__nv_bfloat16 x) { return __bfloat162float(x); }
static float back(__half x) { return __half2float(x); }

template <typename T>
static std::vector<T> to_io(const std::vector<float>& v) {
  std::vector<T> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = cvt<T>(v[i]);
  return o;
}
template <typename T>
static void write_io(const std::string& path, const std::vector<T>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = back(v[i]);
  write(path, f.data(), f.size());
}

template <typename T>
static int run(const std::string& dir, cuda::PararnnShape shape, int64_t max_iters, float tol, bool has_p, bool has_s0) {
  const int64_t B = shape.B, T_ = shape.T, N = shape.N, S = pararnn::state_size(shape.cell);
  auto U = to_io<T>(read(dir + "/U.bin", B * T_ * 3 * N));
  auto A = read(dir + "/A.bin", 3 * N);
  std::vector<float> P = has_p ? read(dir + "/P.bin", 2 * N) : std::vector<float>();
  std::vector<T> s0 = has_s0 ? to_io<T>(read(dir + "/s0.bin", B * S * N)) : std::vector<T>();
  auto dS = to_io<T>(read(dir + "/dS.bin", B * T_ * S * N));
  auto dsl = to_io<T>(read(dir + "/ds_last.bin", B * S * N));
  std::vector<T> S_all(B * T_ * S * N, cvt<T>(NAN));
  int64_t iters = -1;
  float residual = NAN;
  std::vector<float> ws(cuda::pararnn_fwd_workspace_bytes(shape, max_iters) / 4 + 1, NAN);
  cuda::PararnnFwdArgs fa{U.data(), A.data(), has_p ? P.data() : nullptr, has_s0 ? s0.data() : nullptr,
                          S_all.data(), &iters, &residual, max_iters, tol};
  if (cuda::pararnn_fwd(shape, fa, ws.data(), nullptr) != cudaSuccess) return 3;
  write_io(dir + "/S_all.bin", S_all);
  float it = float(iters);
  write(dir + "/iters.bin", &it, 1);
  write(dir + "/residual.bin", &residual, 1);
  std::vector<T> dU(B * T_ * 3 * N, cvt<T>(NAN)), ds0(B * S * N, cvt<T>(NAN));
  std::vector<float> dA(3 * N, NAN), dP(2 * N, NAN);
  std::vector<float> wb(cuda::pararnn_bwd_workspace_bytes(shape) / 4 + 1, NAN);
  cuda::PararnnBwdArgs ba{U.data(), A.data(), has_p ? P.data() : nullptr, has_s0 ? s0.data() : nullptr,
                          S_all.data(), dS.data(), dsl.data(), dU.data(), dA.data(), dP.data(), ds0.data()};
  if (cuda::pararnn_bwd(shape, ba, wb.data(), nullptr) != cudaSuccess) return 4;
  write_io(dir + "/dU.bin", dU);
  write_io(dir + "/ds0.bin", ds0);
  write(dir + "/dA.bin", dA.data(), dA.size());
  write(dir + "/dP.bin", dP.data(), dP.size());
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 12) { std::fprintf(stderr, "usage: driver DIR cell io B T N L max_iters tol has_p has_s0\n"); return 1; }
  const std::string dir = argv[1], cell = argv[2], io = argv[3];
  cuda::PararnnShape shape{cell == "gru" ? pararnn::CellKind::kGru : pararnn::CellKind::kLstm,
                           io == "fp32" ? cuda::PararnnIo::kFloat32 : io == "bf16" ? cuda::PararnnIo::kBFloat16
                                                                                : cuda::PararnnIo::kFloat16,
                           std::atoll(argv[4]), std::atoll(argv[5]), std::atoll(argv[6]), std::atoll(argv[7])};
  if (shape.L <= 0) shape.L = cuda::pararnn_chunk_len(shape.B, shape.T, shape.N, 132);
  const int64_t max_iters = std::atoll(argv[8]);
  const float tol = float(std::atof(argv[9]));
  const bool has_p = std::atoi(argv[10]) != 0, has_s0 = std::atoi(argv[11]) != 0;
  if (shape.io == cuda::PararnnIo::kFloat32) return run<float>(dir, shape, max_iters, tol, has_p, has_s0);
  if (shape.io == cuda::PararnnIo::kBFloat16) return run<__nv_bfloat16>(dir, shape, max_iters, tol, has_p, has_s0);
  return run<__half>(dir, shape, max_iters, tol, has_p, has_s0);
}
