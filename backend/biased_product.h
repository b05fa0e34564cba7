// bias + rows x weight^T with a backward that forms the bias's gradient inside a matrix product. LibTorch's addmm
// backward sums the gradient's columns with a reduction of its own, a further pass over the gradient: ~140 us a
// layer for the attention's output projection at batch 192 on an H200, and ~2.4 ms a training step for the adaptive
// softmax's logits there, whose gradients are (rows x words) wide.
#pragma once

#include <utility>

#include <torch/types.h>

namespace studio {

/// Where the bias's gradient comes from.
enum class BiasGradient {
    ones_row,     ///< a row of ones times the gradient: a thin product, one more read of the gradient. For outputs about
                  ///< as wide as the inputs (the output projection), where the next choice's copy of the rows would cost more.
    ones_column,  ///< the rows carry a column of ones (padded to 8 for aligned products), so the weight's gradient product
                  ///< gives the bias's as one more column: the gradient is read only by the products that read it anyway.
                  ///< For outputs much wider than the inputs (the logits).
};

/// bias + rows x weight^T (rows (M,K), weight (D,K), bias (D,)) = (M,D), as addmm computes it in CUDA autocast's dtype
/// where that is on; the gradients are addmm's, each in its input's dtype.
torch::Tensor biased_product(const torch::Tensor & rows, const torch::Tensor & weight, const torch::Tensor & bias, BiasGradient how);

/// x + bias for x (H,B,T,dh) and a per-head bias (H,1,1,dh) in x's dtype (the attention's q + u and q + v). The bias's
/// gradient, the sum of x's over the batch and the queries, is a product with a row of ones where x's gradient is laid
/// out (B,T,H,dh) or (H,B,T,dh): LibTorch's sum over those dims ran at a quarter of the bandwidth (~48 us a layer at
/// batch 192 on an H200).
torch::Tensor plus_head_bias(const torch::Tensor & x, const torch::Tensor & bias);

/// x + u and x + v for x (H,B,T,dh) and biases (2,H,dh) = (u, v), both laid out head-major, contiguous (H,B,T,dh):
/// one read of x by our kernel where x is laid out (B,T,H,dh), else LibTorch's adds. No gradient: for autograd
/// functions that form the gradients themselves (apart_attention.h's query join). Head-major, the rows of one head
/// are one matrix, which the position keys' gradient splits into parts.
std::pair<torch::Tensor, torch::Tensor> head_major_plus_biases(const torch::Tensor & x, const torch::Tensor & biases);

} // namespace studio
