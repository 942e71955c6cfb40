// moekit train on one process: the loop of trainer.h. Distributed runs reuse the same steps with
// the data-parallel slice and the gradient sync in between (parallel/).
#include "train/trainer.h"

#include <sys/resource.h>
#include <yaml-cpp/yaml.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unistd.h>

#include "checkpoint/hf_checkpoint.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/train_checkpoint.h"
#include "core/check.h"
#include "core/half.h"
#include "core/log.h"
#include "data/loader.h"
#include "data/synth.h"
#include "model/model.h"
#include "optim/optim.h"
#include "train/metrics.h"
#include "train/tfevents.h"

namespace moekit::train {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

std::atomic<int> g_signal{0};
extern "C" void on_stop_signal(int sig) { g_signal.store(sig); }

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int64_t env_step(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoll(v) : -1;
}

double peak_rss_mib() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;  // Linux reports KiB
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    MOEKIT_CHECK(f.good(), "cannot write '", tmp, "'");
    f << text;
    f.flush();
    MOEKIT_CHECK(f.good(), "write to '", tmp, "' failed (disk full?)");
  }
  fs::rename(tmp, path);
}

// Keep only the lines of a JSONL log whose "step" is <= `step` (the tail written after the
// checkpoint we resume from belongs to a future that did not happen).
void truncate_jsonl(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) continue;  // a line torn by the crash
    if (j.value("step", int64_t{0}) <= step) kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

model::LossConfig loss_config(const config::RunConfig& cfg) {
  model::LossConfig lc;
  const auto& mc = cfg.model_config;
  lc.aux = mc.is_moe() ? model::aux_loss_form_parse(cfg.loss.aux) : model::AuxLossForm::kNone;
  lc.aux_coef = cfg.loss.aux_coef >= 0 ? cfg.loss.aux_coef : mc.router_aux_loss_coef;
  lc.z_coef = mc.is_moe() ? cfg.loss.z_coef : 0.0;
  return lc;
}

double chosen_aux(const model::LossTerms& t, model::AuxLossForm form) {
  switch (form) {
    case model::AuxLossForm::kHfPooled: return t.aux_hf;
    case model::AuxLossForm::kSwitch: return t.aux_switch;
    default: return std::isnan(t.aux_hf) ? 0.0 : t.aux_hf;
  }
}

// Build the data set, generating the synthetic corpus first when the config asks for it.
data::TokenDataset open_training_data(const config::RunConfig& cfg) {
  const std::string& first = cfg.data.train.front();
  if (cfg.data.synth && !fs::exists(first + ".idx")) {
    data::SynthConfig sc;
    sc.vocab_size = cfg.model_config.vocab_size;
    sc.num_tokens = cfg.data.synth_tokens;
    sc.seed = static_cast<uint64_t>(cfg.data.synth_seed);
    sc.eos_id = cfg.data.eos_id;
    sc.copy_id = cfg.data.eos_id == 1 ? 2 : 1;
    const fs::path parent = fs::path(first).parent_path();
    if (!parent.empty()) fs::create_directories(parent);
    log_info("data: generating the synthetic corpus ", first, " (", sc.num_tokens, " tokens, vocab ",
             sc.vocab_size, ", seed ", sc.seed, ")");
    const data::SynthStats st = data::write_synth_corpus(first, sc);
    log_info("data: ", st.documents, " documents, ", st.tokens, " tokens; entropy bound ", st.entropy_bound,
             " nats/token (uniform guess ", st.log_vocab, ")");
  }
  return data::TokenDataset::open(cfg.data.train);
}

class Trainer {
 public:
  explicit Trainer(const config::RunConfig& cfg);
  TrainSummary run();

 private:
  struct StepResult {
    double loss = 0, aux = 0, z = 0, grad_norm = 0;
    bool skipped = false;
  };
  void prepare_run_dir();
  void init_weights();
  void resume();
  StepResult train_step(const data::Batch& batch);
  void evaluate();
  void save_checkpoint();
  void log_step(const StepResult& r, double lr, double step_seconds);
  json meta_json() const;

  config::RunConfig cfg_;
  const config::ModelConfig& mc_;
  std::string ckpt_dir_;
  model::LossConfig loss_;
  std::unique_ptr<model::Model> model_;
  std::unique_ptr<data::Loader> loader_;
  std::unique_ptr<optim::AdamW> opt_;
  std::unique_ptr<optim::LossScaler> scaler_;
  optim::OptimConfig ocfg_;
  std::unique_ptr<JsonlWriter> metrics_, evals_, load_log_;
  std::unique_ptr<TfEventsWriter> tb_;
  FlopCount flops_;
  double peak_flops_ = 0;
  int64_t n_micro_ = 0;

  int64_t step_ = 0;  // completed steps
  int64_t tokens_ = 0;
  int64_t skipped_ = 0, consecutive_skips_ = 0;
  double wall_before_ = 0;  // wall seconds of earlier segments of this run (resume)
  Clock::time_point t_start_;
  double last_eval_ = std::numeric_limits<double>::quiet_NaN();
  double last_loss_ = std::numeric_limits<double>::quiet_NaN();
  int64_t last_ckpt_step_ = -1;
  std::string last_ckpt_;
  std::vector<std::vector<int64_t>> expert_counts_;  // per layer, this step
  int64_t nan_step_ = -1, kill_step_ = -1, signal_step_ = -1;
};

Trainer::Trainer(const config::RunConfig& cfg)
    : cfg_(cfg), mc_(cfg_.model_config), ckpt_dir_((fs::path(cfg.run_dir) / "checkpoints").string()) {
  cfg_.validate(1);
  ocfg_ = optim::optim_config_from_yaml(YAML::Load(cfg_.optim_yaml), cfg_.source);
  ocfg_.validate();
  loss_ = loss_config(cfg_);
  n_micro_ = cfg_.train.global_batch_size / cfg_.train.micro_batch_size;
  nan_step_ = env_step("MOEKIT_DEBUG_NAN_STEP");
  kill_step_ = env_step("MOEKIT_DEBUG_KILL_STEP");
  signal_step_ = env_step("MOEKIT_DEBUG_SIGNAL_STEP");
}

void Trainer::prepare_run_dir() {
  fs::create_directories(cfg_.run_dir);
  const bool has_run = fs::exists(fs::path(cfg_.run_dir) / "metrics.jsonl");
  MOEKIT_CHECK(!has_run || cfg_.resume != "none", "run_dir '", cfg_.run_dir,
               "' already holds a run (metrics.jsonl); continue it with --set resume=auto or choose another run_dir");
  // The resolved config, with the optimizer section expanded to every key.
  config::RunConfig resolved = cfg_;
  resolved.optim_yaml = optim::optim_config_to_yaml(ocfg_);
  write_file_atomic((fs::path(cfg_.run_dir) / "config.resolved.yaml").string(), config::run_config_to_yaml(resolved));
}

void Trainer::init_weights() {
  model_ = std::make_unique<model::Model>(mc_);
  if (!cfg_.init_from.empty()) {
    log_info("init: weights from ", cfg_.init_from);
    checkpoint::load_hf_weights(model_.get(), checkpoint::SafetensorsDir::open(cfg_.init_from));
  } else {
    model_->params().init(cfg_.seed, mc_.initializer_range);
  }
  std::vector<optim::TensorRef> refs;
  for (const auto& s : model_->params().specs()) {
    model::Param p = model_->params().get(s.name);
    refs.push_back({s.name, p.w, p.g, s.numel()});
  }
  opt_ = std::make_unique<optim::AdamW>(ocfg_, std::move(refs));
  scaler_ = std::make_unique<optim::LossScaler>(ocfg_);
}

json Trainer::meta_json() const {
  json m;
  m["step"] = step_;
  m["tokens"] = tokens_;
  m["optimizer_steps"] = opt_->steps_taken();
  m["loader"] = loader_->state().to_json();
  m["loss_scale"] = scaler_->scale();
  m["loss_scale_good_steps"] = scaler_->good_steps();
  m["skipped_steps"] = skipped_;
  m["consecutive_skips"] = consecutive_skips_;
  m["wall_seconds"] = wall_before_ + seconds_since(t_start_);
  m["seed"] = cfg_.seed;
  m["layout"] = {{"world", 1}, {"ep", cfg_.parallel.ep}};
  m["model_config"] = json::parse(config::model_config_to_hf_json(mc_));
  m["precision"] = ocfg_.precision == optim::Precision::kFp32 ? "fp32"
                   : ocfg_.precision == optim::Precision::kBf16 ? "bf16" : "fp16";
  return m;
}

void Trainer::save_checkpoint() {
  const auto t0 = Clock::now();
  {
    checkpoint::TrainCheckpointWriter w(ckpt_dir_, step_);
    const auto& specs = model_->params().specs();
    for (size_t i = 0; i < specs.size(); ++i) {
      w.write("master", specs[i].name, specs[i].shape, opt_->master(i));
      w.write("exp_avg", specs[i].name, specs[i].shape, opt_->exp_avg(i));
      w.write("exp_avg_sq", specs[i].name, specs[i].shape, opt_->exp_avg_sq(i));
    }
    w.close();
  }
  config::RunConfig resolved = cfg_;
  resolved.optim_yaml = optim::optim_config_to_yaml(ocfg_);
  last_ckpt_ = checkpoint::commit_checkpoint(ckpt_dir_, step_, meta_json(), config::run_config_to_yaml(resolved),
                                            static_cast<int>(cfg_.checkpoint.keep));
  last_ckpt_step_ = step_;
  log_info("checkpoint: step ", step_, " -> ", last_ckpt_, " (", format_duration(seconds_since(t0)), ")");
}

void Trainer::resume() {
  if (cfg_.resume == "none") return;
  const std::string dir = checkpoint::resolve_resume(ckpt_dir_, cfg_.resume);
  if (dir.empty()) {
    log_info("resume: no checkpoint in ", ckpt_dir_, "; starting from step 0");
    return;
  }
  checkpoint::TrainCheckpointReader r(dir);
  const json& m = r.meta();
  const auto& specs = model_->params().specs();
  for (size_t i = 0; i < specs.size(); ++i) {
    const std::string& n = specs[i].name;
    MOEKIT_CHECK(r.has("master", n), "resume: checkpoint ", dir, " has no tensor '", n,
                 "' (was it written for another model?)");
    MOEKIT_CHECK(r.shape("master", n) == specs[i].shape, "resume: tensor '", n, "' in ", dir, " has shape ",
                 shape_str(r.shape("master", n)), ", the model expects ", shape_str(specs[i].shape));
    r.read("master", n, opt_->master(i));
    r.read("exp_avg", n, opt_->exp_avg(i));
    r.read("exp_avg_sq", n, opt_->exp_avg_sq(i));
  }
  try {
    opt_->restore(m.at("optimizer_steps").get<int64_t>());
    loader_->restore(data::LoaderState::from_json(m.at("loader")));
    scaler_->restore(m.at("loss_scale").get<double>(), m.at("loss_scale_good_steps").get<int64_t>());
    step_ = m.at("step").get<int64_t>();
    tokens_ = m.at("tokens").get<int64_t>();
    skipped_ = m.at("skipped_steps").get<int64_t>();
    consecutive_skips_ = m.at("consecutive_skips").get<int64_t>();
    wall_before_ = m.at("wall_seconds").get<double>();
  } catch (const json::exception& e) {
    MOEKIT_FAIL("resume: ", dir, "/meta.json: ", e.what());
  }
  last_ckpt_ = dir;
  last_ckpt_step_ = step_;
  log_info("resume: step ", step_, ", ", tokens_, " tokens, from ", dir);
}

Trainer::StepResult Trainer::train_step(const data::Batch& batch) {
  StepResult r;
  model_->params().zero_grad();
  const int64_t B = cfg_.train.micro_batch_size, S = cfg_.train.seq_len;
  if (mc_.is_moe()) {
    expert_counts_.assign(mc_.num_hidden_layers, {});
    for (int64_t l = 0; l < mc_.num_hidden_layers; ++l)
      if (mc_.is_sparse_layer(l)) expert_counts_[l].assign(mc_.num_experts, 0);
  }
  for (int64_t mb = 0; mb < n_micro_; ++mb) {
    const int64_t* in = batch.inputs.data() + mb * B * S;
    const int64_t* tg = batch.targets.data() + mb * B * S;
    const model::LossTerms t = model_->forward(in, tg, B, S, loss_);
    r.loss += t.ce / n_micro_;
    r.aux += chosen_aux(t, loss_.aux) / n_micro_;
    if (!std::isnan(t.z_loss)) r.z += t.z_loss / n_micro_;
    model_->backward();
    for (int64_t l = 0; l < static_cast<int64_t>(expert_counts_.size()); ++l) {
      const moe::RouterState* rs = model_->router_state(l);
      if (!rs || expert_counts_[l].empty()) continue;
      for (int32_t e : rs->idx) ++expert_counts_[l][e];
    }
  }
  if (step_ == nan_step_) r.loss = std::numeric_limits<double>::quiet_NaN();

  const auto& refs = opt_->tensors();
  // Micro-batch losses are means over equal token counts: average their gradients.
  float gscale = 1.0f / static_cast<float>(n_micro_);
  bool overflow = false;
  if (ocfg_.precision == optim::Precision::kFp16) {
    // fp16 gradient storage, emulated on the CPU: the scaled gradient is rounded to fp16 (where
    // large values overflow to inf, as they would on a GPU), then unscaled in f32.
    const float s = static_cast<float>(scaler_->scale());
    for (const auto& t : refs)
      for (int64_t i = 0; i < t.numel; ++i) {
        const float h = f16_to_f32(f32_to_f16(t.g[i] * gscale * s));
        overflow |= !std::isfinite(h);
        t.g[i] = h / s;
      }
    gscale = 1.0f;
  }
  if (gscale != 1.0f) optim::scale_grads(refs, gscale);
  r.grad_norm = optim::global_grad_norm(refs);
  const bool finite = std::isfinite(r.loss) && std::isfinite(r.grad_norm) && !overflow;
  if (ocfg_.precision == optim::Precision::kFp16 && scaler_->update(!finite)) {
    r.skipped = true;
  } else if (!finite) {
    MOEKIT_CHECK(ocfg_.nan_policy == optim::NanPolicy::kSkip, "step ", step_ + 1, ": non-finite loss (", r.loss,
                 ") or gradient norm (", r.grad_norm, "); optim.nan_policy is 'stop'");
    r.skipped = true;
  }
  if (r.skipped) {
    ++skipped_;
    ++consecutive_skips_;
    log_warn("step ", step_ + 1, ": skipped (loss ", r.loss, ", grad norm ", r.grad_norm,
             ocfg_.precision == optim::Precision::kFp16 ? ", loss scale now " + std::to_string(scaler_->scale()) : "",
             ")");
    MOEKIT_CHECK(consecutive_skips_ <= ocfg_.max_skipped_steps, "step ", step_ + 1, ": ", consecutive_skips_,
                 " consecutive steps skipped for non-finite values (optim.max_skipped_steps ",
                 ocfg_.max_skipped_steps, "); stopping");
    return r;
  }
  consecutive_skips_ = 0;
  if (ocfg_.clip_grad_norm > 0) {
    // torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is < 1.
    const double coef = ocfg_.clip_grad_norm / (r.grad_norm + 1e-6);
    if (coef < 1.0) optim::scale_grads(refs, static_cast<float>(coef));
  }
  opt_->step(optim::lr_at(ocfg_, step_, cfg_.train.steps));
  return r;
}

void Trainer::evaluate() {
  const int64_t B = cfg_.train.micro_batch_size;
  const int64_t n = std::min(cfg_.train.eval_batches * B, loader_->num_valid_windows());
  if (n == 0) return;
  double ce_sum = 0;
  int64_t targets = 0;
  model::LossConfig lc;
  lc.aux = model::AuxLossForm::kNone;
  for (int64_t w = 0; w < n; w += B) {
    const data::Batch b = loader_->valid_batch(w, std::min(B, n - w));
    const model::LossTerms t = model_->forward(b.inputs.data(), b.targets.data(), b.rows, b.seq_len, lc, false);
    ce_sum += t.ce * t.targets;
    targets += t.targets;
  }
  last_eval_ = ce_sum / targets;
  json j{{"step", step_}, {"loss", last_eval_}, {"ppl", std::exp(last_eval_)}, {"tokens", targets},
         {"train_tokens", tokens_}};
  evals_->write(j.dump());
  tb_->scalar("eval/loss", step_, last_eval_);
  tb_->scalar("eval/ppl", step_, std::exp(last_eval_));
  log_info("eval: step ", step_, " loss ", last_eval_, " ppl ", std::exp(last_eval_), " (", targets, " tokens)");
}

void Trainer::log_step(const StepResult& r, double lr, double step_seconds) {
  const int64_t step_tokens = cfg_.train.global_batch_size * cfg_.train.seq_len;
  const double tps = step_tokens / step_seconds;
  const double mfu = flops_.train_flops_per_token() * tps / peak_flops_;
  json j{{"step", step_},
         {"loss", r.loss},
         {"aux_loss", mc_.is_moe() ? json(r.aux) : json(nullptr)},
         {"z_loss", mc_.is_moe() ? json(r.z) : json(nullptr)},
         {"lr", lr},
         {"grad_norm", r.grad_norm},
         {"tokens", tokens_},
         {"tokens_per_s", tps},
         {"mfu", mfu},
         {"step_seconds", step_seconds},
         {"wall_seconds", wall_before_ + seconds_since(t_start_)},
         {"flops", static_cast<double>(tokens_) * flops_.train_flops_per_token()},
         {"skipped", r.skipped}};
  if (ocfg_.precision == optim::Precision::kFp16) j["loss_scale"] = scaler_->scale();
  metrics_->write(j.dump());
  tb_->scalar("train/loss", step_, r.loss);
  if (mc_.is_moe()) tb_->scalar("train/aux_loss", step_, r.aux);
  tb_->scalar("train/lr", step_, lr);
  tb_->scalar("train/grad_norm", step_, r.grad_norm);
  tb_->scalar("perf/tokens_per_s", step_, tps);
  tb_->scalar("perf/mfu", step_, mfu);

  if (mc_.is_moe()) {
    json layers = json::array();
    for (int64_t l = 0; l < static_cast<int64_t>(expert_counts_.size()); ++l) {
      if (expert_counts_[l].empty()) continue;
      ExpertLoad el{l, expert_counts_[l]};
      layers.push_back({{"layer", l},
                        {"fractions", el.fractions()},
                        {"max_over_mean", el.max_over_mean()},
                        {"dead", el.dead()}});
      tb_->scalar("experts/max_over_mean/layer" + std::to_string(l), step_, el.max_over_mean());
    }
    load_log_->write(json{{"step", step_}, {"layers", layers}}.dump());
  }
  if (step_ % cfg_.train.log_every == 0 || step_ == cfg_.train.steps) {
    const double eta = step_seconds * static_cast<double>(cfg_.train.steps - step_);
    char line[320];
    std::snprintf(line, sizeof line,
                  "step %lld/%lld | loss %.4f | aux %.4f | lr %.2e | gnorm %.3f | %.1fk tok/s | MFU %.1f%% | ETA %s%s",
                  static_cast<long long>(step_), static_cast<long long>(cfg_.train.steps), r.loss, r.aux, lr,
                  r.grad_norm, tps / 1e3, 100 * mfu, format_duration(eta).c_str(), r.skipped ? " | SKIPPED" : "");
    log_info(line);
    tb_->flush();
  }
}

TrainSummary Trainer::run() {
  t_start_ = Clock::now();
  data::LoaderConfig lc;
  lc.seq_len = cfg_.train.seq_len;
  lc.global_batch = cfg_.train.global_batch_size;
  lc.vocab_size = mc_.vocab_size;
  lc.seed = cfg_.seed;
  lc.valid_fraction = cfg_.data.valid_fraction;
  lc.split_seed = static_cast<uint64_t>(cfg_.data.synth_seed);
  lc.eos_id = cfg_.data.eos_id;
  loader_ = std::make_unique<data::Loader>(open_training_data(cfg_), lc);
  prepare_run_dir();  // after the data checks: a bad dataset leaves no run directory behind
  init_weights();
  resume();

  const std::string run = cfg_.run_dir;
  const bool append = step_ > 0;
  if (append) {
    truncate_jsonl(run + "/metrics.jsonl", step_);
    truncate_jsonl(run + "/eval.jsonl", step_);
    truncate_jsonl(run + "/expert_load.jsonl", step_);
  }
  metrics_ = std::make_unique<JsonlWriter>(run + "/metrics.jsonl", append);
  evals_ = std::make_unique<JsonlWriter>(run + "/eval.jsonl", append);
  if (mc_.is_moe()) load_log_ = std::make_unique<JsonlWriter>(run + "/expert_load.jsonl", append);
  fs::create_directories(run + "/tb");
  tb_ = std::make_unique<TfEventsWriter>(run + "/tb");
  if (append) tb_->session_start(step_ + 1);

  flops_ = count_flops(mc_, cfg_.train.seq_len);
  peak_flops_ = cfg_.train.peak_flops > 0 ? cfg_.train.peak_flops : measure_gemm_flops();
  log_info("train: ", mc_.model_type, " with ", model_->params().numel(), " parameters (",
           static_cast<int64_t>(flops_.params_active), " active), ", loader_->num_train_documents(),
           " train / ", loader_->num_valid_documents(), " validation documents, ",
           cfg_.train.global_batch_size * cfg_.train.seq_len, " tokens per step, ", n_micro_,
           " micro-batches; MFU against ", peak_flops_ / 1e9, " GFLOP/s");

  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);
  const int64_t step_tokens = cfg_.train.global_batch_size * cfg_.train.seq_len;
  TrainSummary sum;
  while (step_ < cfg_.train.steps) {
    const auto t0 = Clock::now();
    const double lr = optim::lr_at(ocfg_, step_, cfg_.train.steps);
    const data::Batch batch = loader_->next_global_batch();
    const StepResult r = train_step(batch);
    ++step_;
    tokens_ += step_tokens;
    last_loss_ = r.loss;
    log_step(r, lr, seconds_since(t0));
    if (cfg_.train.eval_every > 0 && step_ % cfg_.train.eval_every == 0) evaluate();
    if (cfg_.checkpoint.every > 0 && step_ % cfg_.checkpoint.every == 0) save_checkpoint();
    if (step_ == kill_step_) std::raise(SIGKILL);
    if (step_ == signal_step_) std::raise(SIGTERM);
    if (g_signal.load() != 0 && step_ < cfg_.train.steps) {
      log_warn("train: received signal ", g_signal.load(), " after step ", step_, "; checkpointing and stopping");
      if (last_ckpt_step_ != step_) save_checkpoint();
      sum.interrupted = true;
      break;
    }
  }
  if (!sum.interrupted) {
    if (cfg_.train.eval_every == 0 || step_ % cfg_.train.eval_every != 0) evaluate();
    if (last_ckpt_step_ != step_) save_checkpoint();
  }
  tb_->flush();
  std::signal(SIGTERM, SIG_DFL);
  std::signal(SIGINT, SIG_DFL);

  sum.steps = step_;
  sum.tokens = tokens_;
  sum.final_loss = last_loss_;
  sum.eval_loss = last_eval_;
  sum.wall_seconds = wall_before_ + seconds_since(t_start_);
  sum.train_flops = static_cast<double>(tokens_) * flops_.train_flops_per_token();
  sum.skipped_steps = skipped_;
  sum.last_checkpoint = last_ckpt_;
  json s{{"run_dir", run},
         {"model_type", mc_.model_type},
         {"steps", sum.steps},
         {"tokens", sum.tokens},
         {"final_loss", sum.final_loss},
         {"eval_loss", std::isnan(sum.eval_loss) ? json(nullptr) : json(sum.eval_loss)},
         {"wall_seconds", sum.wall_seconds},
         {"train_flops", sum.train_flops},
         {"train_flops_per_token", flops_.train_flops_per_token()},
         {"params_total", flops_.params_total},
         {"params_active", flops_.params_active},
         {"peak_flops", peak_flops_},
         {"world", 1},
         {"peak_rss_mib", peak_rss_mib()},
         {"skipped_steps", sum.skipped_steps},
         {"interrupted", sum.interrupted},
         {"last_checkpoint", sum.last_checkpoint}};
  write_file_atomic(run + "/summary.json", s.dump(2) + "\n");
  if (sum.interrupted) sum.stop_signal = g_signal.exchange(0);
  return sum;
}

}  // namespace

TrainSummary run_training(const config::RunConfig& cfg) {
  Trainer t(cfg);
  return t.run();
}

}  // namespace moekit::train
