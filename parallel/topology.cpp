#include "parallel/topology.h"

#include "core/check.h"

namespace moekit::parallel {

void validate_layout(const LayoutRequest& r) {
  // Collect every violation instead of stopping at the first: a user fixing a launch line
  // wants all of them at once.
  std::string errors;
  auto add = [&](const std::string& s) { errors += (errors.empty() ? "" : "; ") + s; };
  if (r.world < 1) add(detail::concat("world size must be >= 1, got ", r.world));
  if (r.ep < 1) add(detail::concat("ep must be >= 1, got ", r.ep));
  if (r.world >= 1 && r.ep >= 1) {
    if (r.world % r.ep != 0)
      add(detail::concat("world size ", r.world, " is not divisible by ep ", r.ep, " (", r.world, " % ", r.ep, " = ",
                         r.world % r.ep, "; world = ep x edp)"));
    if (r.num_experts == 0 && r.ep > 1)
      add(detail::concat("ep ", r.ep, " > 1 needs a mixture-of-experts model (this model has no routed experts)"));
    if (r.num_experts > 0 && r.num_experts % r.ep != 0)
      add(detail::concat("num_experts ", r.num_experts, " is not divisible by ep ", r.ep, " (", r.num_experts, " % ",
                         r.ep, " = ", r.num_experts % r.ep, ")"));
  }
  if (r.micro_batch < 0 || r.global_batch < 0)
    add(detail::concat("batch sizes must be >= 0, got global ", r.global_batch, ", micro ", r.micro_batch));
  if (r.micro_batch > 0 && r.global_batch > 0 && r.world >= 1) {
    const int64_t per_step = r.micro_batch * r.world;
    if (r.global_batch % per_step != 0)
      add(detail::concat("global batch ", r.global_batch, " is not divisible by micro batch ", r.micro_batch,
                         " x data-parallel ranks ", r.world, " = ", per_step, " (", r.global_batch, " % ", per_step,
                         " = ", r.global_batch % per_step, ")"));
  }
  MOEKIT_CHECK(errors.empty(), "invalid parallel layout (world ", r.world, ", ep ", r.ep, ", edp ",
               (r.ep >= 1 ? r.world / r.ep : 0), "): ", errors);
}

Topology::Topology(int world, int rank, int ep) : world_(world), rank_(rank), ep_(ep) {
  MOEKIT_CHECK(world >= 1, "Topology: world size must be >= 1, got ", world);
  MOEKIT_CHECK(rank >= 0 && rank < world, "Topology: rank ", rank, " is outside [0, ", world, ")");
  MOEKIT_CHECK(ep >= 1, "Topology: ep must be >= 1, got ", ep);
  MOEKIT_CHECK(world % ep == 0, "Topology: world size ", world, " is not divisible by ep ", ep, " (", world, " % ", ep,
               " = ", world % ep, ")");
}

std::vector<int> Topology::ep_group() const {
  std::vector<int> g;
  for (int p = 0; p < ep_; ++p) g.push_back(rank_at(p, edp_rank()));
  return g;
}

std::vector<int> Topology::edp_group() const {
  std::vector<int> g;
  for (int d = 0; d < edp(); ++d) g.push_back(rank_at(ep_rank(), d));
  return g;
}

int64_t Topology::local_experts(int64_t num_experts) const {
  MOEKIT_CHECK(num_experts > 0 && num_experts % ep_ == 0, "num_experts ", num_experts, " is not divisible by ep ", ep_,
               " (", num_experts, " % ", ep_, " = ", num_experts > 0 ? num_experts % ep_ : num_experts, ")");
  return num_experts / ep_;
}

bool Topology::owns_expert(int64_t expert, int64_t num_experts) const {
  return expert_owner_ep_rank(expert, num_experts) == ep_rank();
}

int Topology::expert_owner_ep_rank(int64_t expert, int64_t num_experts) const {
  MOEKIT_CHECK(expert >= 0 && expert < num_experts, "expert ", expert, " is outside [0, ", num_experts, ")");
  return static_cast<int>(expert / local_experts(num_experts));
}

std::string Topology::describe() const {
  return detail::concat("rank ", rank_, " of ", world_, " (ep_rank ", ep_rank(), " of ", ep_, ", edp_rank ",
                        edp_rank(), " of ", edp(), ")");
}

}  // namespace moekit::parallel
