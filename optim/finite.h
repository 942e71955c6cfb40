// The second half of the NaN policy (docs/TRAINING.md): a NaN or infinity that reached the
// weights or the optimizer state cannot be skipped away (every later step would be non-finite
// and skipped, and the broken state checkpointed), so it stops the run with the tensor named.
// The AdamW pass counts non-finite masters and second moments as it updates them (every
// backend); on a non-zero count the trainer calls these to name the tensor. Weights are checked
// when loaded and checkpoints when read (TrainCheckpointReader::verify_all). And a run that
// skipped too many steps under nan_policy skip did not train: it ends with an error, not exit 0.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "optim/optim.h"

namespace moekit::optim {

// Weights of the tensors (TensorRef::w, memory of `be`); error "<when>: weights of tensor '<name>' ...".
void check_finite_weights(const std::vector<TensorRef>& tensors, const std::string& when,
                          backend::Backend& be = backend::cpu());
// The optimizer's state (on its backend): fp32 masters (mixed precision), exp_avg and exp_avg_sq
// of every tensor.
void check_finite_state(AdamW& opt, const std::string& when);
// skipped / steps > c.max_skipped_fraction: error naming both counts and the key.
void check_skipped_fraction(const OptimConfig& c, int64_t skipped, int64_t steps);

}  // namespace moekit::optim
