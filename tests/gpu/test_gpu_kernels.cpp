// Every CUDA op against its CPU twin on random inputs, in f32 (tight tolerances: the same math in
// the same precision, only the summation order differs) and, for the activation-typed ops, in
// bf16 (inputs rounded to bf16 for the CPU reference too; tolerance 2e-2 relative to the largest
// element). Outputs are poisoned with NaN before each run, so an element a kernel fails to write
// fails the comparison. Skips without CUDA or without a device.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "gpu_test_util.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/matmul.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "moe/dispatch.h"
#include "moe/router.h"
#include "optim/adamw_math.h"

#ifdef MOEKIT_WITH_CUDA
#include "kernels/attention_cuda.h"
#include "kernels/gemm_cuda.h"
#include "kernels/kernels_cuda.h"
#include "moe/moe_cuda.h"
#include "optim/adamw_cuda.h"
#endif

namespace moekit {
namespace {

#ifdef MOEKIT_WITH_CUDA
using cuda::bf16;
using cuda::DeviceArray;
using test::poisoned;
using test::rounded;
using test::strict_rel_err;
using test::to_device;
using test::to_host;
using test::tol;

template <typename T>
class GpuActOp : public ::testing::Test {};
using ActTypes = ::testing::Types<float, bf16>;
TYPED_TEST_SUITE(GpuActOp, ActTypes);

TYPED_TEST(GpuActOp, RmsNormForwardBackward) {
  MOEKIT_REQUIRE_GPU();
  using T = TypeParam;
  cuda::Context ctx;
  const int64_t R = 77, D = 1000;  // rows span several backward blocks of 32
  const auto x = rounded<T>(test::randn(R * D, 1, "x")), dy = rounded<T>(test::randn(R * D, 2, "dy"));
  const auto w = test::randn(D, 3, "w", 0.1f, 1.f);
  std::vector<float> y(R * D), r(R), dx(R * D), dw(D, 0.5f);
  kernels::rmsnorm_forward(y.data(), r.data(), x.data(), w.data(), R, D, 1e-6f);
  kernels::rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), r.data(), R, D, false);
  auto d_x = to_device<T>(x), d_dy = to_device<T>(dy), d_y = poisoned<T>(R * D), d_dx = poisoned<T>(R * D);
  DeviceArray<float> d_w(w), d_r = poisoned<float>(R), d_dw(std::vector<float>(D, 0.5f));
  kernels::rmsnorm_forward_cuda<T>(ctx, d_y.data(), d_r.data(), d_x.data(), d_w.data(), R, D, 1e-6f);
  kernels::rmsnorm_backward_cuda<T>(ctx, d_dx.data(), d_dw.data(), d_dy.data(), d_x.data(), d_w.data(), d_r.data(), R,
                                    D, false);
  ctx.synchronize();
  EXPECT_LT(strict_rel_err(to_host(d_y), y), tol<T>(1e-6));
  EXPECT_LT(strict_rel_err(d_r.download(), r), 1e-6);
  EXPECT_LT(strict_rel_err(to_host(d_dx), dx), tol<T>(1e-5));
  EXPECT_LT(strict_rel_err(d_dw.download(), dw), 1e-5);  // f32 accumulation whatever T
}

TYPED_TEST(GpuActOp, SwiGluForwardBackward) {
  MOEKIT_REQUIRE_GPU();
  using T = TypeParam;
  cuda::Context ctx;
  const int64_t R = 19, W = 333;
  const auto gu = rounded<T>(test::randn(R * 2 * W, 2, "gu")), dh = rounded<T>(test::randn(R * W, 3, "dh"));
  std::vector<float> h(R * W), dgu(R * 2 * W);
  kernels::swiglu_forward(h.data(), gu.data(), R, W);
  kernels::swiglu_backward(dgu.data(), dh.data(), gu.data(), R, W);
  auto d_gu = to_device<T>(gu), d_dh = to_device<T>(dh), d_h = poisoned<T>(R * W), d_dgu = poisoned<T>(R * 2 * W);
  kernels::swiglu_forward_cuda<T>(ctx, d_h.data(), d_gu.data(), R, W);
  kernels::swiglu_backward_cuda<T>(ctx, d_dgu.data(), d_dh.data(), d_gu.data(), R, W);
  ctx.synchronize();
  EXPECT_LT(strict_rel_err(to_host(d_h), h), tol<T>(1e-6));
  EXPECT_LT(strict_rel_err(to_host(d_dgu), dgu), tol<T>(1e-6));
}

TYPED_TEST(GpuActOp, RopeForwardAndInverse) {
  MOEKIT_REQUIRE_GPU();
  using T = TypeParam;
  cuda::Context ctx;
  const int64_t B = 2, S = 37, Hh = 3, d = 64;
  std::vector<float> cos, sin;
  kernels::rope_tables(&cos, &sin, S, d, 1e6);
  const auto x = rounded<T>(test::randn(B * S * Hh * d, 4, "x"));
  DeviceArray<float> d_cos(cos), d_sin(sin);
  for (bool inverse : {false, true}) {
    std::vector<float> want = x;
    kernels::rope_apply(want.data(), cos.data(), sin.data(), B, S, Hh, d, inverse);
    auto d_x = to_device<T>(x);
    kernels::rope_apply_cuda<T>(ctx, d_x.data(), d_cos.data(), d_sin.data(), B, S, Hh, d, inverse);
    ctx.synchronize();
    EXPECT_LT(strict_rel_err(to_host(d_x), want), tol<T>(1e-6)) << (inverse ? "inverse" : "forward");
  }
}

TYPED_TEST(GpuActOp, CrossEntropyLossAndGradientInPlace) {
  MOEKIT_REQUIRE_GPU();
  using T = TypeParam;
  cuda::Context ctx;
  const int64_t R = 9, V = 5000;
  const auto z = rounded<T>(test::randn(R * V, 5, "z", 3.f));
  std::vector<int64_t> tg(R);
  for (int64_t t = 0; t < R; ++t) tg[t] = (t * 977) % V;
  tg[4] = -1;  // not counted: zero loss and zero gradient
  std::vector<float> dz(R * V);
  const double loss = kernels::cross_entropy(dz.data(), z.data(), tg.data(), R, V, 0.125f);
  auto d_z = to_device<T>(z);
  DeviceArray<int64_t> d_tg(tg);
  DeviceArray<float> d_loss = poisoned<float>(R);
  kernels::cross_entropy_cuda<T>(ctx, d_loss.data(), d_z.data(), d_z.data(), d_tg.data(), R, V, 0.125f);
  ctx.synchronize();
  const auto rows = d_loss.download();
  EXPECT_EQ(rows[4], 0.f);
  EXPECT_NEAR(std::accumulate(rows.begin(), rows.end(), 0.0), loss, 1e-5 * loss);
  EXPECT_LT(strict_rel_err(to_host(d_z), dz), tol<T>(1e-5));
}

TYPED_TEST(GpuActOp, EmbeddingGatherAndScatter) {
  MOEKIT_REQUIRE_GPU();
  using T = TypeParam;
  cuda::Context ctx;
  const int64_t V = 50, H = 96, N = 40;
  const auto table = test::randn(V * H, 6, "table");
  const auto dx = rounded<T>(test::randn(N * H, 7, "dx"));
  std::vector<int64_t> ids(N);
  for (int64_t t = 0; t < N; ++t) ids[t] = (t * 7) % 13;  // repeated ids accumulate
  std::vector<float> x(N * H), dtable(V * H, 0.25f);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t i = 0; i < H; ++i) {
      x[t * H + i] = rounded<T>({table[ids[t] * H + i]})[0];
      dtable[ids[t] * H + i] += dx[t * H + i];
    }
  DeviceArray<float> d_table(table), d_dtable(std::vector<float>(V * H, 0.25f));
  DeviceArray<int64_t> d_ids(ids);
  auto d_x = poisoned<T>(N * H);
  auto d_dx = to_device<T>(dx);
  kernels::embedding_forward_cuda<T>(ctx, d_x.data(), d_table.data(), d_ids.data(), N, H);
  kernels::embedding_backward_cuda<T>(ctx, d_dtable.data(), d_dx.data(), d_ids.data(), N, H);
  ctx.synchronize();
  EXPECT_EQ(strict_rel_err(to_host(d_x), x), 0.0);
  EXPECT_LT(strict_rel_err(d_dtable.download(), dtable), 1e-6);
}

TYPED_TEST(GpuActOp, AddBiasAndBiasGradient) {
  MOEKIT_REQUIRE_GPU();
  using T = TypeParam;
  cuda::Context ctx;
  const int64_t R = 600, C = 70;  // rows span three partial sums
  const auto y = rounded<T>(test::randn(R * C, 8, "y")), b = test::randn(C, 9, "b");
  std::vector<float> want(R * C), db(C, 1.f);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) {
      want[r * C + c] = y[r * C + c] + b[c];
      db[c] += y[r * C + c];
    }
  auto d_y = to_device<T>(y);
  DeviceArray<float> d_b(b), d_db(std::vector<float>(C, 1.f));
  kernels::bias_grad_cuda<T>(ctx, d_db.data(), d_y.data(), R, C);
  kernels::add_bias_cuda<T>(ctx, d_y.data(), d_b.data(), R, C);
  ctx.synchronize();
  EXPECT_LT(strict_rel_err(to_host(d_y), want), tol<T>(1e-6));
  EXPECT_LT(strict_rel_err(d_db.download(), db), 1e-5);
}

TYPED_TEST(GpuActOp, SigmoidGateForwardBackward) {
  MOEKIT_REQUIRE_GPU();
  using T = TypeParam;
  cuda::Context ctx;
  const int64_t N = 13, H = 300;
  const auto y0 = rounded<T>(test::randn(N * H, 10, "y")), s = rounded<T>(test::randn(N * H, 11, "s"));
  const auto dy = rounded<T>(test::randn(N * H, 12, "dy")), a = test::randn(N, 13, "a");
  std::vector<float> y = y0, g(N), ds(N * H), da(N);
  for (int64_t t = 0; t < N; ++t) {
    g[t] = 1.f / (1.f + std::exp(-a[t]));
    float dot = 0.f;
    for (int64_t i = 0; i < H; ++i) {
      y[t * H + i] += g[t] * s[t * H + i];
      dot += dy[t * H + i] * s[t * H + i];
      ds[t * H + i] = g[t] * dy[t * H + i];
    }
    da[t] = dot * g[t] * (1.f - g[t]);
  }
  auto d_y = to_device<T>(y0), d_s = to_device<T>(s), d_dy = to_device<T>(dy);
  auto d_ds = poisoned<T>(N * H), d_da = poisoned<T>(N);
  DeviceArray<float> d_gate(a);
  kernels::sigmoid_gate_forward_cuda<T>(ctx, d_y.data(), d_gate.data(), d_s.data(), N, H);
  kernels::sigmoid_gate_backward_cuda<T>(ctx, d_ds.data(), d_da.data(), d_dy.data(), d_s.data(), d_gate.data(), N, H);
  ctx.synchronize();
  EXPECT_LT(strict_rel_err(d_gate.download(), g), 1e-6);
  EXPECT_LT(strict_rel_err(to_host(d_y), y), tol<T>(1e-6));
  EXPECT_LT(strict_rel_err(to_host(d_ds), ds), tol<T>(1e-6));
  EXPECT_LT(strict_rel_err(to_host(d_da), da), tol<T>(1e-5));
}

TEST(GpuOp, CastsRoundLikeTheCpuAndSumsInFixedOrder) {
  MOEKIT_REQUIRE_GPU();
  cuda::Context ctx;
  const int64_t n = 100003;
  auto x = test::randn(n, 14, "x", 10.f);
  x[0] = NAN;
  x[1] = INFINITY;
  x[2] = 1.00390625f;  // a tie: rounds to even
  DeviceArray<float> d_x(x), d_back = poisoned<float>(n);
  DeviceArray<bf16> d_b = poisoned<bf16>(n);
  kernels::f32_to_bf16_cuda(ctx, d_b.data(), d_x.data(), n);
  kernels::bf16_to_f32_cuda(ctx, d_back.data(), d_b.data(), n);
  DeviceArray<double> d_s(2);
  kernels::sum_squares_cuda(ctx, d_s.data(), d_x.data() + 3, n - 3);
  kernels::sum_cuda(ctx, d_s.data() + 1, d_x.data() + 3, n - 3);
  ctx.synchronize();
  const auto b = d_b.download();
  int64_t mismatched = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint16_t got;
    std::memcpy(&got, &b[i], 2);
    mismatched += got != f32_to_bf16(x[i]);
  }
  EXPECT_EQ(mismatched, 0);
  const auto back = d_back.download();
  EXPECT_TRUE(std::isnan(back[0]));
  EXPECT_EQ(back[1], INFINITY);
  double sq = 0, sum = 0;
  for (int64_t i = 3; i < n; ++i) sq += static_cast<double>(x[i]) * x[i], sum += x[i];
  const auto s = d_s.download();
  EXPECT_NEAR(s[0], sq, 1e-12 * sq);
  EXPECT_NEAR(s[1], sum, 1e-9 * std::fabs(sq));
  // Fixed order: the same input gives the same bits again.
  kernels::sum_squares_cuda(ctx, d_s.data() + 1, d_x.data() + 3, n - 3);
  ctx.synchronize();
  EXPECT_EQ(d_s.download()[1], s[0]);
}

// ---- GEMMs ----

struct GemmCase {
  kernels::GemmOp op;
  int64_t m, n, k;
};

std::vector<float> cpu_gemm(kernels::GemmOp op, const std::vector<float>& a, const std::vector<float>& b,
                            std::vector<float> c, int64_t m, int64_t n, int64_t k, float beta) {
  switch (op) {
    case kernels::GemmOp::kNT: kernels::matmul_nt(c.data(), a.data(), b.data(), m, n, k, beta); break;
    case kernels::GemmOp::kNN: kernels::matmul_nn(c.data(), a.data(), b.data(), m, n, k, beta); break;
    case kernels::GemmOp::kTN: kernels::matmul_tn(c.data(), a.data(), b.data(), m, n, k, beta); break;
  }
  return c;
}

TEST(GpuOp, GemmFormsMatchTheCpuInF32AndBf16) {
  MOEKIT_REQUIRE_GPU();
  cuda::Context ctx;
  for (const GemmCase& gc : {GemmCase{kernels::GemmOp::kNT, 67, 45, 129}, GemmCase{kernels::GemmOp::kNN, 33, 71, 40},
                             GemmCase{kernels::GemmOp::kTN, 50, 38, 91}}) {
    const int64_t M = gc.m, N = gc.n, K = gc.k;
    auto a = test::randn(M * K, 15, "a"), b = test::randn(N * K, 16, "b"), c0 = test::randn(M * N, 17, "c");
    for (DType ab : {DType::kF32, DType::kBF16}) {
      const auto ar = ab == DType::kF32 ? a : rounded<bf16>(a), br = ab == DType::kF32 ? b : rounded<bf16>(b);
      const auto want = cpu_gemm(gc.op, ar, br, c0, M, N, K, 0.5f);
      kernels::GemmArgs g{gc.op, M, N, K, ab, DType::kF32, 1.f, 0.5f};
      DeviceArray<float> d_c(c0);
      if (ab == DType::kF32) {
        DeviceArray<float> d_a(a), d_b(b);
        kernels::gemm_cuda(ctx, g, d_c.data(), d_a.data(), d_b.data());
      } else {
        auto d_a = to_device<bf16>(a), d_b = to_device<bf16>(b);
        kernels::gemm_cuda(ctx, g, d_c.data(), d_a.data(), d_b.data());
      }
      ctx.synchronize();
      EXPECT_LT(strict_rel_err(d_c.download(), want), 1e-5) << "op " << static_cast<int>(gc.op) << " "
                                                             << dtype_name(ab);
    }
  }
}

TEST(GpuOp, GemmHonoursRowStrides) {
  MOEKIT_REQUIRE_GPU();
  cuda::Context ctx;
  // C[:, 0:8] of a (20, 24) buffer = A[:, 4:20] of a (20, 32) buffer times B^T: a head inside
  // interleaved rows, as attention projections address it.
  const int64_t M = 20, N = 8, K = 16, lda = 32, ldc = 24;
  const auto a = test::randn(M * lda, 18, "a"), b = test::randn(N * K, 19, "b");
  std::vector<float> a_sub(M * K), want(M * ldc, 7.f);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < K; ++j) a_sub[i * K + j] = a[i * lda + 4 + j];
  std::vector<float> c(M * N);
  kernels::matmul_nt(c.data(), a_sub.data(), b.data(), M, N, K);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) want[i * ldc + j] = c[i * N + j];
  DeviceArray<float> d_a(a), d_b(b), d_c(std::vector<float>(M * ldc, 7.f));
  kernels::GemmArgs g{kernels::GemmOp::kNT, M, N, K, DType::kF32, DType::kF32, 1.f, 0.f, lda, 0, ldc};
  kernels::gemm_cuda(ctx, g, d_c.data(), d_a.data() + 4, d_b.data());
  ctx.synchronize();
  EXPECT_LT(strict_rel_err(d_c.download(), want), 1e-6);  // columns 8..23 untouched (still 7)
}

TEST(GpuOp, GroupedExpertGemmsMatchPerExpertProducts) {
  MOEKIT_REQUIRE_GPU();
  cuda::Context ctx;
  const std::vector<int64_t> rows = {5, 0, 17, 1, 0, 9};  // experts without rows are skipped
  const int64_t E = 6, H = 24, I = 40, R = 32;
  const auto x = test::randn(R * H, 20, "x"), w = test::randn(E * I * H, 21, "w"), dy = test::randn(R * I, 22, "dy");
  std::vector<float> y(R * I), dx(R * H), dw(E * I * H, 0.5f);
  int64_t r0 = 0;
  for (int64_t e = 0; e < E; ++e) {
    if (rows[e] > 0) {
      kernels::matmul_nt(y.data() + r0 * I, x.data() + r0 * H, w.data() + e * I * H, rows[e], I, H);
      kernels::matmul_nn(dx.data() + r0 * H, dy.data() + r0 * I, w.data() + e * I * H, rows[e], H, I);
      kernels::matmul_tn(dw.data() + e * I * H, dy.data() + r0 * I, x.data() + r0 * H, I, H, rows[e], 1.f);
    }
    r0 += rows[e];
  }
  DeviceArray<float> d_x(x), d_w(w), d_dy(dy), d_y = poisoned<float>(R * I), d_dx = poisoned<float>(R * H);
  DeviceArray<float> d_dw(std::vector<float>(E * I * H, 0.5f));
  kernels::GroupedGemm scratch;
  kernels::grouped_gemm_cuda(ctx, &scratch, kernels::GemmOp::kNT, DType::kF32, rows.data(), E, I, H, d_y.data(),
                             d_x.data(), d_w.data(), I * H);
  kernels::grouped_gemm_cuda(ctx, &scratch, kernels::GemmOp::kNN, DType::kF32, rows.data(), E, H, I, d_dx.data(),
                             d_dy.data(), d_w.data(), I * H);
  kernels::grouped_weight_grad_cuda(ctx, DType::kF32, rows.data(), E, I, H, d_dw.data(), I * H, d_dy.data(),
                                    d_x.data());
  ctx.synchronize();
  EXPECT_LT(strict_rel_err(d_y.download(), y), 1e-5);
  EXPECT_LT(strict_rel_err(d_dx.download(), dx), 1e-5);
  EXPECT_LT(strict_rel_err(d_dw.download(), dw), 1e-5);
}

// ---- attention ----

struct AttnCase {
  int64_t batch, seq, heads, kv_heads, head_dim;
};

template <typename T>
void check_attention(const AttnCase& c, kernels::AttnImpl impl) {
  cuda::Context ctx;
  const kernels::AttnShape s{c.batch, c.seq, c.heads, c.kv_heads, c.head_dim};
  const int64_t T_ = c.batch * c.seq, qd = c.heads * c.head_dim, kvd = c.kv_heads * c.head_dim;
  const auto q = rounded<T>(test::randn(T_ * qd, 23, "q")), k = rounded<T>(test::randn(T_ * kvd, 24, "k"));
  const auto v = rounded<T>(test::randn(T_ * kvd, 25, "v")), dout = rounded<T>(test::randn(T_ * qd, 26, "do"));
  std::vector<float> out(T_ * qd), probs(c.batch * c.heads * c.seq * c.seq), dq(T_ * qd), dk(T_ * kvd), dv(T_ * kvd);
  kernels::attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), s);
  kernels::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), probs.data(), q.data(), k.data(), v.data(),
                              s);
  auto d_q = to_device<T>(q), d_k = to_device<T>(k), d_v = to_device<T>(v), d_do = to_device<T>(dout);
  auto d_out = poisoned<T>(T_ * qd), d_dq = poisoned<T>(T_ * qd), d_dk = poisoned<T>(T_ * kvd),
       d_dv = poisoned<T>(T_ * kvd);
  DeviceArray<float> d_lse = poisoned<float>(c.batch * c.heads * c.seq), d_delta(c.batch * c.heads * c.seq);
  kernels::AttnWorkspace ws;
  kernels::attention_forward_cuda<T>(ctx, d_out.data(), d_lse.data(), d_q.data(), d_k.data(), d_v.data(), s, impl,
                                     &ws);
  kernels::attention_backward_cuda<T>(ctx, d_dq.data(), d_dk.data(), d_dv.data(), d_delta.data(), d_do.data(),
                                      d_out.data(), d_lse.data(), d_q.data(), d_k.data(), d_v.data(), s, impl, &ws);
  ctx.synchronize();
  const std::string what = std::string(impl == kernels::AttnImpl::kGemm ? "gemm" : "plain") + " seq " +
                           std::to_string(c.seq) + " heads " + std::to_string(c.heads) + "/" +
                           std::to_string(c.kv_heads) + " d " + std::to_string(c.head_dim);
  EXPECT_LT(strict_rel_err(to_host(d_out), out), tol<T>(2e-5)) << what;
  EXPECT_LT(strict_rel_err(to_host(d_dq), dq), tol<T>(1e-4)) << what;
  EXPECT_LT(strict_rel_err(to_host(d_dk), dk), tol<T>(1e-4)) << what;
  EXPECT_LT(strict_rel_err(to_host(d_dv), dv), tol<T>(1e-4)) << what;
}

TYPED_TEST(GpuActOp, AttentionMatchesCpuForMhaAndGqa) {
  MOEKIT_REQUIRE_GPU();
  for (kernels::AttnImpl impl : {kernels::AttnImpl::kPlain, kernels::AttnImpl::kGemm}) {
    check_attention<TypeParam>({2, 37, 4, 4, 16}, impl);    // MHA, head_dim below a warp
    check_attention<TypeParam>({1, 130, 8, 2, 128}, impl);  // GQA 4:1, Qwen's head_dim
    check_attention<TypeParam>({2, 20, 4, 1, 80}, impl);    // MQA, head_dim not a multiple of 32
  }
}

// ---- MoE: router and dispatch ----

TEST(GpuOp, RouterForwardBackwardMatchesCpu) {
  MOEKIT_REQUIRE_GPU();
  cuda::Context ctx;
  const int64_t N = 300, E = 60, k = 4, H = 8;
  for (bool norm : {false, true}) {
    // The CPU router computes its logits from x; the device kernel takes logits, so feed it the
    // CPU's logits.
    const auto x = test::randn(N * H, 27, "x"), wr = test::randn(E * H, 28, "wr");
    moe::RouterState r;
    moe::router_forward(&r, x.data(), wr.data(), N, H, E, k, norm);
    const auto dw = test::randn(N * k, 29, "dw"), dprob = test::randn(E, 30, "dprob", 0.01f);
    std::vector<float> dz(N * E);
    moe::router_backward(dz.data(), r, dw.data(), dprob.data(), 0.003f);
    DeviceArray<float> d_logits(r.logits), d_probs = poisoned<float>(N * E), d_lse = poisoned<float>(N);
    DeviceArray<float> d_w = poisoned<float>(N * k), d_dw(dw), d_dprob(dprob), d_dz = poisoned<float>(N * E);
    DeviceArray<int32_t> d_idx(N * k);
    moe::router_forward_cuda(ctx, d_probs.data(), d_lse.data(), d_idx.data(), d_w.data(), d_logits.data(), N, E, k,
                             norm);
    moe::router_backward_cuda<float>(ctx, d_dz.data(), d_probs.data(), d_lse.data(), d_idx.data(), d_w.data(),
                                     d_dw.data(), d_dprob.data(), 0.003f, N, E, k, norm);
    ctx.synchronize();
    EXPECT_EQ(d_idx.download(), r.idx) << "norm_topk " << norm;
    EXPECT_LT(strict_rel_err(d_probs.download(), r.probs), 1e-6);
    EXPECT_LT(strict_rel_err(d_lse.download(), r.lse), 1e-6);
    EXPECT_LT(strict_rel_err(d_w.download(), r.weights), 1e-6);
    EXPECT_LT(strict_rel_err(d_dz.download(), dz), 1e-5);
  }
}

TYPED_TEST(GpuActOp, DispatchPlanPermuteAndCombineMatchCpu) {
  MOEKIT_REQUIRE_GPU();
  using T = TypeParam;
  cuda::Context ctx;
  const int64_t N = 333, k = 4, E = 16, H = 40;
  std::vector<int32_t> idx(N * k);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t j = 0; j < k; ++j) idx[t * k + j] = static_cast<int32_t>((t * 5 + j * 3 + (t % 7 == 0)) % (E - 2));
  // experts E-2 and E-1 receive nothing
  const moe::DispatchPlan plan = moe::make_dispatch_plan(idx.data(), N, k, E);
  DeviceArray<int32_t> d_idx(idx), d_counts(E), d_offsets(E + 1), d_row(N * k), d_tok(N * k);
  moe::dispatch_plan_cuda(ctx, d_counts.data(), d_offsets.data(), d_row.data(), d_tok.data(), d_idx.data(), N, k, E);
  ctx.synchronize();
  const auto counts = d_counts.download(), offsets = d_offsets.download();
  for (int64_t e = 0; e < E; ++e) {
    EXPECT_EQ(counts[e], plan.counts[e]) << e;
    EXPECT_EQ(offsets[e + 1], plan.offsets[e + 1]) << e;
  }
  EXPECT_EQ(d_row.download(), plan.row_of);
  EXPECT_EQ(d_tok.download(), plan.token_of);

  const auto x = rounded<T>(test::randn(N * H, 31, "x")), yp = rounded<T>(test::randn(N * k * H, 32, "yp"));
  const auto w = test::randn(N * k, 33, "w"), dout = rounded<T>(test::randn(N * H, 34, "dout"));
  const auto dxp = rounded<T>(test::randn(N * k * H, 35, "dxp"));
  std::vector<float> xp(N * k * H), out(N * H), dyp(N * k * H), dwt(N * k), dx(N * H);
  moe::dispatch_rows(xp.data(), x.data(), plan, H);
  moe::combine_rows(out.data(), 0.f, yp.data(), w.data(), plan, H);
  moe::combine_rows_backward(dyp.data(), dwt.data(), dout.data(), yp.data(), w.data(), plan, H);
  moe::dispatch_rows_backward(dx.data(), 0.f, dxp.data(), plan, H);
  auto d_x = to_device<T>(x), d_yp = to_device<T>(yp), d_dout = to_device<T>(dout), d_dxp = to_device<T>(dxp);
  DeviceArray<float> d_w(w), d_dwt = poisoned<float>(N * k);
  auto d_xp = poisoned<T>(N * k * H), d_out = poisoned<T>(N * H), d_dyp = poisoned<T>(N * k * H),
       d_dx = poisoned<T>(N * H);
  moe::dispatch_rows_cuda<T>(ctx, d_xp.data(), d_x.data(), d_tok.data(), N * k, H);
  moe::combine_rows_cuda<T>(ctx, d_out.data(), 0.f, d_yp.data(), d_w.data(), d_row.data(), N, k, H);
  moe::combine_rows_backward_cuda<T>(ctx, d_dyp.data(), d_dwt.data(), d_dout.data(), d_yp.data(), d_w.data(),
                                     d_row.data(), N, k, H);
  moe::dispatch_rows_backward_cuda<T>(ctx, d_dx.data(), 0.f, d_dxp.data(), d_row.data(), N, k, H);
  ctx.synchronize();
  EXPECT_EQ(strict_rel_err(to_host(d_xp), xp), 0.0);
  EXPECT_LT(strict_rel_err(to_host(d_out), out), tol<T>(1e-6));
  EXPECT_LT(strict_rel_err(to_host(d_dyp), dyp), tol<T>(1e-6));
  EXPECT_LT(strict_rel_err(d_dwt.download(), dwt), tol<T>(1e-5));
  EXPECT_LT(strict_rel_err(to_host(d_dx), dx), tol<T>(1e-6));
}

// ---- optimizer ----

TEST(GpuOp, AdamWStepMatchesTheCpuUpdate) {
  MOEKIT_REQUIRE_GPU();
  cuda::Context ctx;
  const int64_t n = 5000;
  auto p = test::randn(n, 36, "p"), g = test::randn(n, 37, "g", 0.1f);
  auto m = test::randn(n, 38, "m", 0.01f), v = test::randn(n, 39, "v", 0.001f);
  for (auto& x : v) x = std::fabs(x);
  optim::OptimConfig cfg;
  const optim::AdamWScalars s = optim::adamw_scalars(cfg, 1e-3, 7, true);
  DeviceArray<float> d_p(p), d_m(m), d_v(v), d_g(g);
  DeviceArray<bf16> d_w = poisoned<bf16>(n);
  optim::adamw_step_cuda(ctx, d_p.data(), d_m.data(), d_v.data(), d_g.data(), d_w.data(), n, s);
  for (int64_t i = 0; i < n; ++i) optim::adamw_element(&p[i], &m[i], &v[i], g[i], s);
  ctx.synchronize();
  EXPECT_LT(strict_rel_err(d_p.download(), p), 1e-6);  // an FMA here and there: an ulp
  EXPECT_LT(strict_rel_err(d_m.download(), m), 1e-6);
  EXPECT_LT(strict_rel_err(d_v.download(), v), 1e-6);
  EXPECT_LT(strict_rel_err(to_host(d_w), rounded<bf16>(p)), 1e-2);
}

#else
TEST(GpuOp, SkipsWithoutCuda) { GTEST_SKIP() << "built without CUDA (MOEKIT_CUDA=OFF)"; }
#endif

}  // namespace
}  // namespace moekit
