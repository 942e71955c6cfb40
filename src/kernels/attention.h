// Causal scaled-dot-product attention with grouped-query heads (Ainslie et al. 2023), the core
// between the q/k/v and o projections. Rows are tokens (B*S), heads interleaved per row as the
// projections produce them, so no transposes are materialised.
#pragma once

#include <cstdint>

namespace moekit::kernels {

struct AttnShape {
  int64_t batch, seq, heads, kv_heads, head_dim;
};

// out (B*S, H*d); probs (B, H, S, S) saved for the backward.
// q (B*S, H*d), k and v (B*S, Hkv*d) already rotated.
void attention_forward(float* out, float* probs, const float* q, const float* k, const float* v, const AttnShape& s);
// dq (B*S, H*d), dk, dv (B*S, Hkv*d): overwritten.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* probs, const float* q,
                        const float* k, const float* v, const AttnShape& s);

}  // namespace moekit::kernels
