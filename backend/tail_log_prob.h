// A tail cluster's log-probabilities at the targets by our kernels, log_softmax(projected W^T + b)[column], without
// the (n, words) logits: at inference (tail_log_prob_kernel.h) and, differentiable, in training
// (tail_log_prob_grad_kernel.h). The adaptive softmax's loss (adaptive_io.h) takes them where they apply.
#pragma once

#include <cstdint>
#include <string>

#include <torch/types.h>

namespace studio {

/// Whether the inference kernel takes rows like `like` and this cluster's weights: no gradient, on the GPU, where
/// built and on, bf16 or fp32.
bool tail_kernel_applies(const torch::Tensor & like, const torch::Tensor & weight, const torch::Tensor & bias);

/// Inference: projected (n,d), weight (words,d), bias (words,), column (n,) -> (n,) fp32. With row_index and range
/// (device tensors: all rows in cluster order, and this cluster's [start, count]), only those rows are read and
/// written, and the host need not know how many there are. Undefined where the kernel does not apply.
/// words: tail_words_for_kernels(weight, bias), where the caller keeps it from call to call (else formed here).
torch::Tensor tail_log_prob_by_kernel(const torch::Tensor & projected, const torch::Tensor & weight, const torch::Tensor & bias,
                                      const torch::Tensor & column, const torch::Tensor & row_index = {}, const torch::Tensor & range = {},
                                      const torch::Tensor & words = {});
/// The words as our kernels read them (bf16, whatever the weight's dtype, as autocast rounds it; each word's bias
/// beside its weights): for tail_log_prob_by_kernel. Undefined where the kernels would not read them so.
torch::Tensor tail_words_for_kernels(const torch::Tensor & weight, const torch::Tensor & bias);

/// Whether training takes a tail through the kernels, by STUDIO_TAIL_GRADIENT's value: "ops" never (the logits,
/// log_softmax_at and the products: for timing), else always. On an H200 the kernels take 3-6% off a step at batches
/// 24-512 and keep a batch-512 step's peak at 17.6 GB instead of 51.8.
bool tail_gradient_by_kernels(const std::string & setting);
/// STUDIO_TAIL_GRADIENT's value as the process reads it, and a way to set it (the selftest's "kernels").
void set_tail_gradient_setting(const std::string & setting);
std::string tail_gradient_setting();

/// Training: as tail_log_prob_by_kernel over all n rows, differentiable w.r.t. projected, weight and bias. The weight
/// and bias enter the products in bf16, as autocast would cast them; their gradients come back in their own dtype.
/// Undefined where the kernels do not take the operands: they want a gradient, the GPU (where built and on),
/// projected bf16 (bf16 autocast or a bf16 model) with unit column stride, d <= 128 (padded to a multiple of 8), and
/// tail_gradient_by_kernels not to say no.
torch::Tensor trainable_tail_log_prob(const torch::Tensor & projected, const torch::Tensor & weight, const torch::Tensor & bias,
                                      const torch::Tensor & column);

} // namespace studio
