// The output projection's weight of a gated layer: each head's columns times that head's gate (technique 3's scaled
// gate, or the plain one), the same product as gating the heads' outputs at a cost that does not grow with the batch.
// In bf16 training on the GPU our kernels (gated_weight_kernel.h) form it, already rounded to bf16, in one pass and
// its gradients in one.
#pragma once

#include <torch/types.h>

namespace studio {

/// weight (D, H x head_dim), gate (H,) -> (D, H x head_dim): weight[:, h x head_dim + j] x gate[h], differentiable
/// w.r.t. both. bf16 (what autocast would make of it) where our kernels take the operands, else weight's dtype.
torch::Tensor gated_weight(const torch::Tensor & weight, const torch::Tensor & gate, int64_t head_dim);

/// Whether gated_weight takes these operands through our CUDA kernels: built and on, fp32 on the GPU under bf16
/// autocast, 16-byte aligned rows.
bool gated_weight_kernel_takes(const torch::Tensor & weight, const torch::Tensor & gate, int64_t head_dim);

} // namespace studio
