// x4 upsampling stencils with PyTorch semantics, shared by the CPU (C++) and CUDA kernels.
//
// Bicubic, align_corners=False (F.interpolate / upsample_bicubic2d): output index o reads the source
// coordinate real = (o + 0.5) / 4 - 0.5 (not clamped at 0 for cubic), taps floor(real) - 1 .. floor(real) + 2,
// each clamped to [0, n - 1], with Keys weights (a = -0.75) of t = real - floor(real). Writing o = 4k + p,
// the fraction t depends on the phase p only: t = 0.625, 0.875, 0.125, 0.375 and the first tap is
// k - 2 (p = 0, 1) or k - 1 (p = 2, 3). All 16 weights are dyadic rationals (multiples of 2^-11), exact in
// every floating type, so the kernels see exactly the weights PyTorch uses.
//
// The adjoint H^T (the backward of the upsampling) is written as a gather: low-res index i receives from the
// 16 output indices o = 4i - 6 + m, m = 0..15 (this window holds at the borders too, where clamped taps fold
// onto 0 and n - 1), with weight R(o, i) = sum_j w_p[j] [clamp(first_tap(o) + j) == i]; indices o outside
// [0, 4n) do not exist and contribute nothing.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MF_HD __host__ __device__ __forceinline__
#else
#define MF_HD inline
#endif

namespace mimicfast {

constexpr int kUp = 4;          // the upsampling factor
constexpr int kTaps = 4;        // taps per output index and dimension (bicubic)
constexpr int kAdjWindow = 16;  // output indices gathered per low-res index and dimension (adjoint)
constexpr int kAdjOffset = 6;   // the adjoint window of i starts at 4i - kAdjOffset

MF_HD int clamp_index(int v, int n) { return v < 0 ? 0 : (v > n - 1 ? n - 1 : v); }

// First (virtual, unclamped) tap of output index o.
MF_HD int up4_first_tap(int o) { return (o >> 2) - ((o & 3) < 2 ? 2 : 1); }

// Keys cubic-convolution weight of tap j (0..3) for phase p (0..3), a = -0.75, as in PyTorch's
// upsample_bicubic2d: w = (cubic2(t + 1), cubic1(t), cubic1(1 - t), cubic2(2 - t)).
template <typename T>
MF_HD T up4_weight(int p, int j) {
  const T a = T(-0.75);
  const T t = p == 0 ? T(0.625) : (p == 1 ? T(0.875) : (p == 2 ? T(0.125) : T(0.375)));
  const T x = j == 0 ? t + T(1) : (j == 1 ? t : (j == 2 ? T(1) - t : T(2) - t));
  if (j == 1 || j == 2) return ((a + T(2)) * x - (a + T(3))) * x * x + T(1);
  return ((a * x - T(5) * a) * x + T(8) * a) * x - T(4) * a;
}

// R(o, i): the weight with which output index o (in [0, 4n)) reads low-res index i (in [0, n)).
template <typename T>
MF_HD T up4_adjoint_weight(int o, int i, int n) {
  const int first = up4_first_tap(o);
  const int p = o & 3;
  T w = T(0);
  for (int j = 0; j < kTaps; ++j) {
    if (clamp_index(first + j, n) == i) w += up4_weight<T>(p, j);
  }
  return w;
}

// Row weights of the adjoint window of low-res index i: out[m] = R(4i - 6 + m, i) (0 outside [0, 4n)).
template <typename T>
MF_HD void up4_adjoint_window(int i, int n, T* out) {
  for (int m = 0; m < kAdjWindow; ++m) {
    const int o = kUp * i - kAdjOffset + m;
    out[m] = (o >= 0 && o < kUp * n) ? up4_adjoint_weight<T>(o, i, n) : T(0);
  }
}

template <typename T>
MF_HD T sign_of(T v) {
  return T((v > T(0)) - (v < T(0)));  // sign(0) = 0, the tie rule of the reference (torch.sign)
}

}  // namespace mimicfast
