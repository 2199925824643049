// Fused guidance residual on CUDA: r = weight_b * (long_weight sign(d) + short_weight H^T sign(H d)),
// d = x0_hat - y. Bicubic: one block per T x T low-res output tile and plane; the tile's part of
// sign(H d) ((4T + 12)^2 high-res values, see up4.h for the window) is formed in shared memory from a
// clamped (T + 6)^2 patch of d and reduced by the separable adjoint gather; nothing 16x larger ever
// reaches global memory. Nearest / none: an elementwise kernel (H^T sign(H d) = 16 sign(d) for nearest).
#include <cstdint>

#include "../common/up4.h"
#include "types.cuh"

namespace mimicfast {
namespace {

constexpr int kThreads = 256;

template <typename In, typename Acc, int T>
__global__ void __launch_bounds__(kThreads) l1_residual_bicubic_kernel(L1ResidualArgs a, int tiles_x) {
  constexpr int L = T + 6;       // low-res rows/cols of d the tile reads: i0 - 3 .. i0 + T + 2
  constexpr int Q = kUp * T + 12;  // high-res rows/cols its adjoint gathers: 4 i0 - 6 .. 4 i0 + 4T + 5
  __shared__ Acc d_s[L][L];
  __shared__ Acc u_s[L][Q];      // rows of d upsampled horizontally
  __shared__ Acc s_s[Q][Q + 1];  // sign(H d); +1 staggers the banks
  __shared__ Acc t_s[Q][T];      // horizontal adjoint of s_s
  __shared__ Acc wx_s[T][kAdjWindow];
  __shared__ Acc wy_s[T][kAdjWindow];

  const int H = static_cast<int>(a.H), W = static_cast<int>(a.W);
  const int i0 = (blockIdx.x / tiles_x) * T, j0 = (blockIdx.x % tiles_x) * T;
  const int tid = threadIdx.x, nt = blockDim.x;
  const auto* x = static_cast<const In*>(a.x0_hat.data);
  const auto* y = static_cast<const In*>(a.y.data);
  const auto* weight = static_cast<const Acc*>(a.weight);
  auto* out = static_cast<Acc*>(a.out);
  const int64_t* sx = a.x0_hat.stride;
  const int64_t* sy = a.y.stride;
  const Acc long_w = static_cast<Acc>(a.long_weight), short_w = static_cast<Acc>(a.short_weight);

  for (int e = tid; e < 2 * T * kAdjWindow; e += nt) {
    const int t = (e / kAdjWindow) % T, m = e % kAdjWindow;
    const bool is_y = e >= T * kAdjWindow;
    const int i = (is_y ? i0 : j0) + t, n = is_y ? H : W;
    Acc w = Acc(0);
    const int o = kUp * i - kAdjOffset + m;
    if (i < n && o >= 0 && o < kUp * n) w = up4_adjoint_weight<Acc>(o, i, n);
    (is_y ? wy_s : wx_s)[t][m] = w;
  }

  for (int64_t plane = blockIdx.y; plane < a.B * a.C; plane += gridDim.y) {
    const int64_t b = plane / a.C, c = plane % a.C;
    const In* xp = x + b * sx[0] + c * sx[1];
    const In* yp = y + b * sy[0] + c * sy[1];
    for (int e = tid; e < L * L; e += nt) {
      const int r = e / L, q = e % L;
      const int64_t gi = clamp_index(i0 - 3 + r, H), gj = clamp_index(j0 - 3 + q, W);
      d_s[r][q] = cuda::to_acc(xp[gi * sx[2] + gj * sx[3]]) - cuda::to_acc(yp[gi * sy[2] + gj * sy[3]]);
    }
    __syncthreads();
    for (int e = tid; e < L * Q; e += nt) {
      const int r = e / Q, q = e % Q;
      const int oc = kUp * j0 - kAdjOffset + q;  // may be negative: >> and & still give floor and phase
      const int first = up4_first_tap(oc) - (j0 - 3);
      Acc u = Acc(0);
#pragma unroll
      for (int j = 0; j < kTaps; ++j) u += up4_weight<Acc>(oc & 3, j) * d_s[r][first + j];
      u_s[r][q] = u;
    }
    __syncthreads();
    for (int e = tid; e < Q * Q; e += nt) {
      const int qr = e / Q, qc = e % Q;
      const int orow = kUp * i0 - kAdjOffset + qr, ocol = kUp * j0 - kAdjOffset + qc;
      Acc s = Acc(0);
      if (orow >= 0 && orow < kUp * H && ocol >= 0 && ocol < kUp * W) {
        const int first = up4_first_tap(orow) - (i0 - 3);
        Acc hd = Acc(0);
#pragma unroll
        for (int j = 0; j < kTaps; ++j) hd += up4_weight<Acc>(orow & 3, j) * u_s[first + j][qc];
        s = sign_of(hd);
      }
      s_s[qr][qc] = s;
    }
    __syncthreads();
    for (int e = tid; e < Q * T; e += nt) {
      const int qr = e / T, tj = e % T;
      Acc t = Acc(0);
#pragma unroll
      for (int m = 0; m < kAdjWindow; ++m) t += wx_s[tj][m] * s_s[qr][kUp * tj + m];
      t_s[qr][tj] = t;
    }
    __syncthreads();
    const Acc w_b = weight != nullptr ? weight[b] : Acc(1);
    for (int e = tid; e < T * T; e += nt) {
      const int ti = e / T, tj = e % T;
      if (i0 + ti >= H || j0 + tj >= W) continue;
      Acc adj = Acc(0);
#pragma unroll
      for (int m = 0; m < kAdjWindow; ++m) adj += wy_s[ti][m] * t_s[kUp * ti + m][tj];
      const Acc r = long_w * sign_of(d_s[ti + 3][tj + 3]) + short_w * adj;
      out[(plane * H + i0 + ti) * W + j0 + tj] = r * w_b;
    }
    __syncthreads();  // the next plane overwrites the shared tiles
  }
}

// upsample none: coef = long_weight; nearest: coef = long_weight + 16 short_weight.
template <typename In, typename Acc>
__global__ void __launch_bounds__(kThreads) l1_residual_sign_kernel(L1ResidualArgs a, Acc coef) {
  const int64_t H = a.H, W = a.W, total = a.B * a.C * H * W;
  const auto* x = static_cast<const In*>(a.x0_hat.data);
  const auto* y = static_cast<const In*>(a.y.data);
  const auto* weight = static_cast<const Acc*>(a.weight);
  auto* out = static_cast<Acc*>(a.out);
  const int64_t* sx = a.x0_hat.stride;
  const int64_t* sy = a.y.stride;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t j = idx % W, i = (idx / W) % H, c = (idx / (W * H)) % a.C, b = idx / (W * H * a.C);
    const Acc d = cuda::to_acc(x[b * sx[0] + c * sx[1] + i * sx[2] + j * sx[3]]) -
                  cuda::to_acc(y[b * sy[0] + c * sy[1] + i * sy[2] + j * sy[3]]);
    const Acc r = coef * sign_of(d);
    out[idx] = weight != nullptr ? r * weight[b] : r;
  }
}

}  // namespace

const char* l1_residual_cuda(const L1ResidualArgs& args, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  cuda::dispatch_dtype(args.x0_hat.dtype, [&](auto in, auto acc) {
    using In = decltype(in);
    using Acc = decltype(acc);
    if (args.upsample == Upsample::kBicubic) {
      constexpr int T = sizeof(Acc) == 8 ? 8 : 16;  // keeps the shared tiles under 48 KiB
      const int tiles_x = static_cast<int>((args.W + T - 1) / T);
      const int64_t tiles = tiles_x * ((args.H + T - 1) / T);
      const int64_t planes = args.B * args.C;
      const dim3 grid(static_cast<unsigned int>(tiles), static_cast<unsigned int>(planes < 65535 ? planes : 65535));
      l1_residual_bicubic_kernel<In, Acc, T><<<grid, kThreads, 0, s>>>(args, tiles_x);
    } else {
      const Acc long_w = static_cast<Acc>(args.long_weight), short_w = static_cast<Acc>(args.short_weight);
      const Acc coef = args.upsample == Upsample::kNearest ? long_w + Acc(16) * short_w : long_w;
      const int64_t total = args.B * args.C * args.H * args.W;
      l1_residual_sign_kernel<In, Acc><<<cuda::blocks_for(total, kThreads), kThreads, 0, s>>>(args, coef);
    }
  });
  return cuda::last_error();
}

}  // namespace mimicfast
