// Qwen2 self-attention block: q/k/v projections with bias, o projection without, rotate-half
// RoPE, causal grouped-query attention. Forward saves what its backward needs in AttnCache.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/attention.h"
#include "model/params.h"

namespace moekit::model {

struct AttnParams {
  Param wq, bq, wk, bk, wv, bv, wo;  // bq/bk/bv have w == nullptr when qkv_bias is off
};

struct AttnCache {
  std::vector<float> q, k, v;  // (T, H*d), (T, Hkv*d) x2, after RoPE
  std::vector<float> probs;    // (B, H, S, S)
  std::vector<float> ctx;      // (T, H*d) attention output before o_proj
};

class AttentionLayer {
 public:
  AttentionLayer(AttnParams p, int64_t hidden, int64_t heads, int64_t kv_heads, int64_t head_dim)
      : p_(p), hidden_(hidden), heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim) {}

  // y (T, hidden) = attn(x) for x (T, hidden), T = batch * seq. cos/sin: (seq, head_dim).
  void forward(float* y, AttnCache* c, const float* x, int64_t batch, int64_t seq, const float* cos,
               const float* sin) const;
  // dx (T, hidden) overwritten; parameter grads accumulate.
  void backward(float* dx, const float* dy, const AttnCache& c, const float* x, int64_t batch, int64_t seq,
                const float* cos, const float* sin) const;

 private:
  AttnParams p_;
  int64_t hidden_, heads_, kv_heads_, head_dim_;
};

}  // namespace moekit::model
