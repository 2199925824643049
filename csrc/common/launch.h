// Plain C++ launcher interface of the mimicfast kernels: raw pointers, element strides, no ATen types,
// so that the CUDA objects compile with nvcc alone (torch here may be a CPU-only build) and the CPU and
// CUDA kernels share one argument layout. The torch-facing glue (csrc/bindings.cpp) fills these structs.
#pragma once

#include <cstdint>

namespace mimicfast {

enum class DType : int32_t { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// Upsampling operator H of the short-range guidance term. The values are those of mimicfast.upsample_mode.UpsampleMode
// (mimicfast._C.upsample_modes exports them; tests/ops/test_upsample_modes.py checks that the two agree).
enum class Upsample : int32_t { kNone = 0, kBicubic = 1, kNearest = 2 };

// A strided [B, C, rows, cols] tensor view; strides are in elements.
struct View4 {
  const void* data;
  DType dtype;
  int64_t stride[4];
};

// r = weight_b * (long_weight * sign(d) + short_weight * H^T sign(H d)), d = x0_hat - y (mimicfast/ops/l1_residual.py).
struct L1ResidualArgs {
  int64_t B, C, H, W;  // low-res sizes of x0_hat, y and r
  View4 x0_hat, y;     // both of dtype `in_dtype`
  const void* weight;  // [B] contiguous in `out_dtype`, or nullptr for weight 1
  void* out;           // contiguous [B, C, H, W] of `out_dtype` (float32, or float64 for float64 inputs)
  DType out_dtype;
  Upsample upsample;
  double long_weight, short_weight;
};

// bicubic_up4: in [B, C, H, W] -> out [B, C, 4H, 4W]; bicubic_up4_adjoint: in [B, C, 4H, 4W] -> out [B, C, H, W].
// out is contiguous and of the input dtype; H and W are always the low-res sizes.
struct Up4Args {
  int64_t B, C, H, W;
  View4 in;
  void* out;
};

// CPU kernels (csrc/cpu), parallel over planes with OpenMP.
void l1_residual_cpu(const L1ResidualArgs& args);
void bicubic_up4_cpu(const Up4Args& args);
void bicubic_up4_adjoint_cpu(const Up4Args& args);

// CUDA kernels (csrc/cuda), enqueued on `stream` (a cudaStream_t); return nullptr on success, otherwise the
// CUDA error string. Defined only when the extension is built with MIMICFAST_WITH_CUDA.
const char* l1_residual_cuda(const L1ResidualArgs& args, void* stream);
const char* bicubic_up4_cuda(const Up4Args& args, void* stream);
const char* bicubic_up4_adjoint_cuda(const Up4Args& args, void* stream);

}  // namespace mimicfast
