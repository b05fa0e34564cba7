// The additive bias of the content columns in relative attention: the position term shifted into place (Transformer-
// XL's relative shift), plus u . k_j where the kernel's query is q rather than q + u, scaled and masked. Training feeds it to the memory-efficient kernel with its
// gradient; on the GPU our kernels (content_bias_kernel.h) form it and its gradients in one pass each.
#pragma once

#include <torch/types.h>

namespace studio {

/// position (H,B,T,S): (q_i + v) . r before the shift, row i holding distances S-1 .. 0 as rel_shift expects, or only
/// its last P < S columns (H,B,T,P) where no kept entry reads the others (kept entries of row i read columns j + T-1-i;
/// with same_length, T-1 and up); key_bias (H,B,S): u . k_j, or undefined where the kernel's query already holds u
/// (q + u); keep (T,S) bool. Returns (H,B,T,S) in position's dtype:
///   (rel_shift(position)[..., i, j] + key_bias[..., j]) x scale where keep[i][j], else -inf;
/// differentiable w.r.t. position and key_bias.
torch::Tensor content_bias(const torch::Tensor & position, const torch::Tensor & key_bias, const torch::Tensor & keep, double scale);

/// Whether content_bias takes these operands through our CUDA kernels (built, on, CUDA, both bf16 or both fp32,
/// unit stride along the keys; key_bias may be undefined); else through LibTorch's operations.
bool content_bias_kernel_takes(const torch::Tensor & position, const torch::Tensor & key_bias, const torch::Tensor & keep);

} // namespace studio
