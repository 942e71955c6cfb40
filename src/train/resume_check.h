// What a training checkpoint must hold before the trainer resumes from it, checked while
// resume=auto is still choosing (checkpoint::resolve_resume's CheckpointCheck), so that a
// checkpoint failing any of it is passed over for an older one with the reason logged, instead of
// stopping the run (or resuming into a broken state): exactly the model's tensors (every
// parameter, full shapes, in master, exp_avg and exp_avg_sq; nothing else), finite values in all
// of them (a NaN checkpointed by an earlier run would be skipped step after step), and the meta
// fields the trainer restores, each of the right type and range.
#pragma once

#include <string>
#include <vector>

#include "checkpoint/train_checkpoint.h"
#include "config/model_config.h"

namespace moekit::train {

checkpoint::CheckpointCheck resume_check(const config::ModelConfig& model);

// The tensors of a checkpoint's "master" group against the model's parameters (names and full
// shapes; nothing missing, nothing extra). Shared by resume and by eval/export of a checkpoint.
void check_checkpoint_tensors(const checkpoint::TrainCheckpointReader& r, const config::ModelConfig& model,
                              const char* group = "master");

// meta.json's "expert_bias" (aux-loss-free balancing state) for a model with
// moe_router_enable_expert_bias: per MoE layer num_experts finite numbers, indexed by layer (empty
// for dense layers); empty vectors for a model without the bias. `where` names the file in errors.
std::vector<std::vector<float>> read_expert_bias(const nlohmann::json& meta, const config::ModelConfig& model,
                                                 const std::string& where);

}  // namespace moekit::train
