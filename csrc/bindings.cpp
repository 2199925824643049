// mimicfast._C: the torch-facing glue of the guidance-op kernels. It checks tensors, allocates outputs,
// fills the launcher structs of common/launch.h and runs the CPU kernel for CPU tensors or the CUDA kernel
// for CUDA tensors (when built with MIMICFAST_WITH_CUDA). Dispatch between backends, torch.library
// registration and autograd live in Python (mimicfast/ops/).
#include <torch/extension.h>

#include <cstdint>
#include <optional>

#include "common/launch.h"

namespace mimicfast {
namespace {

DType to_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "mimicfast: unsupported dtype ", t.scalar_type(), " (float16/bfloat16/float32/float64)");
  }
}

View4 view_of(const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 4, "mimicfast: expected a 4-D [B, C, H, W] tensor, got ", t.dim(), " dims");
  return View4{t.data_ptr(), to_dtype(t), {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}};
}

void check_launch(const char* error, const char* op) {
  TORCH_CHECK(error == nullptr, "mimicfast: CUDA launch of ", op, " failed: ", error == nullptr ? "" : error);
}

#ifdef MIMICFAST_WITH_CUDA
constexpr bool kWithCuda = true;
#else
constexpr bool kWithCuda = false;
#endif

void check_device(const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu() || (kWithCuda && t.device().is_cuda()), "mimicfast._C: tensors on ", t.device(),
              " are not supported by this build");
}

at::Tensor l1_residual(const at::Tensor& x0_hat, const at::Tensor& y, int64_t upsample,
                       const std::optional<at::Tensor>& weight, double long_weight, double short_weight,
                       int64_t stream) {
  TORCH_CHECK(x0_hat.sizes() == y.sizes(), "mimicfast: x0_hat ", x0_hat.sizes(), " and y ", y.sizes(),
              " differ in shape");
  TORCH_CHECK(x0_hat.scalar_type() == y.scalar_type(), "mimicfast: x0_hat and y differ in dtype");
  TORCH_CHECK(x0_hat.device() == y.device(), "mimicfast: x0_hat and y are on different devices");
  TORCH_CHECK(upsample >= 0 && upsample <= 2, "mimicfast: bad upsample code ", upsample);
  check_device(x0_hat);
  const auto out_type = x0_hat.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty(x0_hat.sizes(), x0_hat.options().dtype(out_type));
  at::Tensor w;
  if (weight.has_value()) {
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == x0_hat.size(0), "mimicfast: weight must have shape [B]");
    w = weight->to(x0_hat.device(), out_type).contiguous();
  }
  if (out.numel() == 0) return out;
  L1ResidualArgs args{x0_hat.size(0), x0_hat.size(1), x0_hat.size(2), x0_hat.size(3),
                      view_of(x0_hat), view_of(y), w.defined() ? w.data_ptr() : nullptr,
                      out.data_ptr(), to_dtype(out), static_cast<Upsample>(upsample),
                      long_weight, short_weight};
  if (x0_hat.is_cuda()) {
#ifdef MIMICFAST_WITH_CUDA
    check_launch(l1_residual_cuda(args, reinterpret_cast<void*>(stream)), "l1_residual");
#endif
  } else {
    l1_residual_cpu(args);
  }
  return out;
}

at::Tensor bicubic_up4(const at::Tensor& x, int64_t stream) {
  check_device(x);
  TORCH_CHECK(x.dim() == 4, "mimicfast: bicubic_up4 expects [B, C, H, W], got ", x.dim(), " dims");
  at::Tensor out = at::empty({x.size(0), x.size(1), 4 * x.size(2), 4 * x.size(3)}, x.options());
  if (out.numel() == 0) return out;
  Up4Args args{x.size(0), x.size(1), x.size(2), x.size(3), view_of(x), out.data_ptr()};
  if (x.is_cuda()) {
#ifdef MIMICFAST_WITH_CUDA
    check_launch(bicubic_up4_cuda(args, reinterpret_cast<void*>(stream)), "bicubic_up4");
#endif
  } else {
    bicubic_up4_cpu(args);
  }
  return out;
}

at::Tensor bicubic_up4_adjoint(const at::Tensor& g, int64_t stream) {
  check_device(g);
  TORCH_CHECK(g.dim() == 4 && g.size(2) % 4 == 0 && g.size(3) % 4 == 0,
              "mimicfast: bicubic_up4_adjoint expects [B, C, 4H, 4W], got ", g.sizes());
  at::Tensor out = at::empty({g.size(0), g.size(1), g.size(2) / 4, g.size(3) / 4}, g.options());
  if (out.numel() == 0) return out.zero_();
  Up4Args args{g.size(0), g.size(1), g.size(2) / 4, g.size(3) / 4, view_of(g), out.data_ptr()};
  if (g.is_cuda()) {
#ifdef MIMICFAST_WITH_CUDA
    check_launch(bicubic_up4_adjoint_cuda(args, reinterpret_cast<void*>(stream)), "bicubic_up4_adjoint");
#endif
  } else {
    bicubic_up4_adjoint_cpu(args);
  }
  return out;
}

}  // namespace
}  // namespace mimicfast

PYBIND11_MODULE(_C, m) {
  m.doc() = "mimicfast compiled kernels: C++ (OpenMP) CPU kernels and, when built with nvcc, CUDA kernels";
  m.def("l1_residual", &mimicfast::l1_residual, "Fused guidance residual (see mimicfast.ops.l1_residual)",
        pybind11::arg("x0_hat"), pybind11::arg("y"), pybind11::arg("upsample"), pybind11::arg("weight"),
        pybind11::arg("long_weight"), pybind11::arg("short_weight"), pybind11::arg("stream") = 0);
  m.def("bicubic_up4", &mimicfast::bicubic_up4, "Bicubic x4 upsampling", pybind11::arg("x"),
        pybind11::arg("stream") = 0);
  m.def("bicubic_up4_adjoint", &mimicfast::bicubic_up4_adjoint, "Adjoint of bicubic x4 upsampling",
        pybind11::arg("g"), pybind11::arg("stream") = 0);
  m.attr("with_cuda") = mimicfast::kWithCuda;
#ifdef MIMICFAST_CUDA_ARCH
  m.attr("cuda_arch") = MIMICFAST_CUDA_ARCH;
#else
  m.attr("cuda_arch") = "";
#endif
}
