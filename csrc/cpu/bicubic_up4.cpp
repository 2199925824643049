// Bicubic x4 upsampling (F.interpolate, align_corners=False) and its adjoint on the CPU, row by row with
// the primitives of up4_rows.h; parallel over planes.
#include <cstdint>
#include <type_traits>
#include <vector>

#include "up4_rows.h"

namespace mimicfast {
namespace {

using cpu::RowRing;
using cpu::Up4Weights;

template <typename Acc>
struct UpScratch {
  std::vector<Acc> padded;  // one padded low-res row (W + 4)
  RowRing<Acc> ring;        // horizontally upsampled low-res rows (4W each)
  std::vector<Acc> row;     // one high-res output row (4W)
  explicit UpScratch(int W) : padded(W + 4), ring(int64_t{kUp} * W), row(kUp * W) {}
};

template <typename In, typename Acc>
void run_up(const Up4Args& a) {
  const int H = static_cast<int>(a.H), W = static_cast<int>(a.W);
  const auto* x = static_cast<const In*>(a.in.data);
  auto* out = static_cast<In*>(a.out);
  const int64_t* st = a.in.stride;
  const Up4Weights<Acc> wt;

  auto body = [&](int64_t plane, UpScratch<Acc>& sc) {
    const In* xp = x + (plane / a.C) * st[0] + (plane % a.C) * st[1];
    In* op = out + plane * (int64_t{kUp} * H) * (int64_t{kUp} * W);
    sc.ring.reset();
    auto fill = [&](int i, Acc* dst) {
      cpu::load_row_padded<In, Acc>(xp + i * st[2], st[3], static_cast<const In*>(nullptr), 0, W,
                                    sc.padded.data());
      cpu::up4_row<Acc>(wt, sc.padded.data(), W, dst);
    };
    auto row = [&](int i) { return sc.ring.get(i, fill); };
    for (int o = 0; o < kUp * H; ++o) {
      cpu::up4_column_step<Acc>(wt, o, H, int64_t{kUp} * W, row, sc.row.data());
      In* dst = op + int64_t{o} * kUp * W;
      for (int q = 0; q < kUp * W; ++q) dst[q] = static_cast<In>(sc.row[q]);
    }
  };
  cpu::for_each_plane(a.B * a.C, a.H * a.W, [&] { return UpScratch<Acc>(W); }, body);
}

template <typename Acc>
struct AdjScratch {
  std::vector<Acc> s;    // one high-res input row, shifted by kAdjOffset (4W + 16)
  std::vector<Acc> t;    // its horizontal adjoint (W)
  std::vector<Acc> acc;  // the low-res plane being accumulated, when the output type is not Acc
  AdjScratch(int H, int W, bool own_acc)
      : s(kUp * W + kAdjWindow, Acc(0)), t(W), acc(own_acc ? int64_t{H} * W : 0) {}
};

template <typename In, typename Acc>
void run_adjoint(const Up4Args& a) {
  constexpr bool kOwnAcc = !std::is_same_v<In, Acc>;
  const int H = static_cast<int>(a.H), W = static_cast<int>(a.W);
  const auto* g = static_cast<const In*>(a.in.data);
  auto* out = static_cast<In*>(a.out);
  const int64_t* st = a.in.stride;
  const std::vector<Acc> rx = cpu::adjoint_table<Acc>(W);
  const std::vector<Acc> ry = cpu::adjoint_table<Acc>(H);

  auto body = [&](int64_t plane, AdjScratch<Acc>& sc) {
    const In* gp = g + (plane / a.C) * st[0] + (plane % a.C) * st[1];
    In* op = out + plane * H * W;
    Acc* acc = nullptr;
    if constexpr (kOwnAcc) {
      acc = sc.acc.data();
    } else {
      acc = op;
    }
    std::fill(acc, acc + int64_t{H} * W, Acc(0));
    Acc* s = sc.s.data() + kAdjOffset;
    for (int o = 0; o < kUp * H; ++o) {
      const In* gr = gp + o * st[2];
      for (int q = 0; q < kUp * W; ++q) s[q] = static_cast<Acc>(gr[q * st[3]]);
      cpu::up4_adjoint_row<Acc>(rx.data(), sc.s.data(), W, sc.t.data());
      cpu::up4_adjoint_column_step<Acc>(ry.data(), H, o, sc.t.data(), W, acc);
    }
    if constexpr (kOwnAcc) {
      for (int64_t q = 0; q < int64_t{H} * W; ++q) op[q] = static_cast<In>(acc[q]);
    }
  };
  cpu::for_each_plane(a.B * a.C, a.H * a.W, [&] { return AdjScratch<Acc>(H, W, kOwnAcc); }, body);
}

}  // namespace

void bicubic_up4_cpu(const Up4Args& args) {
  cpu::dispatch_dtype(args.in.dtype, [&](auto in, auto acc) { run_up<decltype(in), decltype(acc)>(args); });
}

void bicubic_up4_adjoint_cpu(const Up4Args& args) {
  cpu::dispatch_dtype(args.in.dtype, [&](auto in, auto acc) { run_adjoint<decltype(in), decltype(acc)>(args); });
}

}  // namespace mimicfast
