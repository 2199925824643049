// Bicubic x4 upsampling (F.interpolate, align_corners=False) and its adjoint on CUDA, against raw pointers.
// Both are memory-bound gathers: one thread per output element, neighbours share their taps through L1.
#include <cstdint>

#include "../common/up4.h"
#include "types.cuh"

namespace mimicfast {
namespace {

constexpr int kThreads = 256;

// out[b, c, o, q] = sum_{jr, jc} w[o & 3][jr] w[q & 3][jc] x[b, c, clamp(first(o) + jr), clamp(first(q) + jc)]
template <typename In, typename Acc>
__global__ void __launch_bounds__(kThreads) up4_kernel(Up4Args a) {
  const int H = static_cast<int>(a.H), W = static_cast<int>(a.W);
  const int64_t OW = int64_t{kUp} * W, OH = int64_t{kUp} * H;
  const int64_t total = a.B * a.C * OH * OW;
  const auto* x = static_cast<const In*>(a.in.data);
  auto* out = static_cast<In*>(a.out);
  const int64_t* st = a.in.stride;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int q = static_cast<int>(idx % OW);
    const int o = static_cast<int>((idx / OW) % OH);
    const int64_t plane = idx / (OW * OH);
    const In* xp = x + (plane / a.C) * st[0] + (plane % a.C) * st[1];
    const int fr = up4_first_tap(o), fc = up4_first_tap(q);
    int cols[kTaps];
    Acc wc[kTaps];
#pragma unroll
    for (int j = 0; j < kTaps; ++j) {
      cols[j] = clamp_index(fc + j, W);
      wc[j] = up4_weight<Acc>(q & 3, j);
    }
    Acc acc = Acc(0);
#pragma unroll
    for (int jr = 0; jr < kTaps; ++jr) {
      const In* xr = xp + clamp_index(fr + jr, H) * st[2];
      Acc row = Acc(0);
#pragma unroll
      for (int jc = 0; jc < kTaps; ++jc) row += wc[jc] * cuda::to_acc(xr[cols[jc] * st[3]]);
      acc += up4_weight<Acc>(o & 3, jr) * row;
    }
    cuda::store(out + idx, acc);
  }
}

// out[b, c, i, j] = sum_{m, n} R(4i - 6 + m, i) R(4j - 6 + n, j) g[b, c, 4i - 6 + m, 4j - 6 + n] (see up4.h).
template <typename In, typename Acc>
__global__ void __launch_bounds__(kThreads) up4_adjoint_kernel(Up4Args a) {
  const int H = static_cast<int>(a.H), W = static_cast<int>(a.W);
  const int64_t total = a.B * a.C * H * W;
  const auto* g = static_cast<const In*>(a.in.data);
  auto* out = static_cast<In*>(a.out);
  const int64_t* st = a.in.stride;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int j = static_cast<int>(idx % W);
    const int i = static_cast<int>((idx / W) % H);
    const int64_t plane = idx / (int64_t{W} * H);
    const In* gp = g + (plane / a.C) * st[0] + (plane % a.C) * st[1];
    Acc wc[kAdjWindow];
    up4_adjoint_window<Acc>(j, W, wc);
    Acc acc = Acc(0);
    for (int m = 0; m < kAdjWindow; ++m) {
      const int o = kUp * i - kAdjOffset + m;
      if (o < 0 || o >= kUp * H) continue;
      const Acc wr = up4_adjoint_weight<Acc>(o, i, H);
      const In* gr = gp + o * st[2];
      Acc row = Acc(0);
#pragma unroll
      for (int n = 0; n < kAdjWindow; ++n) {
        const int q = kUp * j - kAdjOffset + n;
        if (q >= 0 && q < kUp * W) row += wc[n] * cuda::to_acc(gr[q * st[3]]);
      }
      acc += wr * row;
    }
    cuda::store(out + idx, acc);
  }
}

}  // namespace

const char* bicubic_up4_cuda(const Up4Args& args, void* stream) {
  const int64_t total = args.B * args.C * args.H * args.W * kUp * kUp;
  cuda::dispatch_dtype(args.in.dtype, [&](auto in, auto acc) {
    up4_kernel<decltype(in), decltype(acc)>
        <<<cuda::blocks_for(total, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(args);
  });
  return cuda::last_error();
}

const char* bicubic_up4_adjoint_cuda(const Up4Args& args, void* stream) {
  const int64_t total = args.B * args.C * args.H * args.W;
  cuda::dispatch_dtype(args.in.dtype, [&](auto in, auto acc) {
    up4_adjoint_kernel<decltype(in), decltype(acc)>
        <<<cuda::blocks_for(total, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(args);
  });
  return cuda::last_error();
}

}  // namespace mimicfast
