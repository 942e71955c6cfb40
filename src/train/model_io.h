// Load a model from whatever a user points at: an HF directory (config.json + safetensors), a
// training checkpoint step directory (meta.json + HDF5 masters), or a run directory (its newest
// committed checkpoint). Used by `moekit eval` and `moekit export`.
#pragma once

#include <memory>
#include <string>

#include "model/model.h"

namespace moekit::train {

// A step directory as given, or the newest committed one of RUN_DIR or RUN_DIR/checkpoints;
// errors name the path.
std::string resolve_checkpoint_dir(const std::string& path);

// Model from a training checkpoint (fp32 master weights); *step receives its step when given.
std::unique_ptr<model::Model> load_checkpoint_model(const std::string& path, int64_t* step = nullptr);

// HF directory or training checkpoint / run directory.
std::unique_ptr<model::Model> load_any_model(const std::string& path);

}  // namespace moekit::train
