#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/rmsnorm.h"
#include "kernels/rmsnorm_math.h"

namespace moekit::kernels {

void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t rows, int64_t dim, float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < rows; ++t) {
    const float* xr = x + t * dim;
    float* yr = y + t * dim;
    float ss = 0.f;
    for (int64_t i = 0; i < dim; ++i) ss += xr[i] * xr[i];
    float r = rmsnorm_rstd(ss, static_cast<int>(dim), eps);
    rstd[t] = r;
    for (int64_t i = 0; i < dim; ++i) yr[i] = w[i] * (xr[i] * r);
  }
}

void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                      int64_t rows, int64_t dim, bool accumulate) {
  // dw is a reduction over rows: per-thread partials, summed in a fixed order (deterministic).
  int nthreads = 1;
#ifdef _OPENMP
  nthreads = omp_get_max_threads();
#endif
  std::vector<float> partial(static_cast<size_t>(nthreads) * dim, 0.f);
#pragma omp parallel num_threads(nthreads)
  {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    float* dwp = partial.data() + static_cast<size_t>(tid) * dim;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < rows; ++t) {
      const float* xr = x + t * dim;
      const float* dyr = dy + t * dim;
      float* dxr = dx + t * dim;
      float r = rstd[t];
      float acc = 0.f;
      for (int64_t i = 0; i < dim; ++i) acc += w[i] * dyr[i] * xr[i];
      float mean = acc / static_cast<float>(dim);
      for (int64_t i = 0; i < dim; ++i) {
        float g = rmsnorm_dx(xr[i], w[i], dyr[i], r, mean);
        dxr[i] = accumulate ? dxr[i] + g : g;
        dwp[i] += dyr[i] * xr[i] * r;
      }
    }
  }
  for (int th = 0; th < nthreads; ++th)
    for (int64_t i = 0; i < dim; ++i) dw[i] += partial[static_cast<size_t>(th) * dim + i];
}

}  // namespace moekit::kernels
