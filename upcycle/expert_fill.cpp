// Expert, router and shared-gate slab kernels (see expert_fill.h). The random values come from
// rng_stream's element-indexed streams; the element index is the flat row-major index in the
// output tensor, which is what makes slabs independent of each other.
#include "upcycle/expert_fill.h"

// GCC 12 flags the intrinsics' deliberately undefined pass-through operands (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"

namespace moekit::upcycle {

void block_sums(const float* x, int64_t n, int64_t b0, int64_t b1, double* sum, double* sq) {
  for (int64_t b = b0; b < b1; ++b) {
    double bs = 0, bq = 0;
    for (int64_t i = b * kStatsBlock; i < std::min(n, (b + 1) * kStatsBlock); ++i) {
      bs += x[i];
      bq += static_cast<double>(x[i]) * x[i];
    }
    sum[b] = bs;
    sq[b] = bq;
  }
}

TensorStats stats_of_blocks(const double* sum, const double* sq, int64_t n) {
  TensorStats s;
  if (n <= 0) return s;
  double total = 0, total_sq = 0;
  for (int64_t b = 0; b < (n + kStatsBlock - 1) / kStatsBlock; ++b) {
    total += sum[b];
    total_sq += sq[b];
  }
  s.mean = total / static_cast<double>(n);
  s.std = std::sqrt(std::max(0.0, total_sq / static_cast<double>(n) - s.mean * s.mean));
  return s;
}

TensorStats tensor_stats(const float* x, int64_t n) {
  const int64_t blocks = std::max<int64_t>(0, (n + kStatsBlock - 1) / kStatsBlock);
  std::vector<double> sum(static_cast<size_t>(blocks)), sq(static_cast<size_t>(blocks));
  block_sums(x, n, 0, blocks, sum.data(), sq.data());
  return stats_of_blocks(sum.data(), sq.data(), n);
}

namespace {

#define MOEKIT_AVX512 __attribute__((target("avx512f")))

inline __mmask16 lanes_upto(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
}

// In-register transpose of a 16x16 float tile: v[i] holds row i on entry, column i on exit.
// Pairs of rows interleave by 32 and 64 bits (each 128-bit lane then holds four rows of one
// column), and two rounds of 128-bit lane shuffles put the four lanes of each column together.
MOEKIT_AVX512 inline void transpose16(__m512* v) {
  __m512 t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // u[i + m], lane L: column 4L + m of rows i .. i+3
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    u[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 x0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x44), x1 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xEE);
    const __m512 y0 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x44);
    const __m512 y1 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xEE);
    v[m] = _mm512_shuffle_f32x4(x0, y0, 0x88);
    v[4 + m] = _mm512_shuffle_f32x4(x0, y0, 0xDD);
    v[8 + m] = _mm512_shuffle_f32x4(x1, y1, 0x88);
    v[12 + m] = _mm512_shuffle_f32x4(x1, y1, 0xDD);
  }
}

// A 16x16 tile: rows[i] (i < nr) are 16 floats each (missing rows read as zero); after the
// transpose, value k of every row goes to dst + (k - k0) * dst_stride for k in [k0, k1), as
// nr floats.
MOEKIT_AVX512 __attribute__((always_inline)) inline void tile16(const float* const* rows, int64_t nr, int64_t k0,
                                                                int64_t k1, float* dst, int64_t dst_stride) {
  __m512 v[16];
  for (int i = 0; i < 16; ++i) v[i] = i < nr ? _mm512_loadu_ps(rows[i]) : _mm512_setzero_ps();
  transpose16(v);
  const __mmask16 m = lanes_upto(nr);
  for (int64_t k = k0; k < k1; ++k) _mm512_mask_storeu_ps(dst + (k - k0) * dst_stride, m, v[k]);
}

MOEKIT_AVX512 void pack_down_panels_avx512(const float* down, int64_t hidden, int64_t dense, int64_t g0, int64_t g1,
                                           float* down_p) {
  // A panel is the transpose of a (16, D) block of rows: 16x16 tiles, each read as 16 row
  // segments (rows past the end read as zero) and stored as 16 panel lines.
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t h0 = g * kDownPanel, nh = std::min<int64_t>(kDownPanel, hidden - h0);
    float* panel = down_p + g * dense * kDownPanel;
    for (int64_t j = 0; j < dense; j += 16) {
      const int64_t nj = std::min<int64_t>(16, dense - j);
      const __mmask16 cm = lanes_upto(nj);
      __m512 v[16];
      for (int i = 0; i < 16; ++i)
        v[i] = i < nh ? _mm512_maskz_loadu_ps(cm, down + (h0 + i) * dense + j) : _mm512_setzero_ps();
      transpose16(v);
      for (int64_t k = 0; k < nj; ++k) _mm512_storeu_ps(panel + (j + k) * kDownPanel, v[k]);
    }
  }
}

MOEKIT_AVX512 void gather_down_avx512(float* out, const int32_t* src_index, int64_t width, const float* down_p,
                                      int64_t dense, int64_t r0, int64_t r1) {
  const float* p[16];
  for (int64_t g = r0 / kDownPanel; g * kDownPanel < r1; ++g) {
    const float* panel = down_p + g * dense * kDownPanel;
    const int64_t k0 = std::max<int64_t>(0, r0 - g * kDownPanel);
    const int64_t k1 = std::min<int64_t>(kDownPanel, r1 - g * kDownPanel);
    float* dst = out + (g * kDownPanel + k0 - r0) * width;
    for (int64_t j = 0; j < width; j += 16) {
      const int64_t nj = std::min<int64_t>(16, width - j);
      for (int64_t i = 0; i < nj; ++i) p[i] = panel + static_cast<int64_t>(src_index[j + i]) * kDownPanel;
      tile16(p, nj, k0, k1, dst + j, width);
    }
  }
}

// Asks for a dense row before it is needed: each expert row reads a different, random dense
// row, which the hardware prefetcher cannot guess.
inline void prefetch_row(const float* p, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(p + i);
}

// One down row (n = width columns) from its gathered dense values, by the spec's rule.
uint64_t mix_down_row(float* y, const float* src, int64_t n, uint64_t idx0, const ExpertTensorSpec& s, float* tmp) {
  if (s.neuron_reinit != nullptr) {
    // Neuron mode: the columns of re-initialised neurons.
    normal_elements(tmp, static_cast<size_t>(n), s.key, idx0, s.mean, s.std);
    uint64_t count = 0;
    for (int64_t i = 0; i < n; ++i) {
      const bool hit = s.neuron_reinit[i] != 0;
      y[i] = hit ? tmp[i] : src[i];
      count += hit;
    }
    return count;
  }
  return reinit_elements(y, src, static_cast<size_t>(n), s.key, idx0, s.threshold, s.mean, s.std);
}

}  // namespace

void pack_down_panels(const float* down, int64_t hidden, int64_t dense, int64_t g0, int64_t g1, float* down_p) {
  const int64_t panels = (hidden + kDownPanel - 1) / kDownPanel;
  MOEKIT_CHECK(0 <= g0 && g0 <= g1 && g1 <= panels, "pack_down_panels: panels [", g0, ", ", g1, ") outside ",
               panels);
  if (detail::avx512_kernels()) {
    pack_down_panels_avx512(down, hidden, dense, g0, g1, down_p);
    return;
  }
  for (int64_t g = g0; g < g1; ++g)
    for (int64_t j = 0; j < dense; ++j)
      for (int64_t k = 0; k < kDownPanel; ++k) {
        const int64_t h = g * kDownPanel + k;
        down_p[(g * dense + j) * kDownPanel + k] = h < hidden ? down[h * dense + j] : 0.f;
      }
}

void gather_down_rows(float* out, const int32_t* src_index, int64_t width, const float* down_p, int64_t dense,
                      int64_t hidden, int64_t r0, int64_t r1) {
  MOEKIT_CHECK(0 <= r0 && r0 <= r1 && r1 <= hidden, "gather_down_rows: rows [", r0, ", ", r1, ") outside ", hidden);
  if (detail::avx512_kernels()) {
    gather_down_avx512(out, src_index, width, down_p, dense, r0, r1);
    return;
  }
  for (int64_t h = r0; h < r1; ++h) {
    const float* panel = down_p + (h / kDownPanel) * dense * kDownPanel + h % kDownPanel;
    for (int64_t j = 0; j < width; ++j)
      out[(h - r0) * width + j] = panel[static_cast<int64_t>(src_index[j]) * kDownPanel];
  }
}

uint64_t fill_expert_rows(float* out, const ExpertTensorSpec& s, const DenseFfn& d, int64_t r0, int64_t r1,
                          float* scratch) {
  MOEKIT_CHECK(0 <= r0 && r0 <= r1 && r1 <= s.rows(), "fill_expert_rows: rows [", r0, ", ", r1, ") outside ",
               s.rows());
  MOEKIT_CHECK(s.hidden == d.hidden, "fill_expert_rows: hidden size ", s.hidden, " != dense ", d.hidden);
  const int64_t cols = s.cols();
  uint64_t count = 0;
  // Row h of down: column j is dense column src_index[j] (the neuron's output weights),
  // gathered for all the rows at once and then re-initialised in place.
  if (s.proj == Proj::kDown)
    gather_down_rows(out, s.src_index, s.width, d.down_p.data(), d.width, d.hidden, r0, r1);
  for (int64_t r = r0; r < r1; ++r) {
    float* y = out + (r - r0) * cols;
    const uint64_t idx0 = static_cast<uint64_t>(r) * static_cast<uint64_t>(cols);
    if (s.proj == Proj::kDown) {
      count += mix_down_row(y, y, cols, idx0, s, scratch);
    } else {
      // Row j of gate/up is the dense row of its neuron, whole.
      const std::vector<float>& w = s.proj == Proj::kGate ? d.gate : d.up;
      const float* src = w.data() + static_cast<int64_t>(s.src_index[r]) * d.hidden;
      if (r + 1 < r1) prefetch_row(w.data() + static_cast<int64_t>(s.src_index[r + 1]) * d.hidden, d.hidden);
      if (s.neuron_reinit != nullptr) {
        if (s.neuron_reinit[r]) {
          normal_elements(y, static_cast<size_t>(cols), s.key, idx0, s.mean, s.std);
          count += static_cast<uint64_t>(cols);
        } else {
          std::memcpy(y, src, static_cast<size_t>(cols) * sizeof(float));
        }
      } else {
        count += reinit_elements(y, src, static_cast<size_t>(cols), s.key, idx0, s.threshold, s.mean, s.std);
      }
    }
  }
  if (s.scale != 1.f) {
    const int64_t n = (r1 - r0) * cols;
    for (int64_t i = 0; i < n; ++i) out[i] *= s.scale;
  }
  return count;
}

void fill_router_rows(float* out, const PhiloxKey& key, int64_t hidden, int64_t r0, int64_t r1, bool zero,
                      float std, int64_t group) {
  MOEKIT_CHECK(group >= 1 && r0 <= r1, "fill_router_rows: bad group ", group, " or rows [", r0, ", ", r1, ")");
  for (int64_t r = r0; r < r1; ++r) {
    float* y = out + (r - r0) * hidden;
    if (zero) {
      std::fill(y, y + hidden, 0.f);
    } else {
      const uint64_t base = static_cast<uint64_t>(r / group) * static_cast<uint64_t>(hidden);
      normal_elements(y, static_cast<size_t>(hidden), key, base, 0.f, std);
    }
  }
}

}  // namespace moekit::upcycle
