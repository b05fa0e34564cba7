// CUDA kernels for training: the gradients of a tail cluster's target log-probabilities, log_softmax(h W^T + b)[target],
// without the (n, words) logits or their gradient ever reaching memory. With WikiText-103's 160,000-word tail and
// random targets those are 19 GB a step at batch 512, written and read five times by the products, the log-softmax
// and its gradient. Here each logit is formed again on the tensor cores where it is needed: one launch walks each
// row tile across the words for the hidden rows' gradient, one walks each word tile across the rows for the weight's
// and the bias's; the targets' own terms, one a row, are left to the caller. The forward is tail_log_prob_kernel.h's,
// which also gives the rows' log-sum-exps. Plain C++ interface.
#pragma once

#include <cstdint>

namespace studio {

/// Both matrices bf16, contiguous, 16-byte aligned, laid out as tail_laid_out_columns says (tail_log_prob_kernel.h):
/// ones beside the hidden rows, the biases beside the words. The gradients fp32, added to: grad_hidden zeroed by the caller, grad_weight and grad_bias holding the
/// targets' own terms, grad_out(row) x hidden(row) at the row's target word and grad_out(row) in its bias.
struct TailLogProbGradKernelArgs {
    const void * hidden = nullptr;        ///< (n, tail_laid_out_columns(dim))
    const void * weight = nullptr;        ///< (words, tail_laid_out_columns(dim))
    const int64_t * target = nullptr;     ///< (n,) word within the cluster, 0 .. words-1
    const float * lse = nullptr;          ///< (n,) each row's log-sum-exp over the words (the forward's)
    const float * grad_out = nullptr;     ///< (n,) the upstream gradient of each row's log-probability
    float * grad_hidden = nullptr;        ///< (n, dim) contiguous
    float * grad_weight = nullptr;        ///< (words, dim) contiguous
    float * grad_bias = nullptr;          ///< (words,)
    int64_t rows = 0, words = 0, dim = 0;
};

/// Inner dimensions that are multiples of 8 up to 128 (a tail's width at div_value 4 is 128, 32 or 8); the caller
/// pads others with zero columns.
bool tail_log_prob_grad_kernel_supports(int64_t dim);

/// Launches on the given cudaStream_t. Returns nullptr on success, else CUDA's error text.
const char * launch_tail_log_prob_grad(const TailLogProbGradKernelArgs & args, void * stream);

} // namespace studio
