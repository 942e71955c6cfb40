// Softmax cross-entropy over the vocabulary, fused with its gradient.
#pragma once

#include <cstdint>

namespace moekit::kernels {

// For each row t with targets[t] >= 0: loss_t = logsumexp(logits_t) - logits_t[target].
// Returns the sum of loss_t over counted rows (f64 accumulation). When dlogits is non-null it
// receives grad_scale * (softmax(logits_t) - onehot(target)) (zero for rows with target < 0).
double cross_entropy(float* dlogits, const float* logits, const int64_t* targets, int64_t rows, int64_t vocab,
                     float grad_scale);

}  // namespace moekit::kernels
