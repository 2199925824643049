// Fused guidance residual on the CPU: r = weight_b * (long_weight sign(d) + short_weight H^T sign(H d)),
// d = x0_hat - y (docs/DESIGN.md §2). Each plane is swept once, high-res row by high-res row: H d is formed
// from a ring of horizontally upsampled rows of d, its sign reduced horizontally by the adjoint gather and
// accumulated into the (low-res) output rows. Only O(row) scratch per thread; H d never exists as a tensor.
#include <cstdint>
#include <vector>

#include "up4_rows.h"

namespace mimicfast {
namespace {

using cpu::RowRing;
using cpu::Up4Weights;

template <typename Acc>
struct Scratch {
  std::vector<Acc> padded;  // one padded low-res row of d (W + 4)
  RowRing<Acc> ring;        // horizontally upsampled rows of d (4W each)
  std::vector<Acc> s;       // sign(H d) of one high-res row, shifted by kAdjOffset (4W + 16)
  std::vector<Acc> t;       // its horizontal adjoint (W)
  explicit Scratch(int W) : padded(W + 4), ring(int64_t{kUp} * W), s(kUp * W + kAdjWindow, Acc(0)), t(W) {}
};

template <typename In, typename Acc>
void run(const L1ResidualArgs& a) {
  const int H = static_cast<int>(a.H), W = static_cast<int>(a.W);
  const auto* x = static_cast<const In*>(a.x0_hat.data);
  const auto* y = static_cast<const In*>(a.y.data);
  const auto* weight = static_cast<const Acc*>(a.weight);
  auto* out = static_cast<Acc*>(a.out);
  const int64_t* sx = a.x0_hat.stride;
  const int64_t* sy = a.y.stride;
  const Acc long_w = static_cast<Acc>(a.long_weight), short_w = static_cast<Acc>(a.short_weight);
  const bool bicubic = a.upsample == Upsample::kBicubic;
  // Nearest x4 replicates each pixel 16 times, so H^T sign(H d) = 16 sign(d) exactly.
  const Acc coef = a.upsample == Upsample::kNearest ? long_w + Acc(16) * short_w : long_w;
  const Up4Weights<Acc> wt;
  const std::vector<Acc> rx = bicubic ? cpu::adjoint_table<Acc>(W) : std::vector<Acc>();
  const std::vector<Acc> ry = bicubic ? cpu::adjoint_table<Acc>(H) : std::vector<Acc>();

  auto body = [&](int64_t plane, Scratch<Acc>& sc) {
    const int64_t b = plane / a.C, c = plane % a.C;
    const In* xp = x + b * sx[0] + c * sx[1];
    const In* yp = y + b * sy[0] + c * sy[1];
    Acc* rp = out + plane * H * W;
    const Acc w_b = weight != nullptr ? weight[b] : Acc(1);
    if (bicubic) {
      std::fill(rp, rp + int64_t{H} * W, Acc(0));
      sc.ring.reset();
      auto fill = [&](int i, Acc* dst) {
        cpu::load_row_padded<In, Acc>(xp + i * sx[2], sx[3], yp + i * sy[2], sy[3], W, sc.padded.data());
        cpu::up4_row<Acc>(wt, sc.padded.data(), W, dst);
      };
      auto row = [&](int i) { return sc.ring.get(i, fill); };
      Acc* hd = sc.s.data() + kAdjOffset;
      for (int o = 0; o < kUp * H; ++o) {
        cpu::up4_column_step<Acc>(wt, o, H, int64_t{kUp} * W, row, hd);
        for (int q = 0; q < kUp * W; ++q) hd[q] = sign_of(hd[q]);
        cpu::up4_adjoint_row<Acc>(rx.data(), sc.s.data(), W, sc.t.data());
        cpu::up4_adjoint_column_step<Acc>(ry.data(), H, o, sc.t.data(), W, rp);
      }
    }
    for (int i = 0; i < H; ++i) {
      const In* xr = xp + i * sx[2];
      const In* yr = yp + i * sy[2];
      Acc* rr = rp + int64_t{i} * W;
      for (int j = 0; j < W; ++j) {
        const Acc s = sign_of(static_cast<Acc>(xr[j * sx[3]]) - static_cast<Acc>(yr[j * sy[3]]));
        // Same operation order as the reference: (long + short) then the per-sample weight.
        const Acc r = bicubic ? long_w * s + short_w * rr[j] : coef * s;
        rr[j] = r * w_b;
      }
    }
  };
  cpu::for_each_plane(a.B * a.C, a.H * a.W, [&] { return Scratch<Acc>(W); }, body);
}

}  // namespace

void l1_residual_cpu(const L1ResidualArgs& args) {
  cpu::dispatch_dtype(args.x0_hat.dtype, [&](auto in, auto acc) { run<decltype(in), decltype(acc)>(args); });
}

}  // namespace mimicfast
