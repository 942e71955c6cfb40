#include "model/mlp.h"

namespace moekit::model {

using backend::GemmOp;

// Every GEMM here reads A and B in the compute type and writes C in it, except the weight
// gradients, which accumulate in f32 (beta 1).

void linear_forward(backend::Backend& be, void* y, const void* x, const Param& w, const Param& b, int64_t rows,
                    int64_t out, int64_t in) {
  const DType ct = be.compute_dtype();
  be.gemm({GemmOp::kNT, rows, out, in, ct, ct}, y, x, w.c);
  if (b.w) be.add_bias(y, b.w, rows, out);
}

void linear_backward(backend::Backend& be, void* dx, float beta, const Param& w, const Param& b, const void* dy,
                     const void* x, int64_t rows, int64_t out, int64_t in) {
  const DType ct = be.compute_dtype();
  be.gemm({GemmOp::kTN, out, in, rows, ct, DType::kF32, 1.f, 1.f}, w.g, dy, x);  // dW += dy^T x
  if (b.w) be.bias_grad(b.g, dy, rows, out);
  be.gemm({GemmOp::kNN, rows, in, out, ct, ct, 1.f, beta}, dx, dy, w.c);  // dx = beta dx + dy W
}

void mlp_forward(backend::Backend& be, void* y, float beta, void* gu, void* act, const void* x, const Param& gate_up,
                 const Param& down, int64_t rows, int64_t H, int64_t I) {
  const DType ct = be.compute_dtype();
  be.gemm({GemmOp::kNT, rows, 2 * I, H, ct, ct}, gu, x, gate_up.c);       // (T, 2I)
  be.swiglu_forward(act, gu, rows, I);                                  // (T, I)
  be.gemm({GemmOp::kNT, rows, H, I, ct, ct, 1.f, beta}, y, act, down.c);  // (T, H)
}

void mlp_backward(backend::Backend& be, void* dx, float beta, const Param& gate_up, const Param& down, const void* dy,
                  const void* x, const void* gu, const void* act, void* dact, void* dgu, int64_t rows, int64_t H,
                  int64_t I) {
  const DType ct = be.compute_dtype();
  be.gemm({GemmOp::kNN, rows, I, H, ct, ct}, dact, dy, down.c);                        // dact = dy W_down
  be.gemm({GemmOp::kTN, H, I, rows, ct, DType::kF32, 1.f, 1.f}, down.g, dy, act);       // dW_down += dy^T act
  be.swiglu_backward(dgu, dact, gu, rows, I);
  be.gemm({GemmOp::kTN, 2 * I, H, rows, ct, DType::kF32, 1.f, 1.f}, gate_up.g, dgu, x);  // dW_gu += dgu^T x
  be.gemm({GemmOp::kNN, rows, H, 2 * I, ct, ct, 1.f, beta}, dx, dgu, gate_up.c);        // dx = beta dx + dgu W_gu
}

}  // namespace moekit::model
