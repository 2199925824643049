// Row primitives of the CPU kernels (csrc/cpu/*.cpp): the x4 bicubic stencil of csrc/common/up4.h applied
// one image row at a time, so that a plane is processed with O(row) scratch and the 16x larger upsampled
// tensor never exists. Arithmetic is in `Acc` (float, or double for double inputs).
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../common/launch.h"
#include "../common/up4.h"

namespace mimicfast::cpu {

// Calls f(In{}, Acc{}) with the storage and arithmetic types of `dtype`.
template <typename F>
void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(float{}, float{}); break;
    case DType::kFloat64: f(double{}, double{}); break;
    case DType::kFloat16: f(c10::Half{}, float{}); break;
    case DType::kBFloat16: f(c10::BFloat16{}, float{}); break;
  }
}

// The 4x4 bicubic weights w[phase][tap] in the arithmetic type.
template <typename Acc>
struct Up4Weights {
  Acc w[kUp][kTaps];
  Up4Weights() {
    for (int p = 0; p < kUp; ++p)
      for (int j = 0; j < kTaps; ++j) w[p][j] = up4_weight<Acc>(p, j);
  }
};

// Adjoint gather weights of a dimension of size n: row i holds R(4i - 6 + m, i), m = 0..15.
template <typename Acc>
std::vector<Acc> adjoint_table(int n) {
  std::vector<Acc> table(static_cast<size_t>(n) * kAdjWindow);
  for (int i = 0; i < n; ++i) up4_adjoint_window<Acc>(i, n, table.data() + static_cast<size_t>(i) * kAdjWindow);
  return table;
}

// dst[2 + c] = a[c] - b[c] for c in [-2, n + 2) with c clamped to [0, n): the row with the clamped border
// taps the bicubic stencil reads. Pass b = nullptr for dst = a.
template <typename In, typename Acc>
inline void load_row_padded(const In* a, int64_t sa, const In* b, int64_t sb, int n, Acc* dst) {
  for (int c = 0; c < n; ++c) {
    Acc v = static_cast<Acc>(a[c * sa]);
    if (b != nullptr) v -= static_cast<Acc>(b[c * sb]);
    dst[c + 2] = v;
  }
  dst[0] = dst[1] = dst[2];
  dst[n + 2] = dst[n + 3] = dst[n + 1];
}

// Horizontal x4 upsampling of one padded row (length n + 4, from load_row_padded) into out (length 4n).
// Output 4k + p reads padded taps k .. k + 3 (p = 0, 1) or k + 1 .. k + 4 (p = 2, 3).
template <typename Acc>
inline void up4_row(const Up4Weights<Acc>& wt, const Acc* __restrict__ src, int n, Acc* __restrict__ out) {
  for (int k = 0; k < n; ++k) {
    const Acc* s = src + k;
    for (int p = 0; p < kUp; ++p) {
      const Acc* t = s + (p < 2 ? 0 : 1);
      out[kUp * k + p] = wt.w[p][0] * t[0] + wt.w[p][1] * t[1] + wt.w[p][2] * t[2] + wt.w[p][3] * t[3];
    }
  }
}

// Vertical x4 step: high-res row o of the plane, from the horizontally upsampled low-res rows
// (row(i) returns the row of length len for low-res row i), out = sum_j w[o & 3][j] row(clamp(first + j)).
template <typename Acc, typename RowFn>
inline void up4_column_step(const Up4Weights<Acc>& wt, int o, int n_rows, int64_t len, RowFn&& row,
                            Acc* __restrict__ out) {
  const int first = up4_first_tap(o);
  const Acc* w = wt.w[o & 3];
  const Acc* __restrict__ r0 = row(clamp_index(first, n_rows));
  const Acc* __restrict__ r1 = row(clamp_index(first + 1, n_rows));
  const Acc* __restrict__ r2 = row(clamp_index(first + 2, n_rows));
  const Acc* __restrict__ r3 = row(clamp_index(first + 3, n_rows));
  for (int64_t q = 0; q < len; ++q) out[q] = w[0] * r0[q] + w[1] * r1[q] + w[2] * r2[q] + w[3] * r3[q];
}

// Horizontal adjoint of one high-res row: out[j] = sum_m table[j][m] s[4j + m], where s is the row
// shifted by kAdjOffset (s[6 + o] holds column o; the 6 leading and 10 trailing entries are zero).
template <typename Acc>
inline void up4_adjoint_row(const Acc* __restrict__ table, const Acc* __restrict__ s, int n, Acc* __restrict__ out) {
  for (int j = 0; j < n; ++j) {
    const Acc* w = table + static_cast<int64_t>(j) * kAdjWindow;
    const Acc* v = s + kUp * j;
    Acc acc = Acc(0);
    for (int m = 0; m < kAdjWindow; ++m) acc += w[m] * v[m];
    out[j] = acc;
  }
}

// Vertical adjoint: adds the contribution of high-res row o (t, length n, already reduced horizontally)
// to the low-res rows i whose gather window 4i - 6 .. 4i + 9 contains o.
template <typename Acc>
inline void up4_adjoint_column_step(const Acc* table, int n_rows, int o, const Acc* t, int n, Acc* acc) {
  const int i_lo = o <= 9 ? 0 : (o - 9 + 3) / kUp;
  const int i_hi = (o + kAdjOffset) / kUp < n_rows - 1 ? (o + kAdjOffset) / kUp : n_rows - 1;
  for (int i = i_lo; i <= i_hi; ++i) {
    const Acc w = table[static_cast<int64_t>(i) * kAdjWindow + (o - (kUp * i - kAdjOffset))];
    if (w == Acc(0)) continue;
    Acc* __restrict__ dst = acc + static_cast<int64_t>(i) * n;
    for (int j = 0; j < n; ++j) dst[j] += w * t[j];
  }
}

// Ring buffer of horizontally upsampled low-res rows, filled on demand. Consecutive high-res rows read
// a sliding window of 4 low-res rows, so 8 slots never evict a row that is still needed.
template <typename Acc>
class RowRing {
 public:
  explicit RowRing(int64_t len) : len_(len), data_(kSlots * len), tag_(kSlots, -1) {}

  void reset() { std::fill(tag_.begin(), tag_.end(), -1); }

  template <typename FillFn>
  const Acc* get(int row, FillFn&& fill) {
    const int slot = row & (kSlots - 1);
    Acc* ptr = data_.data() + slot * len_;
    if (tag_[slot] != row) {
      fill(row, ptr);
      tag_[slot] = row;
    }
    return ptr;
  }

 private:
  static constexpr int kSlots = 8;
  int64_t len_;
  std::vector<Acc> data_;
  std::vector<int> tag_;
};

// Runs body(plane, scratch) for every plane b * C + c in parallel (OpenMP, at most torch's thread count);
// each thread builds its scratch once with make_scratch(). Small calls stay on one thread: waking a team
// costs more than it saves below about kGrainPixels low-res pixels per thread.
template <typename MakeScratch, typename Body>
void for_each_plane(int64_t planes, int64_t plane_pixels, MakeScratch&& make_scratch, Body&& body) {
  constexpr int64_t kGrainPixels = 16384;
  const int64_t by_work = std::max<int64_t>(1, planes * plane_pixels / kGrainPixels);
  const int threads = static_cast<int>(std::min<int64_t>({int64_t{at::get_num_threads()}, planes, by_work}));
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    auto scratch = make_scratch();
#pragma omp for schedule(static)
    for (int64_t plane = 0; plane < planes; ++plane) body(plane, scratch);
  }
}

}  // namespace mimicfast::cpu
