// Rotary position embedding (Su et al. 2021, RoFormer) in the "rotate_half" convention of
// Hugging Face Llama/Qwen2: the head is split into halves (x1, x2) and
// y = x * cos + cat(-x2, x1) * sin, with angle(pos, i) = pos * theta^(-2i/d).
#pragma once

#include <cstdint>
#include <vector>

namespace moekit::kernels {

// cos/sin tables (S, d): the frequency vector is duplicated over both halves, computed in f32
// exactly as transformers does (inv_freq = 1 / theta^(arange(0, d, 2) / d), angle = pos * inv_freq).
void rope_tables(std::vector<float>* cos, std::vector<float>* sin, int64_t seq, int64_t head_dim, double theta);

// In-place rotation of x (B*S rows, heads*d per row). inverse = true applies the transpose
// rotation, which is the backward of the forward rotation.
void rope_apply(float* x, const float* cos, const float* sin, int64_t batch, int64_t seq, int64_t heads,
                int64_t head_dim, bool inverse);

}  // namespace moekit::kernels
