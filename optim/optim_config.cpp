// The `optim:` section: parsing (every key known, unknown keys are errors naming `optim.<key>`
// and the file), validation and the resolved dump. docs/TRAINING.md lists the keys.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <variant>

#include "core/bounded_parse.h"
#include "core/check.h"
#include "optim/optim.h"

namespace moekit::optim {

namespace {

const char* const kScheduleNames[] = {"cosine", "wsd", "constant"};
const char* const kPrecisionNames[] = {"fp32", "bf16", "fp16"};
const char* const kNanPolicyNames[] = {"skip", "stop"};

// The spellings of an enum's values, indexed by the value (the enums are 0, 1, 2, ...).
template <typename E>
struct Spellings;
template <>
struct Spellings<Schedule> {
  static constexpr const char* const* kNames = kScheduleNames;
  static constexpr int kCount = 3;
};
template <>
struct Spellings<Precision> {
  static constexpr const char* const* kNames = kPrecisionNames;
  static constexpr int kCount = 3;
};
template <>
struct Spellings<NanPolicy> {
  static constexpr const char* const* kNames = kNanPolicyNames;
  static constexpr int kCount = 2;
};

// Every key of the section, in the order the resolved dump lists them: one table drives the
// unknown-key check, parsing and the dump.
using Member = std::variant<double OptimConfig::*, int64_t OptimConfig::*, std::vector<std::string> OptimConfig::*,
                            Schedule OptimConfig::*, Precision OptimConfig::*, NanPolicy OptimConfig::*>;
struct Field {
  const char* key;
  Member member;
};
const Field kFields[] = {
    {"lr", &OptimConfig::lr},
    {"min_lr", &OptimConfig::min_lr},
    {"beta1", &OptimConfig::beta1},
    {"beta2", &OptimConfig::beta2},
    {"eps", &OptimConfig::eps},
    {"weight_decay", &OptimConfig::weight_decay},
    {"no_decay", &OptimConfig::no_decay},
    {"schedule", &OptimConfig::schedule},
    {"warmup_steps", &OptimConfig::warmup_steps},
    {"decay_steps", &OptimConfig::decay_steps},
    {"wsd_decay_fraction", &OptimConfig::wsd_decay_fraction},
    {"clip_grad_norm", &OptimConfig::clip_grad_norm},
    {"precision", &OptimConfig::precision},
    {"loss_scale_init", &OptimConfig::loss_scale_init},
    {"loss_scale_growth", &OptimConfig::loss_scale_growth},
    {"loss_scale_backoff", &OptimConfig::loss_scale_backoff},
    {"loss_scale_window", &OptimConfig::loss_scale_window},
    {"loss_scale_min", &OptimConfig::loss_scale_min},
    {"nan_policy", &OptimConfig::nan_policy},
    {"max_skipped_steps", &OptimConfig::max_skipped_steps},
    {"max_skipped_fraction", &OptimConfig::max_skipped_fraction},
};

// One value from YAML; a value of the wrong type names the key, the value and the file.
template <typename T>
void parse_value(const YAML::Node& v, const std::string& key, const std::string& where, T* out) {
  if constexpr (std::is_enum_v<T>) {
    std::string s;
    parse_value(v, key, where, &s);
    std::string allowed;
    for (int i = 0; i < Spellings<T>::kCount; ++i) {
      if (s == Spellings<T>::kNames[i]) {
        *out = static_cast<T>(i);
        return;
      }
      allowed += std::string(i ? ", " : "") + Spellings<T>::kNames[i];
    }
    MOEKIT_FAIL(where, ": 'optim.", key, "' is '", s, "', expected one of ", allowed);
  } else {
    try {
      *out = v.as<T>();
    } catch (const YAML::Exception&) {
      MOEKIT_FAIL(where, ": 'optim.", key, "' has an invalid value '", clip_for_message(YAML::Dump(v)), "'");
    }
  }
}

template <typename T>
void emit_value(YAML::Emitter& e, const T& x) {
  if constexpr (std::is_enum_v<T>) {
    e << Spellings<T>::kNames[static_cast<int>(x)];
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    e << YAML::Flow << x;
  } else {
    e << x;
  }
}

}  // namespace

const char* schedule_name(Schedule s) { return kScheduleNames[static_cast<int>(s)]; }
const char* precision_name(Precision p) { return kPrecisionNames[static_cast<int>(p)]; }
const char* nan_policy_name(NanPolicy p) { return kNanPolicyNames[static_cast<int>(p)]; }

void OptimConfig::validate() const {
  auto finite = [](double x) { return std::isfinite(x); };
  MOEKIT_CHECK(finite(lr) && lr > 0, "optim.lr must be > 0, got ", lr);
  MOEKIT_CHECK(finite(min_lr) && min_lr >= 0 && min_lr <= lr, "optim.min_lr must be in [0, optim.lr = ", lr,
               "], got ", min_lr);
  MOEKIT_CHECK(finite(beta1) && beta1 >= 0 && beta1 < 1, "optim.beta1 must be in [0, 1), got ", beta1);
  MOEKIT_CHECK(finite(beta2) && beta2 >= 0 && beta2 < 1, "optim.beta2 must be in [0, 1), got ", beta2);
  MOEKIT_CHECK(finite(eps) && eps > 0, "optim.eps must be > 0, got ", eps);
  MOEKIT_CHECK(finite(weight_decay) && weight_decay >= 0, "optim.weight_decay must be >= 0, got ", weight_decay);
  for (const auto& s : no_decay)
    MOEKIT_CHECK(!s.empty(), "optim.no_decay must not contain an empty string (it would match every parameter)");
  MOEKIT_CHECK(warmup_steps >= 0, "optim.warmup_steps must be >= 0, got ", warmup_steps);
  MOEKIT_CHECK(decay_steps >= 0, "optim.decay_steps must be >= 0 (0: decay to the end of the run), got ", decay_steps);
  MOEKIT_CHECK(finite(wsd_decay_fraction) && wsd_decay_fraction >= 0 && wsd_decay_fraction <= 1,
               "optim.wsd_decay_fraction must be in [0, 1], got ", wsd_decay_fraction);
  MOEKIT_CHECK(finite(clip_grad_norm), "optim.clip_grad_norm must be finite (<= 0 disables clipping), got ",
               clip_grad_norm);
  MOEKIT_CHECK(finite(loss_scale_init) && loss_scale_init > 0, "optim.loss_scale_init must be > 0, got ",
               loss_scale_init);
  MOEKIT_CHECK(finite(loss_scale_growth) && loss_scale_growth >= 1, "optim.loss_scale_growth must be >= 1, got ",
               loss_scale_growth);
  MOEKIT_CHECK(finite(loss_scale_backoff) && loss_scale_backoff > 0 && loss_scale_backoff < 1,
               "optim.loss_scale_backoff must be in (0, 1), got ", loss_scale_backoff);
  MOEKIT_CHECK(loss_scale_window >= 1, "optim.loss_scale_window must be >= 1, got ", loss_scale_window);
  MOEKIT_CHECK(finite(loss_scale_min) && loss_scale_min > 0 && loss_scale_min <= loss_scale_init,
               "optim.loss_scale_min must be in (0, optim.loss_scale_init = ", loss_scale_init, "], got ",
               loss_scale_min);
  MOEKIT_CHECK(max_skipped_steps >= 0, "optim.max_skipped_steps must be >= 0, got ", max_skipped_steps);
  MOEKIT_CHECK(finite(max_skipped_fraction) && max_skipped_fraction >= 0 && max_skipped_fraction <= 1,
               "optim.max_skipped_fraction must be in [0, 1], got ", max_skipped_fraction);
}

OptimConfig optim_config_from_yaml(const YAML::Node& node, const std::string& where) {
  OptimConfig c;
  if (!node || node.IsNull()) return c;
  MOEKIT_CHECK(node.IsMap(), where, ": 'optim' must be a mapping, got '", YAML::Dump(node), "'");
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    const bool known = std::any_of(std::begin(kFields), std::end(kFields), [&](const Field& f) { return key == f.key; });
    MOEKIT_CHECK(known, where, ": unknown key 'optim.", key, "'");
  }
  for (const Field& f : kFields) {
    const YAML::Node v = node[f.key];
    if (!v || v.IsNull()) continue;  // absent or `key: ~`: the default
    std::visit([&](auto member) { parse_value(v, f.key, where, &(c.*member)); }, f.member);
  }
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  }
  return c;
}

std::string optim_config_to_yaml(const OptimConfig& c) {
  YAML::Emitter e;
  e.SetDoublePrecision(17);  // round-trips every double
  e << YAML::BeginMap;
  for (const Field& f : kFields) {
    e << YAML::Key << f.key << YAML::Value;
    std::visit([&](auto member) { emit_value(e, c.*member); }, f.member);
  }
  e << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

bool applies_weight_decay(const OptimConfig& c, const std::string& name) {
  for (const auto& s : c.no_decay)
    if (name.find(s) != std::string::npos) return false;
  return true;
}

}  // namespace moekit::optim
