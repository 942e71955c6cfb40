#include "kernels/swiglu_mlp.h"

#include "kernels/matmul.h"
#include "kernels/swiglu.h"

namespace moekit::kernels {

namespace {
// Single-threaded products on packed rows (the caller runs experts in parallel): c = beta*c + op.
void nt(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k, float beta) {
  matmul_nt_st(c, n, a, k, b, k, m, n, k, beta, 1.f);  // a (m,k) b^T, b (n,k)
}
void nn(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k, float beta) {
  matmul_nn_st(c, n, a, k, b, n, m, n, k, beta, 1.f);  // a (m,k) b, b (k,n)
}
void tn(float* c, const float* a, const float* b, int64_t m, int64_t n, int64_t k, float beta) {
  matmul_tn_st(c, n, a, m, b, n, m, n, k, beta, 1.f);  // a^T b, a (k,m), b (k,n)
}
}  // namespace

void mlp_forward(float* y, float beta, float* gu, float* act, const float* x, const MlpWeights& w, int64_t rows,
                 int64_t hidden, int64_t inter) {
  nt(gu, x, w.gate_up, rows, 2 * inter, hidden, 0.f);  // (T, 2I)
  swiglu_forward(act, gu, rows, inter);                        // (T, I)
  nt(y, act, w.down, rows, hidden, inter, beta);       // (T, H)
}

void mlp_backward(float* dx, float beta, const MlpGrads& g, const float* dy, const float* x, const float* gu,
                  const float* act, const MlpWeights& w, int64_t rows, int64_t hidden, int64_t inter, float* scratch) {
  float* dact = scratch;                 // (T, I)
  float* dgu = scratch + rows * inter;   // (T, 2I)
  nn(dact, dy, w.down, rows, inter, hidden, 0.f);       // dact = dy W_down
  tn(g.down, dy, act, hidden, inter, rows, 1.f);        // dW_down += dy^T act
  swiglu_backward(dgu, dact, gu, rows, inter);
  tn(g.gate_up, dgu, x, 2 * inter, hidden, rows, 1.f);  // dW_gu += dgu^T x
  nn(dx, dgu, w.gate_up, rows, hidden, 2 * inter, beta);  // dx = dgu W_gu
}

}  // namespace moekit::kernels
