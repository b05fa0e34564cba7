// A CUDA kernel for inference: the log-probability of each row's target word in one tail cluster of the adaptive
// softmax, log_softmax(h W^T + b)[target], without the (n, words) logit tensor. The tails' inner dimension is narrow
// (D / div_value^i: 128, 32, 8) and their word count large (160,000 for WikiText-103's second tail), so the product
// is bound by writing its output: here each block keeps a running log-sum-exp of its columns in registers and only
// (n, splits) partial results reach memory. fp32 arithmetic, like the path it replaces: bf16 rows go through the
// tensor cores with fp32 accumulation (up to 128 wide against the words laid out in bf16, as autocast would round
// fp32 weights for the product; wider, against bf16 weights only), other operands through fp32 multiply-adds.
// Training's forward is the same launch. Plain C++ interface.
#pragma once

#include <cstdint>

namespace studio {

struct TailLogProbKernelArgs {
    const void * hidden = nullptr;        ///< (n, dim), row stride hidden_stride, unit column stride
    const void * weight = nullptr;        ///< (words, dim) contiguous
    const void * bias = nullptr;          ///< (words,)
    const int64_t * target = nullptr;     ///< (n,) word within the cluster, 0 .. words-1 (read at this cluster's rows)
    float * out = nullptr;                ///< (n,) log-probabilities (written at this cluster's rows only)
    float * lse = nullptr;                ///< (n,) where given: each row's log-sum-exp over the words (for the gradient)
    /// This cluster's rows without the host knowing how many: row_index[range[0] .. range[0]+range[1]-1] (both in
    /// device memory). Null: rows 0 .. n-1. The grid is sized for n rows; blocks past the count return at once, so
    /// the call has static shapes and can be captured in a CUDA graph.
    const int64_t * row_index = nullptr;
    const int64_t * range = nullptr;
    float * workspace = nullptr;          ///< tail_log_prob_workspace_floats(n, words) floats
    /// Where given (bf16 rows, dim <= 128): the words laid out as tail_laid_out_columns says, 16-byte aligned, read by
    /// a kernel that brings each tile in while it uses the last; weight and bias are then not read.
    const void * laid_out_weight = nullptr;
    bool hidden_bf16 = true, weight_bf16 = true; ///< each bf16, else fp32 (the bias follows the weight)
    int64_t rows = 0, words = 0, dim = 0, hidden_stride = 0;
};

/// The layout the kernels read the words in (and the training gradients the hidden rows too) for dim <= 128: each row's
/// dim values, zeros to its width (dim rounded up to 16, 32, 64 or 128), at that column the word's bias (or a one
/// beside a hidden row), then zeros: tail_width + 16 columns, bf16. The tensor cores then form the logits whole.
#ifdef __CUDACC__
#define STUDIO_TAIL_LAYOUT __host__ __device__
#else
#define STUDIO_TAIL_LAYOUT
#endif
STUDIO_TAIL_LAYOUT constexpr int64_t tail_width(int64_t dim) { return dim <= 16 ? 16 : dim <= 32 ? 32 : dim <= 64 ? 64 : 128; }
STUDIO_TAIL_LAYOUT constexpr int64_t tail_laid_out_columns(int64_t dim) { return tail_width(dim) + 16; }

/// Any positive dim.
bool tail_log_prob_kernel_supports(int64_t dim);
int64_t tail_log_prob_workspace_floats(int64_t rows, int64_t words);

/// Launches on the given cudaStream_t. Returns nullptr on success, else CUDA's error text.
const char * launch_tail_log_prob(const TailLogProbKernelArgs & args, void * stream);

} // namespace studio
