// Hugging Face checkpoint directories <-> Model parameters.
// Reads Qwen2 / Qwen2-MoE directories (config.json + safetensors, single or sharded,
// F32/BF16/F16 on disk) and the original Qwen v1 layout (transformer.h.N..., fused c_attn,
// mlp.w2 = gate, mlp.w1 = up), which maps onto the same Qwen2 parameters. Writes HF
// directories that transformers loads as Qwen2ForCausalLM / Qwen2MoeForCausalLM.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "checkpoint/safetensors.h"
#include "config/model_config.h"
#include "core/dtype.h"
#include "model/model.h"

namespace moekit::checkpoint {

enum class HfLayout { kQwen2, kQwenV1 };
HfLayout detect_layout(const SafetensorsDir& dir);

// Where the Qwen2 parameter `qwen2_name` of a `cfg` model lives in a checkpoint of `layout`:
// the tensor name and, for Qwen v1's fused c_attn (rows [q; k; v]), the rows to take.
struct HfSource {
  std::string name;
  int64_t row0 = 0;
  bool slice = false;  // rows [row0, row0 + rows of the Qwen2 tensor) of `name`
};
HfSource hf_source(HfLayout layout, const std::string& qwen2_name, const config::ModelConfig& cfg);
// Tensors HF checkpoints may carry that a model legitimately ignores (rotary inv_freq buffers).
bool hf_ignorable(const std::string& name);

// Fill every parameter of `model` from `dir`; checks every shape and that no tensor is missing
// or left over (errors name the directory, the tensor and the shapes). An expert-parallel model
// (Model::experts_held() a subset) reads only its own experts and skips the others'.
void load_hf_weights(model::Model* model, const SafetensorsDir& dir);

// Every parameter `cfg` declares is in `dir` with the shape the config implies; checked from
// the headers alone, so a config.json that promises more than the files hold is refused before
// anything is allocated from its sizes (errors name the tensor and both shapes).
void check_hf_shapes(const config::ModelConfig& cfg, const SafetensorsDir& dir);

// config.json + weights -> a new Model (shapes checked first, see check_hf_shapes).
std::unique_ptr<model::Model> load_hf_model(const std::string& dir);

// Write config.json, generation_config.json and safetensors shards (<= max_shard_bytes) of
// `model` in `dtype`. The directory is written as DIR.tmp.<pid> and renamed into place, so a
// failure leaves no partial output; an existing non-empty DIR is an error.
void save_hf_model(const model::Model& model, const std::string& dir, DType dtype,
                   uint64_t max_shard_bytes = 5000000000ull);

std::string generation_config_json(const config::ModelConfig& cfg);

}  // namespace moekit::checkpoint
