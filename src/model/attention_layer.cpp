#include "model/attention_layer.h"

#include <algorithm>

#include "kernels/matmul.h"
#include "kernels/rope.h"

namespace moekit::model {

using namespace moekit::kernels;

namespace {
// y (T, n) = x (T, k) W^T + b
void linear(float* y, const float* x, const float* w, const float* b, int64_t rows, int64_t n, int64_t k) {
  matmul_nt(y, x, w, rows, n, k);
  if (!b) return;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t i = 0; i < n; ++i) y[t * n + i] += b[i];
}
// dW += dy^T x, db += sum_t dy, dx (+)= dy W
void linear_backward(float* dx, float beta, const Param& w, const Param& b, const float* dy, const float* x,
                     int64_t rows, int64_t n, int64_t k) {
  matmul_tn(w.g, dy, x, n, k, rows, 1.f);
  if (b.w)
    for (int64_t t = 0; t < rows; ++t)
      for (int64_t i = 0; i < n; ++i) b.g[i] += dy[t * n + i];
  matmul_nn(dx, dy, w.w, rows, k, n, beta);
}
}  // namespace

void AttentionLayer::forward(float* y, AttnCache* c, const float* x, int64_t batch, int64_t seq, const float* cos,
                             const float* sin) const {
  const int64_t T = batch * seq, qd = heads_ * head_dim_, kvd = kv_heads_ * head_dim_;
  c->q.resize(T * qd);
  c->k.resize(T * kvd);
  c->v.resize(T * kvd);
  c->ctx.resize(T * qd);
  c->probs.resize(batch * heads_ * seq * seq);
  linear(c->q.data(), x, p_.wq.w, p_.bq.w, T, qd, hidden_);
  linear(c->k.data(), x, p_.wk.w, p_.bk.w, T, kvd, hidden_);
  linear(c->v.data(), x, p_.wv.w, p_.bv.w, T, kvd, hidden_);
  rope_apply(c->q.data(), cos, sin, batch, seq, heads_, head_dim_, false);
  rope_apply(c->k.data(), cos, sin, batch, seq, kv_heads_, head_dim_, false);
  attention_forward(c->ctx.data(), c->probs.data(), c->q.data(), c->k.data(), c->v.data(),
                    {batch, seq, heads_, kv_heads_, head_dim_});
  matmul_nt(y, c->ctx.data(), p_.wo.w, T, hidden_, qd);
}

void AttentionLayer::backward(float* dx, const float* dy, const AttnCache& c, const float* x, int64_t batch,
                              int64_t seq, const float* cos, const float* sin) const {
  const int64_t T = batch * seq, qd = heads_ * head_dim_, kvd = kv_heads_ * head_dim_;
  std::vector<float> dctx(T * qd), dq(T * qd), dk(T * kvd), dv(T * kvd);
  matmul_tn(p_.wo.g, dy, c.ctx.data(), hidden_, qd, T, 1.f);  // dWo += dy^T ctx
  matmul_nn(dctx.data(), dy, p_.wo.w, T, qd, hidden_);        // dctx = dy Wo
  attention_backward(dq.data(), dk.data(), dv.data(), dctx.data(), c.probs.data(), c.q.data(), c.k.data(),
                     c.v.data(), {batch, seq, heads_, kv_heads_, head_dim_});
  // The rotation is orthogonal: its backward is the inverse rotation.
  rope_apply(dq.data(), cos, sin, batch, seq, heads_, head_dim_, true);
  rope_apply(dk.data(), cos, sin, batch, seq, kv_heads_, head_dim_, true);
  linear_backward(dx, 0.f, p_.wq, p_.bq, dq.data(), x, T, qd, hidden_);
  linear_backward(dx, 1.f, p_.wk, p_.bk, dk.data(), x, T, kvd, hidden_);
  linear_backward(dx, 1.f, p_.wv, p_.bv, dv.data(), x, T, kvd, hidden_);
}

}  // namespace moekit::model
