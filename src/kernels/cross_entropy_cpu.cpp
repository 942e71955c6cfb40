#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cross_entropy.h"
#include "kernels/cross_entropy_math.h"

namespace moekit::kernels {

double cross_entropy(float* dlogits, const float* logits, const int64_t* targets, int64_t rows, int64_t vocab,
                     float grad_scale) {
  double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (int64_t t = 0; t < rows; ++t) {
    const float* z = logits + t * vocab;
    float* dz = dlogits ? dlogits + t * vocab : nullptr;
    if (targets[t] < 0) {
      if (dz) std::memset(dz, 0, sizeof(float) * vocab);
      continue;
    }
    float mx = *std::max_element(z, z + vocab);
    double sum = 0.0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(z[i] - mx));
    double lse = mx + std::log(sum);
    total += lse - z[targets[t]];
    if (dz) {
      for (int64_t i = 0; i < vocab; ++i) dz[i] = ce_grad<double>(z[i], lse, grad_scale);
      dz[targets[t]] -= grad_scale;
    }
  }
  return total;
}

}  // namespace moekit::kernels
