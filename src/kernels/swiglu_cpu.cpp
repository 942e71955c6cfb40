#include "kernels/swiglu.h"
#include "kernels/swiglu_math.h"

namespace moekit::kernels {

void swiglu_forward(float* h, const float* gu, int64_t rows, int64_t width) {
#pragma omp parallel for schedule(static) if (rows * width > 32768)
  for (int64_t t = 0; t < rows; ++t) {
    const float* g = gu + t * 2 * width;
    const float* u = g + width;
    float* hr = h + t * width;
    for (int64_t i = 0; i < width; ++i) hr[i] = swiglu(g[i], u[i]);
  }
}

void swiglu_backward(float* dgu, const float* dh, const float* gu, int64_t rows, int64_t width) {
#pragma omp parallel for schedule(static) if (rows * width > 32768)
  for (int64_t t = 0; t < rows; ++t) {
    const float* g = gu + t * 2 * width;
    const float* u = g + width;
    const float* dhr = dh + t * width;
    float* dg = dgu + t * 2 * width;
    float* du = dg + width;
    for (int64_t i = 0; i < width; ++i) swiglu_grad(g[i], u[i], dhr[i], &dg[i], &du[i]);
  }
}

}  // namespace moekit::kernels
