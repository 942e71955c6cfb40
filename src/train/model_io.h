// Load a model from whatever a user points at: an HF directory (config.json + safetensors), a
// training checkpoint step directory (meta.json + HDF5 masters), or a run directory (its newest
// committed checkpoint). Used by `moekit eval` and `moekit export`.
#pragma once

#include <memory>
#include <string>

#include "config/run_config.h"
#include "model/model.h"

namespace moekit::train {

// A step directory as given, or the newest committed one of RUN_DIR or RUN_DIR/checkpoints;
// errors name the path.
std::string resolve_checkpoint_dir(const std::string& path);

// Model from a training checkpoint (fp32 master weights); *step receives its step and
// *generation_config the generation_config.json text the run's HF source had ("" when none, or
// for checkpoints written before moekit kept it), when given.
std::unique_ptr<model::Model> load_checkpoint_model(const std::string& path, int64_t* step = nullptr,
                                                    std::string* generation_config = nullptr);

// The HF directory a run comes from: init_from, else `model` when it is a directory; "" when
// neither is one. Its generation config is what the run's checkpoints keep for export.
std::string run_hf_source(const config::RunConfig& cfg);

// HF directory or training checkpoint / run directory.
std::unique_ptr<model::Model> load_any_model(const std::string& path);

}  // namespace moekit::train
