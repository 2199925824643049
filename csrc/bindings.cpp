// mimicfast._C: the torch-facing glue of the guidance-op kernels. One entry point per op and device
// (<op>_cpu, and <op>_cuda when built with MIMICFAST_WITH_CUDA): each allocates the output, fills the launcher
// struct of common/launch.h and runs its kernel. Choosing the device's kernel, validating inputs,
// torch.library registration and autograd live in Python (mimicfast/ops/); the entry points trust their
// inputs: 4-D float tensors of one shape, dtype and device, the upsample code a valid mode.
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
  return View4{t.data_ptr(), to_dtype(t), {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}};
}

#ifdef MIMICFAST_WITH_CUDA
constexpr bool kWithCuda = true;
#else
constexpr bool kWithCuda = false;
#endif

L1ResidualArgs l1_residual_args(const at::Tensor& x0_hat, const at::Tensor& y, int64_t upsample,
                                const std::optional<at::Tensor>& weight, double long_weight, double short_weight,
                                at::Tensor& out, at::Tensor& w) {
  const auto out_type = x0_hat.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  out = at::empty(x0_hat.sizes(), x0_hat.options().dtype(out_type));
  if (weight.has_value()) w = weight->to(out_type).contiguous();
  return L1ResidualArgs{x0_hat.size(0), x0_hat.size(1), x0_hat.size(2), x0_hat.size(3),
                        view_of(x0_hat), view_of(y), w.defined() ? w.data_ptr() : nullptr,
                        out.data_ptr(), to_dtype(out), static_cast<Upsample>(upsample),
                        long_weight, short_weight};
}

Up4Args up4_args(const at::Tensor& x, at::Tensor& out) {
  out = at::empty({x.size(0), x.size(1), 4 * x.size(2), 4 * x.size(3)}, x.options());
  return Up4Args{x.size(0), x.size(1), x.size(2), x.size(3), view_of(x), out.data_ptr()};
}

Up4Args up4_adjoint_args(const at::Tensor& g, at::Tensor& out) {
  out = at::empty({g.size(0), g.size(1), g.size(2) / 4, g.size(3) / 4}, g.options());
  return Up4Args{g.size(0), g.size(1), g.size(2) / 4, g.size(3) / 4, view_of(g), out.data_ptr()};
}

at::Tensor py_l1_residual_cpu(const at::Tensor& x0_hat, const at::Tensor& y, int64_t upsample,
                              const std::optional<at::Tensor>& weight, double long_weight, double short_weight) {
  at::Tensor out, w;
  const L1ResidualArgs args = l1_residual_args(x0_hat, y, upsample, weight, long_weight, short_weight, out, w);
  if (out.numel() > 0) l1_residual_cpu(args);
  return out;
}

at::Tensor py_bicubic_up4_cpu(const at::Tensor& x) {
  at::Tensor out;
  const Up4Args args = up4_args(x, out);
  if (out.numel() > 0) bicubic_up4_cpu(args);
  return out;
}

at::Tensor py_bicubic_up4_adjoint_cpu(const at::Tensor& g) {
  at::Tensor out;
  const Up4Args args = up4_adjoint_args(g, out);
  if (out.numel() > 0) bicubic_up4_adjoint_cpu(args);
  return out;
}

#ifdef MIMICFAST_WITH_CUDA
void check_launch(const char* error, const char* op) {
  TORCH_CHECK(error == nullptr, "mimicfast: CUDA launch of ", op, " failed: ", error == nullptr ? "" : error);
}

at::Tensor py_l1_residual_cuda(const at::Tensor& x0_hat, const at::Tensor& y, int64_t upsample,
                               const std::optional<at::Tensor>& weight, double long_weight, double short_weight,
                               int64_t stream) {
  at::Tensor out, w;
  const L1ResidualArgs args = l1_residual_args(x0_hat, y, upsample, weight, long_weight, short_weight, out, w);
  if (out.numel() > 0) check_launch(l1_residual_cuda(args, reinterpret_cast<void*>(stream)), "l1_residual");
  return out;
}

at::Tensor py_bicubic_up4_cuda(const at::Tensor& x, int64_t stream) {
  at::Tensor out;
  const Up4Args args = up4_args(x, out);
  if (out.numel() > 0) check_launch(bicubic_up4_cuda(args, reinterpret_cast<void*>(stream)), "bicubic_up4");
  return out;
}

at::Tensor py_bicubic_up4_adjoint_cuda(const at::Tensor& g, int64_t stream) {
  at::Tensor out;
  const Up4Args args = up4_adjoint_args(g, out);
  if (out.numel() > 0) {
    check_launch(bicubic_up4_adjoint_cuda(args, reinterpret_cast<void*>(stream)), "bicubic_up4_adjoint");
  }
  return out;
}
#endif

}  // namespace
}  // namespace mimicfast

PYBIND11_MODULE(_C, m) {
  namespace py = pybind11;
  using namespace mimicfast;
  m.doc() = "mimicfast compiled kernels: C++ (OpenMP) CPU kernels and, when built with nvcc, CUDA kernels";
  m.def("l1_residual_cpu", &py_l1_residual_cpu, "Fused guidance residual on CPU tensors (see mimicfast.ops.l1_residual)",
        py::arg("x0_hat"), py::arg("y"), py::arg("upsample"), py::arg("weight"), py::arg("long_weight"),
        py::arg("short_weight"));
  m.def("bicubic_up4_cpu", &py_bicubic_up4_cpu, "Bicubic x4 upsampling of a CPU tensor", py::arg("x"));
  m.def("bicubic_up4_adjoint_cpu", &py_bicubic_up4_adjoint_cpu, "Adjoint of bicubic x4 upsampling of a CPU tensor",
        py::arg("g"));
#ifdef MIMICFAST_WITH_CUDA
  m.def("l1_residual_cuda", &py_l1_residual_cuda, "Fused guidance residual on CUDA tensors, enqueued on `stream`",
        py::arg("x0_hat"), py::arg("y"), py::arg("upsample"), py::arg("weight"), py::arg("long_weight"),
        py::arg("short_weight"), py::arg("stream"));
  m.def("bicubic_up4_cuda", &py_bicubic_up4_cuda, "Bicubic x4 upsampling of a CUDA tensor, enqueued on `stream`",
        py::arg("x"), py::arg("stream"));
  m.def("bicubic_up4_adjoint_cuda", &py_bicubic_up4_adjoint_cuda,
        "Adjoint of bicubic x4 upsampling of a CUDA tensor, enqueued on `stream`", py::arg("g"), py::arg("stream"));
#endif
  // The upsample codes of common/launch.h, which must equal mimicfast.upsample_mode.UpsampleMode (tests compare).
  py::dict modes;
  modes["NONE"] = static_cast<int>(Upsample::kNone);
  modes["BICUBIC"] = static_cast<int>(Upsample::kBicubic);
  modes["NEAREST"] = static_cast<int>(Upsample::kNearest);
  m.attr("upsample_modes") = modes;
  m.attr("with_cuda") = kWithCuda;
#ifdef MIMICFAST_CUDA_ARCH
  m.attr("cuda_arch") = MIMICFAST_CUDA_ARCH;
#else
  m.attr("cuda_arch") = "";
#endif
}
