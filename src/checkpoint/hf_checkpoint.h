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
// `model` in `dtype`. `generation_config` is the text to write as generation_config.json (from
// source_generation_config(); "" generates one from the model config). A model without q/k/v
// biases (qkv_bias false) gets all-zero bias tensors: transformers' Qwen2 always builds them, and
// so does its Qwen2-MoE in 4.45.2 (4.57.6 reads qkv_bias); zeros give the same numbers as no
// bias, and load_hf_weights reads them back, checking that they are zero. The directory is written as DIR.tmp.<pid> and
// renamed into place, so a failure leaves no partial output; an existing non-empty DIR is an
// error.
void save_hf_model(const model::Model& model, const std::string& dir, DType dtype,
                   uint64_t max_shard_bytes = 5000000000ull, const std::string& generation_config = "");

// generation_config.json for a model without one to carry: its bos, eos and (when known) pad
// ids, as transformers' GenerationConfig.from_model_config writes them.
std::string generation_config_json(const config::ModelConfig& cfg);

// The generation_config.json that exports of a model from the HF directory `source_dir` carry:
// the source's own file, verbatim (eos lists, pad id, sampling defaults), or "" when there is
// none to carry (no file, no directory given, or a Qwen v1 directory, whose file holds
// remote-code fields). A file that is not a JSON object is an error naming it.
std::string source_generation_config(const std::string& source_dir);

// config.json and generation_config.json of an HF directory being written at `dir` (a staging
// directory): `generation_config` verbatim, or one generated from `cfg` when it is "". A pad id
// the generation config knows and `cfg` does not goes into config.json too.
void write_hf_side_files(const std::string& dir, const config::ModelConfig& cfg,
                         const std::string& generation_config);

// Why llama.cpp's GGUF converter cannot take this model, or "" when it can: its qwen2moe
// architecture has experts in every layer, so dense layers (mlp_only_layers,
// decoder_sparse_step > 1) have nowhere to go.
std::string gguf_incompatibility(const config::ModelConfig& cfg);

}  // namespace moekit::checkpoint
