// log_softmax(logits)[r, column[r]]: the log-probability of one column per row, the adaptive softmax's loss over its
// head and each tail cluster. On the GPU our kernels (log_softmax_at_kernel.h) read the logits in their own dtype and
// write the gradient once in it; elsewhere LibTorch's fp32 log-softmax and a gather.
#pragma once

#include <torch/types.h>

namespace studio {

/// logits (n, V), column (n,) int64 in 0 .. V-1 -> (n,) float32, differentiable w.r.t. the logits. Columns may be
/// -inf (padding: they get probability and gradient 0) as long as no row is all -inf. bf16 logits are not cast to
/// fp32 first where our kernels take them: pass the product as it comes (bf16 under autocast).
torch::Tensor log_softmax_at(const torch::Tensor & logits, const torch::Tensor & column);

/// Whether log_softmax_at takes such logits through our CUDA kernels (built, on, CUDA, bf16 or fp32, unit column
/// stride); else through LibTorch's operations.
bool log_softmax_at_kernel_takes(const torch::Tensor & logits);

} // namespace studio
