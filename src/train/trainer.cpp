// moekit train: the loop of trainer.h. One process is the special case of a ParallelContext of
// one rank. With W ranks every rank runs the same loop on its slice of the global batch, and the
// points where ranks must agree are explicit: gradient sync and the global norm (parallel/
// grad_sync.h), the step's loss, skip and stop decisions (all-reduced so no rank takes another
// branch), evaluation, and checkpoints (each rank writes what it owns; rank 0 commits).
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
#include "backend/backend.h"
#include "core/bounded_parse.h"
#include "core/check.h"
#include "core/device.h"
#include "core/half.h"
#include "core/log.h"
#include "data/loader.h"
#include "data/synth.h"
#include "model/model.h"
#include "optim/finite.h"
#include "optim/optim.h"
#include "parallel/device_groups.h"
#include "parallel/grad_sync.h"
#include "parallel/watchdog.h"
#include "parallel/zero1.h"
#include "train/metrics.h"
#include "train/model_io.h"
#include "train/resume_check.h"
#include "train/tfevents.h"

namespace moekit::train {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

std::atomic<int> g_signal{0};
extern "C" void on_stop_signal(int sig) { g_signal.store(sig); parallel::Watchdog::note_stop_signal(); }

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

double current_rss_mib() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    MOEKIT_CHECK(f.good(), "cannot write '", tmp, "'");
    f << text;
    f.flush();
    if (!f.good()) {  // no half-written temp file left behind
      std::error_code ec;
      fs::remove(tmp, ec);
      MOEKIT_FAIL("write to '", tmp, "' failed (disk full?)");
    }
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
    const std::optional<json> j = try_parse_json(line);
    if (!j || !j->is_object()) continue;  // a line torn by the crash
    if (json_value_or<int64_t>(*j, "step", 0) <= step) kept += line + "\n";
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
    case model::AuxLossForm::kGlobalBatch: return t.aux_global;
    default: return std::isnan(t.aux_hf) ? 0.0 : t.aux_hf;
  }
}

// Build the data set, generating the synthetic corpus first when the config asks for it (rank 0
// writes it; the others wait, then open the same files).
data::TokenDataset open_training_data(const config::RunConfig& cfg, parallel::ParallelContext& ctx) {
  const std::string& first = cfg.data.train.front();
  if (ctx.topo.rank() == 0 && cfg.data.synth && !fs::exists(first + ".idx")) {
    data::SynthConfig sc;
    sc.vocab_size = cfg.model_config.vocab_size;
    sc.num_tokens = cfg.data.synth_tokens;
    sc.seed = static_cast<uint64_t>(cfg.data.synth_seed);
    sc.eos_id = cfg.data.eos_id >= 0 ? cfg.data.eos_id : cfg.model_config.eos_token_id;
    sc.copy_id = sc.eos_id == 1 ? 2 : 1;
    const fs::path parent = fs::path(first).parent_path();
    if (!parent.empty()) fs::create_directories(parent);
    log_info("data: generating the synthetic corpus ", first, " (", sc.num_tokens, " tokens, vocab ",
             sc.vocab_size, ", seed ", sc.seed, ")");
    const data::SynthStats st = data::write_synth_corpus(first, sc);
    log_info("data: ", st.documents, " documents, ", st.tokens, " tokens; entropy bound ", st.entropy_bound,
             " nats/token (uniform guess ", st.log_vocab, ")");
  }
  ctx.world->barrier();
  return data::TokenDataset::open(cfg.data.train);
}

// Evaluation was asked for but the held-out documents cannot fill one window: say so once, with
// the numbers and the keys that change them, instead of a silent null eval_loss at the end.
void warn_if_eval_impossible(const data::Loader& loader, const config::RunConfig& cfg) {
  if (cfg.train.eval_batches == 0 || cfg.data.valid_fraction == 0 || loader.num_valid_windows() > 0) return;
  int64_t tokens = 0;
  for (int64_t d : loader.valid_documents()) tokens += loader.packed_length(d);
  log_warn("eval: off for this run: the ", loader.num_valid_documents(), " held-out document(s) hold ", tokens,
           " tokens, fewer than one window of train.seq_len + 1 = ", cfg.train.seq_len + 1,
           "; raise data.valid_fraction (now ", cfg.data.valid_fraction, ") or lower train.seq_len (eval_loss ",
           "stays null)");
}

class Trainer {
 public:
  Trainer(const config::RunConfig& cfg, parallel::ParallelContext& ctx);
  TrainSummary run();

 private:
  struct StepResult {
    double loss = 0, aux = 0, z = 0, grad_norm = 0;
    int64_t dropped = 0;  // (token, slot) pairs dropped by moe.capacity_factor, global batch
    bool skipped = false;
  };
  void prepare_run_dir();
  void write_resolved_config();
  void init_weights();
  void resume();
  StepResult train_step(const data::Batch& batch);
  void evaluate();
  void save_checkpoint();
  void log_step(const StepResult& r, double lr, double step_seconds);
  void open_logs(bool append);
  void sync_logs();
  json meta_json() const;
  bool rank0() const { return ctx_.topo.rank() == 0; }
  bool owns_in_checkpoint(const model::ParamSpec& s) const;
  // What optimizer tensor i is: rows [row_begin, row_begin + rows) of spec `spec` (rows -1: all).
  struct OptSlice {
    size_t spec;
    int64_t row_begin, rows;
  };
  parallel::GradArenas grad_arenas();
  // A device tensor's n floats as host memory: the tensor itself on the CPU, else a copy in a
  // staging buffer (one tensor at a time: checkpoints stream from wherever the state lives).
  const float* host_view(const float* dev, int64_t n);
  // Rows of a checkpoint tensor into device memory (through the staging buffer off the CPU).
  void read_tensor(const checkpoint::TrainCheckpointReader& r, const std::string& group, const std::string& name,
                   float* dev, int64_t row_begin, int64_t rows, int64_t numel);
  void note_device_memory();

  config::RunConfig cfg_;
  parallel::ParallelContext& ctx_;
  const config::ModelConfig& mc_;
  std::string ckpt_dir_;
  model::LossConfig loss_;
  // Where the model, its gradients and the optimizer state live (train.device): the CPU backend,
  // or this rank's GPU. Data-parallel traffic on that memory goes over groups_.
  std::unique_ptr<backend::Backend> own_backend_;
  backend::Backend* be_ = &backend::cpu();
  std::unique_ptr<parallel::DeviceGroups> groups_;
  std::unique_ptr<model::Model> model_;
  std::vector<float> stage_;
  double device_used_mib_ = 0;
  std::unique_ptr<data::Loader> loader_;
  std::unique_ptr<optim::AdamW> opt_;
  std::vector<optim::TensorRef> all_refs_;  // every local tensor (opt_ may hold only slices)
  std::vector<OptSlice> opt_slices_;        // parallel to opt_->tensors()
  std::unique_ptr<parallel::Zero1> zero_;   // set when parallel.zero1
  std::unique_ptr<optim::LossScaler> scaler_;
  optim::OptimConfig ocfg_;
  std::unique_ptr<JsonlWriter> metrics_, evals_, load_log_;
  std::unique_ptr<TfEventsWriter> tb_;
  std::string generation_config_;  // the run's HF source's generation_config.json ("" if none)
  FlopCount flops_;
  double peak_flops_ = 0;
  double base_rss_mib_ = 0;  // before the model and optimizer exist (the memory plan counts above it)
  int64_t n_micro_ = 0;

  int64_t step_ = 0;  // completed steps
  int64_t tokens_ = 0;
  int64_t skipped_ = 0, consecutive_skips_ = 0;
  int64_t nan_skipped_ = 0;  // skips of the NaN policy (not the fp16 scaler's), for max_skipped_fraction
  double wall_before_ = 0;  // wall seconds of earlier segments of this run (resume)
  Clock::time_point t_start_;
  double last_eval_ = std::numeric_limits<double>::quiet_NaN();
  double last_loss_ = std::numeric_limits<double>::quiet_NaN();
  int64_t last_ckpt_step_ = -1;
  std::string last_ckpt_;
  std::vector<std::vector<int64_t>> expert_counts_;  // per layer, this step
  int64_t nan_step_ = -1, kill_step_ = -1, signal_step_ = -1, poison_step_ = -1;
};

Trainer::Trainer(const config::RunConfig& cfg, parallel::ParallelContext& ctx)
    : cfg_(cfg), ctx_(ctx), mc_(cfg_.model_config), ckpt_dir_((fs::path(cfg.run_dir) / "checkpoints").string()) {
  MOEKIT_CHECK(cfg_.parallel.ep == ctx_.topo.ep(), "train: parallel.ep ", cfg_.parallel.ep,
               " but the process groups were made for ep ", ctx_.topo.ep());
  parallel::LayoutRequest lr;
  lr.world = ctx_.topo.world();
  lr.ep = ctx_.topo.ep();
  lr.num_experts = mc_.is_moe() ? mc_.num_experts : 0;
  lr.global_batch = cfg_.train.global_batch_size;
  lr.micro_batch = cfg_.train.micro_batch_size;
  parallel::validate_layout(lr);
  cfg_.validate(ctx_.topo.world());
  ocfg_ = optim::optim_config_from_yaml(YAML::Load(cfg_.optim_yaml), cfg_.source);
  ocfg_.validate();
  loss_ = loss_config(cfg_);
  if (cfg_.train.device == "cuda") {
    // fp16 would need fp16 activations (its loss scaling exists to keep their gradients in
    // range); the CUDA kernels compute in f32 or bf16.
    MOEKIT_CHECK(ocfg_.precision != optim::Precision::kFp16, cfg_.source,
                 ": optim.precision fp16 with train.device cuda is not supported (use bf16 or fp32)");
    MOEKIT_CHECK(built_with_cuda(), cfg_.source, ": train.device is 'cuda' but this moekit was built without CUDA "
                 "(MOEKIT_CUDA=OFF)");
    MOEKIT_CHECK(cuda_device_count() > 0, cfg_.source, ": train.device is 'cuda' but no CUDA device is visible on ",
                 "this machine (use train.device: cpu)");
    const int device = parallel::detect_launch().local_rank % cuda_device_count();
    own_backend_ = backend::make_cuda(device, ocfg_.precision == optim::Precision::kBf16 ? DType::kBF16 : DType::kF32);
    be_ = own_backend_.get();
  }
  // Each rank runs global / (micro x W) micro-batches of its slice per step.
  n_micro_ = cfg_.train.global_batch_size / (cfg_.train.micro_batch_size * ctx_.topo.world());
  nan_step_ = env_step("MOEKIT_DEBUG_NAN_STEP");
  kill_step_ = env_step("MOEKIT_DEBUG_KILL_STEP");
  signal_step_ = env_step("MOEKIT_DEBUG_SIGNAL_STEP");
  generation_config_ = checkpoint::source_generation_config(run_hf_source(cfg_));
  poison_step_ = env_step("MOEKIT_DEBUG_POISON_STEP");
}

void Trainer::prepare_run_dir() {
  if (!rank0()) return;
  fs::create_directories(cfg_.run_dir);
  const bool has_run = fs::exists(fs::path(cfg_.run_dir) / "metrics.jsonl");
  MOEKIT_CHECK(!has_run || cfg_.resume != "none", "run_dir '", cfg_.run_dir,
               "' already holds a run (metrics.jsonl); continue it with --set resume=auto or choose another run_dir");
}

// After resume() succeeded: a failed resume must leave the run directory as it was.
void Trainer::write_resolved_config() {
  if (!rank0()) return;
  // The resolved config, with the optimizer section expanded to every key.
  config::RunConfig resolved = cfg_;
  resolved.optim_yaml = optim::optim_config_to_yaml(ocfg_);
  write_file_atomic((fs::path(cfg_.run_dir) / "config.resolved.yaml").string(), config::run_config_to_yaml(resolved));
}

void Trainer::init_weights() {
  groups_ = std::make_unique<parallel::DeviceGroups>(ctx_, *be_);
  model_ = std::make_unique<model::Model>(mc_, model::ModelParallel{ctx_.world.get(), ctx_.ep.get(), &groups_->ep()},
                                          *be_);
  model_->set_moe_options({cfg_.moe.capacity_factor});
  if (!cfg_.init_from.empty()) {
    log_info("init: weights from ", cfg_.init_from);
    checkpoint::load_hf_weights(model_.get(), checkpoint::SafetensorsDir::open(cfg_.init_from));
  } else {
    model_->params().init(cfg_.seed, mc_.initializer_range);
  }
  auto& P = model_->params();
  const auto& specs = P.specs();
  const size_t csz = dtype_size(be_->compute_dtype());
  // The GEMM copy of elements [offset, offset + n) of an arena, when the backend has one.
  auto compute_at = [&](bool expert, int64_t offset) -> void* {
    void* c = P.compute(expert);
    return c ? static_cast<char*>(c) + offset * static_cast<int64_t>(csz) : nullptr;
  };
  all_refs_.clear();
  for (const auto& s : specs) {
    model::Param p = P.get(s.name);
    all_refs_.push_back({s.name, p.w, p.g, s.numel(), compute_at(s.expert, s.offset)});
  }
  // The optimizer updates whole tensors, or with ZeRO-1 this rank's row slices of them.
  std::vector<optim::TensorRef> refs;
  opt_slices_.clear();
  if (!cfg_.parallel.zero1) {
    refs = all_refs_;
    for (size_t i = 0; i < specs.size(); ++i) opt_slices_.push_back({i, 0, -1});
  } else {
    std::vector<parallel::ArenaTensor> arena[2];
    std::vector<size_t> spec_of[2];
    for (size_t i = 0; i < specs.size(); ++i) {
      const auto& s = specs[i];
      arena[s.expert].push_back({s.name, s.offset, s.numel(), s.shape.empty() ? 1 : s.shape[0]});
      spec_of[s.expert].push_back(i);
    }
    zero_ = std::make_unique<parallel::Zero1>(arena[0], P.numel(false), arena[1], P.numel(true), ctx_, *be_,
                                              *groups_);
    for (int e = 0; e < 2; ++e)
      for (const auto& sl : e ? zero_->expert_slices() : zero_->dense_slices()) {
        const size_t i = spec_of[e][sl.tensor];
        refs.push_back({specs[i].name, P.values(e) + sl.offset, P.grads(e) + sl.offset, sl.numel,
                        compute_at(e, sl.offset)});
        opt_slices_.push_back({i, sl.row_begin, sl.rows});
      }
  }
  opt_ = std::make_unique<optim::AdamW>(ocfg_, std::move(refs), *be_);
  // Mixed precision rounds the weights the optimizer owns: every replica takes the owners' copy.
  if (zero_) {
    zero_->gather_weights(P.values(false), P.values(true));
    P.mark_values_changed();
  }
  scaler_ = std::make_unique<optim::LossScaler>(ocfg_);
  if (!be_->host_memory()) log_info("train: on ", be_->name(), ", computing in ", dtype_name(be_->compute_dtype()));
}

const float* Trainer::host_view(const float* dev, int64_t n) {
  if (be_->host_memory()) return dev;
  stage_.resize(static_cast<size_t>(n));
  be_->download(stage_.data(), dev, static_cast<size_t>(n) * sizeof(float));
  return stage_.data();
}

void Trainer::read_tensor(const checkpoint::TrainCheckpointReader& r, const std::string& group,
                          const std::string& name, float* dev, int64_t row_begin, int64_t rows, int64_t numel) {
  if (be_->host_memory()) {
    r.read(group, name, dev, row_begin, rows);
    return;
  }
  stage_.resize(static_cast<size_t>(numel));
  r.read(group, name, stage_.data(), row_begin, rows);
  be_->upload(dev, stage_.data(), static_cast<size_t>(numel) * sizeof(float));
}

void Trainer::note_device_memory() {
  if (!be_->host_memory()) device_used_mib_ = std::max(device_used_mib_, be_->device_memory_used_mib());
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
  m["nan_skipped_steps"] = nan_skipped_;
  m["consecutive_skips"] = consecutive_skips_;
  m["wall_seconds"] = wall_before_ + seconds_since(t_start_);
  m["seed"] = cfg_.seed;
  m["layout"] = {{"world", ctx_.topo.world()}, {"ep", ctx_.topo.ep()}};
  m["world_size"] = ctx_.topo.world();  // commit_checkpoint then requires every rank's file
  m["zero1"] = cfg_.parallel.zero1;
  m["device"] = cfg_.train.device;
  m["model_config"] = json::parse(config::model_config_to_hf_json(mc_));
  m["generation_config"] = generation_config_.empty() ? json(nullptr) : json(generation_config_);  // for export
  if (mc_.moe_router_enable_expert_bias) {
    // The aux-loss-free balancing state: per MoE layer the selection bias (identical on every
    // rank). JSON numbers print a float's exact value, so resume gets the same bits back.
    json bias = json::object();
    const auto b = model_->expert_bias();
    for (size_t l = 0; l < b.size(); ++l)
      if (!b[l].empty()) bias[model::expert_bias_name(static_cast<int64_t>(l))] = b[l];
    m["expert_bias"] = bias;
  }
  m["precision"] = ocfg_.precision == optim::Precision::kFp32 ? "fp32"
                   : ocfg_.precision == optim::Precision::kBf16 ? "bf16" : "fp16";
  return m;
}

// Every tensor is written exactly once over the ranks (the reader refuses overlapping pieces):
// dense tensors by rank 0, an expert by the first replica of its edp group (edp_rank 0), which
// holds it whole under its global HF name.
bool Trainer::owns_in_checkpoint(const model::ParamSpec& s) const {
  return s.expert ? ctx_.topo.edp_rank() == 0 : rank0();
}

void Trainer::save_checkpoint() {
  const auto t0 = Clock::now();
  {
    // Rank 0 creates step_N.tmp/ (removing a stale one), then the others open their files in it.
    std::unique_ptr<checkpoint::TrainCheckpointWriter> w;
    if (rank0()) w = std::make_unique<checkpoint::TrainCheckpointWriter>(ckpt_dir_, step_, 0, true);
    ctx_.world->barrier();
    if (!rank0())
      w = std::make_unique<checkpoint::TrainCheckpointWriter>(ckpt_dir_, step_, ctx_.topo.rank(), false);
    const auto& specs = model_->params().specs();
    for (size_t i = 0; i < opt_slices_.size(); ++i) {
      const OptSlice& sl = opt_slices_[i];
      const model::ParamSpec& spec = specs[sl.spec];
      const int64_t n = opt_->tensors()[i].numel;
      if (sl.rows < 0) {  // a whole tensor, replicated: one owner writes it
        if (!owns_in_checkpoint(spec)) continue;
        w->write("master", spec.name, spec.shape, host_view(opt_->master(i), n));
        w->write("exp_avg", spec.name, spec.shape, host_view(opt_->exp_avg(i), n));
        w->write("exp_avg_sq", spec.name, spec.shape, host_view(opt_->exp_avg_sq(i), n));
        continue;
      }
      // ZeRO-1: this rank's rows; the shards of the replicas partition every tensor.
      Shape piece = spec.shape.empty() ? Shape{1} : spec.shape;
      const int64_t full_rows = piece[0];
      piece[0] = sl.rows;
      w->write("master", spec.name, piece, host_view(opt_->master(i), n), sl.row_begin, full_rows);
      w->write("exp_avg", spec.name, piece, host_view(opt_->exp_avg(i), n), sl.row_begin, full_rows);
      w->write("exp_avg_sq", spec.name, piece, host_view(opt_->exp_avg_sq(i), n), sl.row_begin, full_rows);
    }
    w->close();
  }
  ctx_.world->barrier();  // every rank file is closed and renamed before the commit lists them
  if (rank0()) {
    // Everything logged up to this step reaches the disk before the checkpoint a resume starts
    // from exists: a crash after the commit must not lose log lines the resume will not redo.
    sync_logs();
    config::RunConfig resolved = cfg_;
    resolved.optim_yaml = optim::optim_config_to_yaml(ocfg_);
    last_ckpt_ = checkpoint::commit_checkpoint(ckpt_dir_, step_, meta_json(), config::run_config_to_yaml(resolved),
                                              static_cast<int>(cfg_.checkpoint.keep));
  }
  ctx_.world->barrier();  // nobody resumes from or overwrites a checkpoint that is not committed
  if (!rank0()) last_ckpt_ = (fs::path(ckpt_dir_) / checkpoint::step_dir_name(step_)).string();
  last_ckpt_step_ = step_;
  log_info("checkpoint: step ", step_, " -> ", last_ckpt_, " (", format_duration(seconds_since(t0)), ")");
}

void Trainer::resume() {
  if (cfg_.resume == "none") return;
  // resolve_resume verifies every byte of the candidates: rank 0 does it, the others follow.
  std::string dir;
  if (rank0()) dir = checkpoint::resolve_resume(ckpt_dir_, cfg_.resume, resume_check(mc_));
  int64_t len = static_cast<int64_t>(dir.size());
  ctx_.world->broadcast(&len, 1, 0);
  dir.resize(static_cast<size_t>(len));
  ctx_.world->broadcast(reinterpret_cast<uint8_t*>(dir.data()), len, 0);
  if (dir.empty()) {
    log_info("resume: no checkpoint in ", ckpt_dir_, "; starting from step 0");
    return;
  }
  checkpoint::TrainCheckpointReader r(dir);
  const json& m = r.meta();
  // Tensors by HF name whatever layout wrote them: each rank reads its tensors (its experts
  // only), or with ZeRO-1 only the rows of its shard.
  const auto& specs = model_->params().specs();
  for (size_t i = 0; i < opt_slices_.size(); ++i) {
    const OptSlice& sl = opt_slices_[i];
    const std::string& n = specs[sl.spec].name;
    MOEKIT_CHECK(r.has("master", n), "resume: checkpoint ", dir, " has no tensor '", n,
                 "' (was it written for another model?)");
    MOEKIT_CHECK(r.shape("master", n) == specs[sl.spec].shape, "resume: tensor '", n, "' in ", dir, " has shape ",
                 shape_str(r.shape("master", n)), ", the model expects ", shape_str(specs[sl.spec].shape));
    const int64_t numel = opt_->tensors()[i].numel;
    read_tensor(r, "master", n, opt_->master(i), sl.row_begin, sl.rows, numel);
    read_tensor(r, "exp_avg", n, opt_->exp_avg(i), sl.row_begin, sl.rows, numel);
    read_tensor(r, "exp_avg_sq", n, opt_->exp_avg_sq(i), sl.row_begin, sl.rows, numel);
  }
  try {
    opt_->restore(m.at("optimizer_steps").get<int64_t>());
    if (zero_) zero_->gather_weights(model_->params().values(false), model_->params().values(true));
    model_->params().mark_values_changed();
    if (mc_.moe_router_enable_expert_bias) model_->set_expert_bias(read_expert_bias(m, mc_, dir + "/meta.json"));
    loader_->restore(data::LoaderState::from_json(m.at("loader")));
    scaler_->restore(m.at("loss_scale").get<double>(), m.at("loss_scale_good_steps").get<int64_t>());
    step_ = m.at("step").get<int64_t>();
    tokens_ = m.at("tokens").get<int64_t>();
    skipped_ = m.at("skipped_steps").get<int64_t>();
    nan_skipped_ = json_value_or<int64_t>(m, "nan_skipped_steps", 0);
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
    if (mb == 0) note_device_memory();  // every activation of the step is alive now
    r.loss += t.ce / n_micro_;
    r.aux += chosen_aux(t, loss_.aux) / n_micro_;
    if (!std::isnan(t.z_loss)) r.z += t.z_loss / n_micro_;
    model_->backward();
    r.dropped += model_->dropped_pairs();
    for (int64_t l = 0; l < static_cast<int64_t>(expert_counts_.size()); ++l) {
      const std::vector<int64_t>& c = model_->expert_counts()[l];
      for (size_t e = 0; e < c.size(); ++e) expert_counts_[l][e] += c[e];
    }
  }
  // The step's numbers are the means over all ranks (equal slices: the global-batch means), and
  // the expert load is counted over the global batch. Every rank then sees the same values and
  // takes the same skip/clip decisions.
  if (ctx_.distributed()) {
    double sums[3] = {r.loss, r.aux, r.z};
    ctx_.world->all_reduce(sums, 3, parallel::ReduceOp::kAvg);
    r.loss = sums[0], r.aux = sums[1], r.z = sums[2];
    std::vector<int64_t> counts = {r.dropped};
    for (const auto& c : expert_counts_) counts.insert(counts.end(), c.begin(), c.end());
    ctx_.world->all_reduce(counts.data(), static_cast<int64_t>(counts.size()), parallel::ReduceOp::kSum);
    r.dropped = counts[0];
    size_t at = 1;
    for (auto& c : expert_counts_)
      for (auto& v : c) v = counts[at++];
  }
  if (step_ == nan_step_) r.loss = std::numeric_limits<double>::quiet_NaN();

  const parallel::GradArenas ga = grad_arenas();
  // Micro-batch losses are means over equal token counts: average their gradients.
  const float gscale = 1.0f / static_cast<float>(n_micro_);
  bool overflow = false;
  for (auto [g, n] : {std::pair{ga.dense, ga.dense_n}, std::pair{ga.expert, ga.expert_n}}) {
    if (gscale != 1.0f) be_->scale(g, gscale, n);
    // fp16 gradient storage, emulated on the CPU: the scaled gradient is rounded to fp16 (where
    // large values overflow to inf, as they would on a GPU), then unscaled in f32.
    if (ocfg_.precision == optim::Precision::kFp16)
      overflow |= be_->round_through_f16(g, static_cast<float>(scaler_->scale()), n);
  }
  if (ctx_.distributed())
    overflow = ctx_.world->all_reduce_value<int32_t>(overflow ? 1 : 0, parallel::ReduceOp::kMax) != 0;
  if (zero_) {
    zero_->reduce_gradients(ga);
    r.grad_norm = zero_->grad_norm(ga);
  } else {
    parallel::sync_gradients(*be_, ga, ctx_, *groups_);
    r.grad_norm = parallel::global_grad_norm(*be_, ga, ctx_);
  }
  const bool finite = std::isfinite(r.loss) && std::isfinite(r.grad_norm) && !overflow;
  if (ocfg_.precision == optim::Precision::kFp16 && scaler_->update(!finite)) {
    r.skipped = true;
  } else if (!finite) {
    MOEKIT_CHECK(ocfg_.nan_policy == optim::NanPolicy::kSkip, "step ", step_ + 1, ": non-finite loss (", r.loss,
                 ") or gradient norm (", r.grad_norm, "); optim.nan_policy is 'stop'");
    r.skipped = true;
    ++nan_skipped_;
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
  // torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is < 1.
  const double coef = optim::clip_coefficient(r.grad_norm, ocfg_.clip_grad_norm);
  if (coef < 1.0) optim::scale_grads(opt_->tensors(), static_cast<float>(coef), *be_);
  if (step_ + 1 == poison_step_) {  // MOEKIT_DEBUG_POISON_STEP: a NaN enters the state in this update
    const float nan = std::numeric_limits<float>::quiet_NaN();
    be_->upload(opt_->exp_avg(0), &nan, sizeof nan);
  }
  const int64_t bad = opt_->step(optim::lr_at(ocfg_, step_, cfg_.train.steps));
  if (bad > 0) {
    // A NaN that reached the weights or the optimizer state cannot be skipped away (every later
    // step would be skipped and the broken state checkpointed): stop, naming the tensor.
    const std::string when = "step " + std::to_string(step_ + 1);
    optim::check_finite_state(*opt_, when);
    optim::check_finite_weights(all_refs_, when, *be_);
    MOEKIT_FAIL(when, ": ", bad, " weights are not finite after the optimizer update (loss ", r.loss,
                ", gradient norm ", r.grad_norm, " were finite); stopping before they are checkpointed");
  }
  if (zero_) {
    zero_->gather_weights(model_->params().values(false), model_->params().values(true));
    model_->params().mark_values_changed();
  }
  // Aux-loss-free balancing: every rank applies the same update from the same global load.
  if (mc_.moe_router_enable_expert_bias && cfg_.moe.router_bias_update_rate > 0)
    model_->update_expert_bias(expert_counts_, cfg_.moe.router_bias_update_rate);
  return r;
}

parallel::GradArenas Trainer::grad_arenas() {
  auto& P = model_->params();
  return {P.grads(false), P.numel(false), P.grads(true), P.numel(true)};
}

void Trainer::evaluate() {
  const int64_t B = cfg_.train.micro_batch_size;
  const int64_t n = std::min(cfg_.train.eval_batches * B, loader_->num_valid_windows());
  if (n == 0) return;
  double ce_sum = 0;
  int64_t targets = 0;
  model::LossConfig lc;
  lc.aux = model::AuxLossForm::kNone;
  // Batch i goes to rank i % W. With expert parallelism a forward is a collective of the ep
  // group, so every rank makes the same number of forwards: a rank out of batches repeats the
  // first one and ignores the result.
  const int W = ctx_.topo.world(), rank = ctx_.topo.rank();
  const int64_t batches = (n + B - 1) / B, rounds = (batches + W - 1) / W;
  for (int64_t round = 0; round < rounds; ++round) {
    const int64_t i = round * W + rank;
    const bool real = i < batches;
    const int64_t w = real ? i * B : 0;
    const data::Batch b = loader_->valid_batch(w, std::min(B, n - w));
    const model::LossTerms t = model_->forward(b.inputs.data(), b.targets.data(), b.rows, b.seq_len, lc, false);
    if (!real) continue;
    ce_sum += t.ce * t.targets;
    targets += t.targets;
  }
  if (ctx_.distributed()) {
    double sums[2] = {ce_sum, static_cast<double>(targets)};
    ctx_.world->all_reduce(sums, 2, parallel::ReduceOp::kSum);
    ce_sum = sums[0];
    targets = static_cast<int64_t>(sums[1]);
  }
  last_eval_ = ce_sum / targets;
  if (!rank0()) return;
  json j{{"step", step_}, {"loss", last_eval_}, {"ppl", std::exp(last_eval_)}, {"tokens", targets},
         {"train_tokens", tokens_}};
  evals_->write(j.dump());
  tb_->scalar("eval/loss", step_, last_eval_);
  tb_->scalar("eval/ppl", step_, std::exp(last_eval_));
  log_info("eval: step ", step_, " loss ", last_eval_, " ppl ", std::exp(last_eval_), " (", targets, " tokens)");
}

// Rank 0's log files; a resumed run first drops the lines written after its checkpoint.
void Trainer::open_logs(bool append) {
  const std::string run = cfg_.run_dir;
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
}

void Trainer::sync_logs() {
  for (JsonlWriter* w : {metrics_.get(), evals_.get(), load_log_.get()})
    if (w) w->sync();
  if (tb_) tb_->sync();
}

void Trainer::log_step(const StepResult& r, double lr, double step_seconds) {
  if (!rank0()) return;  // the numbers are global already; one writer
  const int64_t step_tokens = cfg_.train.global_batch_size * cfg_.train.seq_len;
  const double tps = step_tokens / step_seconds;
  const double mfu = peak_flops_ > 0 ? flops_.train_flops_per_token() * tps / peak_flops_ : 0.0;
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
  if (cfg_.moe.capacity_factor > 0) j["dropped"] = r.dropped;
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
  base_rss_mib_ = current_rss_mib();
  data::LoaderConfig lc;
  lc.seq_len = cfg_.train.seq_len;
  lc.global_batch = cfg_.train.global_batch_size;
  lc.vocab_size = mc_.vocab_size;
  lc.seed = cfg_.seed;
  lc.valid_fraction = cfg_.data.valid_fraction;
  lc.split_seed = static_cast<uint64_t>(cfg_.data.synth_seed);
  lc.eos_id = cfg_.data.eos_id;
  loader_ = std::make_unique<data::Loader>(open_training_data(cfg_, ctx_), lc);
  if (rank0()) warn_if_eval_impossible(*loader_, cfg_);
  prepare_run_dir();  // after the data checks: a bad dataset leaves no run directory behind
  init_weights();
  resume();
  write_resolved_config();

  const std::string run = cfg_.run_dir;
  const bool append = step_ > 0;
  if (rank0()) open_logs(append);
  ctx_.world->barrier();

  flops_ = count_flops(mc_, cfg_.train.seq_len);
  // The GEMM probe runs on rank 0 alone (ranks measuring at once would measure each other);
  // MFU is then against W times that rate.
  if (cfg_.train.peak_flops > 0) peak_flops_ = cfg_.train.peak_flops;
  else if (!be_->host_memory()) peak_flops_ = be_->peak_flops();  // 0 for an unknown device: MFU is then 0
  else peak_flops_ = rank0() ? measure_gemm_flops() : 0.0;
  ctx_.world->broadcast(&peak_flops_, 1, 0);
  peak_flops_ *= ctx_.topo.world();
  log_info("train: ", mc_.model_type, " with ", model_->params().numel(), " parameters on rank 0 (",
           static_cast<int64_t>(flops_.params_active), " active), ", loader_->num_train_documents(),
           " train / ", loader_->num_valid_documents(), " validation documents, ",
           cfg_.train.global_batch_size * cfg_.train.seq_len, " tokens per step, ", n_micro_,
           " micro-batches per rank; ", ctx_.topo.world(), " rank(s), ep ", ctx_.topo.ep(), ", edp ",
           ctx_.topo.edp(), "; MFU against ", peak_flops_ / 1e9, " GFLOP/s");

  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);
  const int64_t step_tokens = cfg_.train.global_batch_size * cfg_.train.seq_len;
  TrainSummary sum;
  while (step_ < cfg_.train.steps) {
    const auto t0 = Clock::now();
    const double lr = optim::lr_at(ocfg_, step_, cfg_.train.steps);
    const data::Batch batch = loader_->next_batch(ctx_.topo.rank(), ctx_.topo.world());
    const StepResult r = parallel::watchdog().run_step(step_ + 1, [&] { return train_step(batch); });
    ++step_;
    tokens_ += step_tokens;
    last_loss_ = r.loss;
    log_step(r, lr, seconds_since(t0));
    if (cfg_.train.eval_every > 0 && step_ % cfg_.train.eval_every == 0) evaluate();
    if (cfg_.checkpoint.every > 0 && step_ % cfg_.checkpoint.every == 0) save_checkpoint();
    if (step_ == kill_step_) std::raise(SIGKILL);
    if (step_ == signal_step_) std::raise(SIGTERM);
    // A signal may reach some ranks only (or at different steps): stop together.
    int32_t sig = g_signal.load();
    if (ctx_.distributed()) sig = ctx_.world->all_reduce_value<int32_t>(sig, parallel::ReduceOp::kMax);
    if (sig != 0 && step_ < cfg_.train.steps) {
      g_signal.store(sig);
      log_warn("train: received signal ", sig, " after step ", step_, "; checkpointing and stopping");
      if (last_ckpt_step_ != step_) save_checkpoint();
      sum.interrupted = true;
      break;
    }
  }
  if (!sum.interrupted) {
    if (cfg_.train.eval_every == 0 || step_ % cfg_.train.eval_every != 0) evaluate();
    if (cfg_.checkpoint.final && last_ckpt_step_ != step_) save_checkpoint();
  }
  if (tb_) tb_->flush();
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
         {"world", ctx_.topo.world()},
         {"ep", ctx_.topo.ep()},
         {"peak_rss_mib", peak_rss_mib()},
         {"device", cfg_.train.device},
         {"peak_device_mib", be_->host_memory() ? json(nullptr) : json(be_->peak_allocated_bytes() / 1048576.0)},
         {"device_used_mib", be_->host_memory() ? json(nullptr) : json(device_used_mib_)},
         {"base_rss_mib", base_rss_mib_},
         {"skipped_steps", sum.skipped_steps},
         {"interrupted", sum.interrupted},
         {"last_checkpoint", sum.last_checkpoint}};
  if (rank0()) write_file_atomic(run + "/summary.json", s.dump(2) + "\n");
  if (sum.interrupted) sum.stop_signal = g_signal.exchange(0);
  else optim::check_skipped_fraction(ocfg_, nan_skipped_, step_);  // after the logs and the checkpoint
  return sum;
}

}  // namespace

TrainSummary run_training(const config::RunConfig& cfg, parallel::ParallelContext& ctx) {
  Trainer t(cfg, ctx);
  return t.run();
}

TrainSummary run_training(const config::RunConfig& cfg) {
  auto ctx = parallel::make_parallel_context(std::make_unique<parallel::LocalCommunicator>("world"),
                                             static_cast<int>(cfg.parallel.ep));
  return run_training(cfg, *ctx);
}

}  // namespace moekit::train
