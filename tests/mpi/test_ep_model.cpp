// Expert-parallel model parity: forward + backward + gradient sync with the mpirun layout
// (W ranks, ep from --ep=N) against a single-process model (all experts, LocalCommunicator)
// that every rank builds itself and runs on the whole global batch. Both start from the same
// weights (counter RNG keyed by parameter name), so:
//  - the weights agree bit for bit, tensor by tensor, by HF name;
//  - the loss (CE + global-batch aux + z-loss) agrees with the single-process loss;
//  - after sync_gradients every tensor this rank holds (dense, and its own experts) agrees with
//    the reference gradient of that name;
//  - the global grad norm agrees with the reference norm.
// The hf_pooled and switch forms are per-micro-batch by definition (a rank's micro-batch is
// smaller than the global batch), so the layout-invariant global-batch form is what is tested.
//
// Tolerance: f32 relative error (max |a - b| / max |b| per tensor) <= 2e-5 for gradients and
// 1e-5 for losses. The two runs add the same terms in different orders (W partial gradients
// averaged instead of one GEMM over all rows; expert GEMMs over differently grouped rows), each
// over at most 2 * W * 16 rows, so the expected discrepancy is a few f32 ulps of accumulated
// magnitude (~1e-6); any routing or scaling bug (1/edp instead of 1/W, a lost peer) is >= 1e-1.
#include <cmath>
#include <vector>

#include <unistd.h>

#include <filesystem>

#include "checkpoint/hf_checkpoint.h"
#include "checkpoint/safetensors.h"
#include "config/model_config.h"
#include "core/rng.h"
#include "model/model.h"
#include "mpi_gtest.h"
#include "parallel/device_groups.h"
#include "parallel/grad_sync.h"
#include "parallel/zero1.h"

namespace moekit {
namespace {

constexpr int64_t kSeq = 16, kRowsPerRank = 2;
constexpr uint64_t kSeed = 77;
constexpr double kGradTol = 2e-5, kLossTol = 1e-5;

config::ModelConfig tiny_moe() {
  auto cfg = config::load_model_config(std::string(MOEKIT_SOURCE_DIR) + "/configs/models/tiny-moe.yaml");
  cfg.num_hidden_layers = 3;
  cfg.mlp_only_layers = {1};  // one dense layer between two MoE layers
  return cfg;
}

double max_rel(const float* a, const float* b, int64_t n) {
  double diff = 0, mag = 1e-12;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    mag = std::max(mag, std::fabs(static_cast<double>(b[i])));
  }
  return diff / mag;
}

TEST(ExpertParallelModel, MatchesSingleProcessOnTheGlobalBatch) {
  auto& ctx = test::mpi_context();
  const int W = ctx.topo.world(), r = ctx.topo.rank();
  const config::ModelConfig cfg = tiny_moe();
  const int64_t B = kRowsPerRank * W, T = B * kSeq;
  std::vector<int64_t> tokens(T + 1);
  CounterRng rng(kSeed, "tokens");
  for (int64_t i = 0; i <= T; ++i) tokens[i] = static_cast<int64_t>(rng.uniform(i) * cfg.vocab_size) % cfg.vocab_size;
  std::vector<int64_t> inputs(tokens.begin(), tokens.end() - 1), targets(tokens.begin() + 1, tokens.end());
  model::LossConfig loss{model::AuxLossForm::kGlobalBatch, 0.05, 0.01};

  // Single process, whole global batch.
  model::Model ref(cfg);
  ref.params().init(kSeed, cfg.initializer_range);
  const model::LossTerms ref_loss = ref.forward(inputs.data(), targets.data(), B, kSeq, loss);
  ref.backward();

  // This rank's slice, its experts only.
  model::ModelParallel par{ctx.world.get(), ctx.ep.get()};
  model::Model dist(cfg, par);
  dist.params().init(kSeed, cfg.initializer_range);
  const int64_t off = r * kRowsPerRank * kSeq;
  model::LossTerms l = dist.forward(inputs.data() + off, targets.data() + off, kRowsPerRank, kSeq, loss);
  dist.backward();
  auto& P = dist.params();
  parallel::GradArenas arenas{P.grads(false), P.numel(false), P.grads(true), P.numel(true)};
  parallel::DeviceGroups groups(ctx, backend::cpu());
  parallel::sync_gradients(backend::cpu(), arenas, ctx, groups);
  const double norm = parallel::global_grad_norm(backend::cpu(), arenas, ctx);

  // The local experts are the contiguous block of this ep rank.
  const int64_t El = cfg.num_experts / ctx.topo.ep();
  EXPECT_EQ(dist.experts_held().first, ctx.topo.ep_rank() * El);
  EXPECT_EQ(dist.experts_held().count, El);
  EXPECT_EQ(P.numel(true) * ctx.topo.ep(), ref.params().numel(true));

  // Losses: local CE means averaged over ranks (equal target counts) = global mean.
  const double ce = ctx.world->all_reduce_value(l.ce, parallel::ReduceOp::kAvg);
  const double z = ctx.world->all_reduce_value(l.z_loss, parallel::ReduceOp::kAvg);
  EXPECT_NEAR(ce, ref_loss.ce, kLossTol * ref_loss.ce);
  EXPECT_NEAR(z, ref_loss.z_loss, kLossTol * ref_loss.z_loss);
  EXPECT_NEAR(l.aux_global, ref_loss.aux_global, kLossTol * ref_loss.aux_global);  // same on every rank
  EXPECT_GT(ref_loss.aux_global, 0.5);

  double worst = 0;
  std::string worst_name;
  for (const auto& s : P.specs()) {
    ASSERT_TRUE(ref.params().has(s.name)) << s.name;  // no collective below depends on this
    model::Param a = P.get(s.name), b = ref.params().get(s.name);
    for (int64_t i = 0; i < s.numel(); ++i)
      if (a.w[i] != b.w[i]) {
        ADD_FAILURE() << s.name << ": initial weights differ at " << i;
        break;
      }
    const double e = max_rel(a.g, b.g, s.numel());
    if (e > worst) worst = e, worst_name = s.name;
    EXPECT_LE(e, kGradTol) << s.name << " (rank " << r << ")";
  }
  backend::Backend& be = backend::cpu();
  const double ref_norm = std::sqrt(be.sum_squares(ref.params().grads(false), ref.params().numel(false)) +
                                    be.sum_squares(ref.params().grads(true), ref.params().numel(true)));
  std::printf("[rank %d] W=%d ep=%d: loss %.7f vs %.7f, worst grad rel err %.2e (%s), grad norm %.7f vs %.7f\n", r,
              W, ctx.topo.ep(), ce + loss.aux_coef * l.aux_global + loss.z_coef * z, ref_loss.total, worst,
              worst_name.c_str(), norm, ref_norm);
  EXPECT_NEAR(norm, ref_norm, kLossTol * ref_norm);
}

// ZeRO-1 leaves on each rank's shard what the plain sync leaves there, gives the same norm, and
// its all-gather hands every replica the shard owners' weights.
TEST(ExpertParallelModel, Zero1ShardsMatchThePlainGradientSync) {
  auto& ctx = test::mpi_context();
  const config::ModelConfig cfg = tiny_moe();
  model::Model m(cfg, {ctx.world.get(), ctx.ep.get()});
  auto& P = m.params();
  P.init(kSeed, cfg.initializer_range);
  std::vector<int64_t> in(kRowsPerRank * kSeq), tg(in.size());
  for (size_t i = 0; i < in.size(); ++i)
    in[i] = (i * 31 + 7 * ctx.world->rank()) % cfg.vocab_size, tg[i] = (i * 17 + 3) % cfg.vocab_size;
  m.forward(in.data(), tg.data(), kRowsPerRank, kSeq, {model::AuxLossForm::kHfPooled, 0.01, 0.0});
  m.backward();
  std::vector<float> dense(P.grads(false), P.grads(false) + P.numel(false));
  std::vector<float> expert(P.grads(true), P.grads(true) + P.numel(true));
  parallel::GradArenas plain{dense.data(), P.numel(false), expert.data(), P.numel(true)};
  parallel::DeviceGroups groups(ctx, backend::cpu());
  parallel::sync_gradients(backend::cpu(), plain, ctx, groups);
  const double plain_norm = parallel::global_grad_norm(backend::cpu(), plain, ctx);

  std::vector<parallel::ArenaTensor> arena[2];
  for (const auto& s : P.specs()) arena[s.expert].push_back({s.name, s.offset, s.numel(), s.shape[0]});
  parallel::Zero1 z(arena[0], P.numel(false), arena[1], P.numel(true), ctx, backend::cpu(), groups);
  parallel::GradArenas g{P.grads(false), P.numel(false), P.grads(true), P.numel(true)};
  z.reduce_gradients(g);
  EXPECT_NEAR(z.grad_norm(g), plain_norm, 1e-6 * plain_norm);
  for (int e = 0; e < 2; ++e)
    for (const auto& sl : e ? z.expert_slices() : z.dense_slices()) {
      const float* want = (e ? expert.data() : dense.data()) + sl.offset;
      EXPECT_LE(max_rel(P.grads(e) + sl.offset, want, sl.numel), 1e-6) << arena[e][sl.tensor].name;
    }
  // Each rank marks its shard; after the gather every element carries its owner's mark.
  const float mark = 1000.f + ctx.world->rank();
  for (int e = 0; e < 2; ++e)
    for (const auto& sl : e ? z.expert_slices() : z.dense_slices())
      std::fill(P.values(e) + sl.offset, P.values(e) + sl.offset + sl.numel, mark);
  z.gather_weights(P.values(false), P.values(true));
  int64_t unmarked = 0;
  for (int e = 0; e < 2; ++e)
    for (int64_t i = 0; i < P.numel(e); ++i) unmarked += P.values(e)[i] < 1000.f;
  EXPECT_EQ(unmarked, 0);
  // Dense shards are the same on every rank: the world agrees on every dense element.
  std::vector<float> d(P.values(false), P.values(false) + P.numel(false)), dmax = d;
  ctx.world->all_reduce(dmax.data(), static_cast<int64_t>(dmax.size()), parallel::ReduceOp::kMax);
  EXPECT_EQ(d, dmax);
}

// The routing extensions across layouts: a capacity factor that drops pairs, sigmoid scores and
// an aux-loss-free expert bias. Capacity is decided per micro-batch on the rank that owns the
// tokens, before the all-to-all, so the reference runs the same micro-batches one after the
// other (gradients averaged over them as the sync averages over ranks); every layout must give
// its losses, gradients and the drops.
TEST(ExpertParallelModel, CapacityAndExpertBiasMatchTheSameMicroBatchesInOneProcess) {
  auto& ctx = test::mpi_context();
  const int W = ctx.topo.world(), r = ctx.topo.rank();
  config::ModelConfig cfg = tiny_moe();
  cfg.moe_router_score_function = "sigmoid";
  cfg.moe_router_enable_expert_bias = true;
  cfg.norm_topk_prob = true;
  const int64_t T = kRowsPerRank * kSeq;
  std::vector<int64_t> tokens(W * T + 1);
  CounterRng rng(kSeed + 5, "tokens");
  for (size_t i = 0; i < tokens.size(); ++i)
    tokens[i] = static_cast<int64_t>(rng.uniform(i) * cfg.vocab_size) % cfg.vocab_size;
  const model::LossConfig loss{model::AuxLossForm::kSwitch, 0.05, 0.0};
  const moe::MoeOptions opt{1.0};
  // A bias that moves the routing: the same on every rank (as after the trainer's updates).
  std::vector<std::vector<float>> bias(cfg.num_hidden_layers);
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
    if (cfg.is_sparse_layer(l))
      for (int64_t e = 0; e < cfg.num_experts; ++e) bias[l].push_back(0.05f * static_cast<float>((e * 5 + l) % 7) - 0.1f);

  model::Model ref(cfg);
  ref.params().init(kSeed, cfg.initializer_range);
  ref.set_expert_bias(bias);
  ref.set_moe_options(opt);
  double ref_ce = 0, ref_aux = 0;
  int64_t ref_dropped = 0;
  for (int q = 0; q < W; ++q) {
    const int64_t* in = tokens.data() + q * T;
    const model::LossTerms t = ref.forward(in, in + 1, kRowsPerRank, kSeq, loss);
    ref.backward();
    ref_ce += t.ce / W;
    ref_aux += t.aux_switch / W;
    ref_dropped += ref.dropped_pairs();
  }
  backend::cpu().scale(ref.params().grads(false), 1.f / static_cast<float>(W), ref.params().numel(false));
  backend::cpu().scale(ref.params().grads(true), 1.f / static_cast<float>(W), ref.params().numel(true));
  EXPECT_GT(ref_dropped, 0) << "the capacity factor must drop pairs in this test";

  model::Model dist(cfg, {ctx.world.get(), ctx.ep.get()});
  dist.params().init(kSeed, cfg.initializer_range);
  dist.set_expert_bias(bias);
  dist.set_moe_options(opt);
  const int64_t* in = tokens.data() + r * T;
  const model::LossTerms l = dist.forward(in, in + 1, kRowsPerRank, kSeq, loss);
  dist.backward();
  const int64_t dropped = ctx.world->all_reduce_value<int64_t>(dist.dropped_pairs());
  auto& P = dist.params();
  parallel::GradArenas arenas{P.grads(false), P.numel(false), P.grads(true), P.numel(true)};
  parallel::DeviceGroups groups(ctx, backend::cpu());
  parallel::sync_gradients(backend::cpu(), arenas, ctx, groups);
  EXPECT_EQ(dropped, ref_dropped);
  EXPECT_NEAR(ctx.world->all_reduce_value(l.ce, parallel::ReduceOp::kAvg), ref_ce, kLossTol * ref_ce);
  EXPECT_NEAR(ctx.world->all_reduce_value(l.aux_switch, parallel::ReduceOp::kAvg), ref_aux, kLossTol * ref_aux);
  for (const auto& s : P.specs()) {
    const double e = max_rel(P.get(s.name).g, ref.params().get(s.name).g, s.numel());
    EXPECT_LE(e, kGradTol) << s.name << " (rank " << r << ")";
  }
}

// An HF directory written by one process loads into every expert-parallel rank: each reads
// its own experts (bit for bit) and skips the others' without complaint.
TEST(ExpertParallelModel, LoadsOwnExpertsFromHfDirectory) {
  auto& ctx = test::mpi_context();
  const config::ModelConfig cfg = tiny_moe();
  int32_t pid = static_cast<int32_t>(getpid());
  ctx.world->broadcast(&pid, 1, 0);
  const std::string dir = "/tmp/moekit_ep_hf_" + std::to_string(pid);
  model::Model full(cfg);
  full.params().init(kSeed + 1, cfg.initializer_range);
  if (ctx.world->rank() == 0) {
    std::filesystem::remove_all(dir);
    checkpoint::save_hf_model(full, dir, DType::kF32);
  }
  ctx.world->barrier();
  model::Model part(cfg, {ctx.world.get(), ctx.ep.get()});
  checkpoint::load_hf_weights(&part, checkpoint::SafetensorsDir::open(dir));
  for (const auto& s : part.params().specs()) {
    model::Param a = part.params().get(s.name), b = full.params().get(s.name);
    EXPECT_TRUE(std::equal(a.w, a.w + s.numel(), b.w)) << s.name;
  }
  ctx.world->barrier();
  if (ctx.world->rank() == 0) std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moekit
