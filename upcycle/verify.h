// --verify: evaluate the dense model and the upcycled MoE on the same sample tokens and compare:
// the loss of each (mean CE of predicting token t+1), the mean KL(dense || MoE) of the
// next-token distributions, the largest logit difference and how often the top-1 agrees. In a
// function-preserving setting (plan.json says which) the MoE reproduces the dense logits to
// float tolerance. Both models are loaded whole in f32 (CPU model), so this is for models that
// fit in memory; the check refuses, naming the need, before loading anything too big.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moekit::upcycle {

struct VerifyResult {
  double dense_loss = 0, moe_loss = 0;
  double kl = 0;                  // mean over positions, nats
  double max_abs_logit_diff = 0;
  double top1_agreement = 0;      // fraction of positions
  int64_t tokens = 0;
};

// Sample tokens: `n` ids uniform in [0, vocab) from the counter RNG keyed by (seed, name).
std::vector<int64_t> verify_tokens(uint64_t seed, int64_t vocab, int64_t n);

VerifyResult verify_upcycle(const std::string& dense_dir, const std::string& moe_dir,
                            const std::vector<int64_t>& tokens);

// KL(p || q) of the softmax distributions of two logit rows, in double.
double logit_kl(const float* p_logits, const float* q_logits, int64_t n);

}  // namespace moekit::upcycle
