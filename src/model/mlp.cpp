#include "model/mlp.h"

namespace moekit::model {

using backend::Gemm;
using backend::GemmOp;

namespace {
// A GEMM whose A and B are in the compute type; C in `c` (f32 for weight gradients).
Gemm gemm(backend::Backend& be, GemmOp op, int64_t m, int64_t n, int64_t k, float beta, DType c) {
  Gemm g;
  g.op = op;
  g.m = m;
  g.n = n;
  g.k = k;
  g.ab = be.compute_dtype();
  g.c = c;
  g.beta = beta;
  return g;
}
}  // namespace

void linear_forward(backend::Backend& be, void* y, const void* x, const Param& w, const Param& b, int64_t rows,
                    int64_t out, int64_t in) {
  be.gemm(gemm(be, GemmOp::kNT, rows, out, in, 0.f, be.compute_dtype()), y, x, w.c);
  if (b.w) be.add_bias(y, b.w, rows, out);
}

void linear_backward(backend::Backend& be, void* dx, float beta, const Param& w, const Param& b, const void* dy,
                     const void* x, int64_t rows, int64_t out, int64_t in) {
  be.gemm(gemm(be, GemmOp::kTN, out, in, rows, 1.f, DType::kF32), w.g, dy, x);  // dW += dy^T x
  if (b.w) be.bias_grad(b.g, dy, rows, out);
  be.gemm(gemm(be, GemmOp::kNN, rows, in, out, beta, be.compute_dtype()), dx, dy, w.c);  // dx = beta dx + dy W
}

void mlp_forward(backend::Backend& be, void* y, float beta, void* gu, void* act, const void* x, const Param& gate_up,
                 const Param& down, int64_t rows, int64_t H, int64_t I) {
  const DType ct = be.compute_dtype();
  be.gemm(gemm(be, GemmOp::kNT, rows, 2 * I, H, 0.f, ct), gu, x, gate_up.c);  // (T, 2I)
  be.swiglu_forward(act, gu, rows, I);                                       // (T, I)
  be.gemm(gemm(be, GemmOp::kNT, rows, H, I, beta, ct), y, act, down.c);      // (T, H)
}

void mlp_backward(backend::Backend& be, void* dx, float beta, const Param& gate_up, const Param& down, const void* dy,
                  const void* x, const void* gu, const void* act, void* dact, void* dgu, int64_t rows, int64_t H,
                  int64_t I) {
  const DType ct = be.compute_dtype();
  be.gemm(gemm(be, GemmOp::kNN, rows, I, H, 0.f, ct), dact, dy, down.c);             // dact = dy W_down
  be.gemm(gemm(be, GemmOp::kTN, H, I, rows, 1.f, DType::kF32), down.g, dy, act);     // dW_down += dy^T act
  be.swiglu_backward(dgu, dact, gu, rows, I);
  be.gemm(gemm(be, GemmOp::kTN, 2 * I, H, rows, 1.f, DType::kF32), gate_up.g, dgu, x);  // dW_gu += dgu^T x
  be.gemm(gemm(be, GemmOp::kNN, rows, H, 2 * I, beta, ct), dx, dgu, gate_up.c);        // dx = beta dx + dgu W_gu
}

}  // namespace moekit::model
