// CUDA kernels for training's loss: log_softmax(x)[r, t[r]] of (n, V) logits and its gradient, reading and writing
// only the logits' own dtype. The adaptive softmax's head and tails have up to 160,000 words and ~12,000 rows a
// step; LibTorch's path (bf16 logits cast to fp32, an fp32 log-softmax written, and in backward an fp32 zeros tensor,
// a scatter, the log-softmax backward and a cast back) spent ~13% of a GPU step in memory traffic around them. Here
// the forward reads each row once (an online max and sum in fp32) and writes two floats per row; the backward reads
// the row once more and writes its gradient once. Columns may be -inf (padding columns of zero weights and -inf bias):
// they add exp = 0 to the sum and get gradient 0; a row is never all -inf. Plain C++ interface.
#pragma once

#include <cstdint>

namespace studio {

struct LogSoftmaxAtKernelArgs {
    const void * logits = nullptr;        ///< (rows, cols), row stride logits_stride elements, unit column stride
    bool logits_bf16 = true;              ///< bf16, else fp32 (the gradient takes the same dtype)
    int64_t rows = 0, cols = 0, logits_stride = 0;
    const int64_t * target = nullptr;     ///< (rows,) column per row, 0 .. cols-1 (another one: out is NaN)
    float * out = nullptr;                ///< (rows,) forward: x[r, t[r]] - lse[r]
    float * lse = nullptr;                ///< (rows,) written by the forward, read by the backward: logsumexp_j x[r, j]
    const float * grad_out = nullptr;     ///< (rows,) backward: the upstream gradient g of out
    void * grad_logits = nullptr;         ///< (rows, cols), row stride grad_stride, the logits' dtype: g[r] ([j == t[r]] - p[r, j])
    int64_t grad_stride = 0;
};

/// Forward: reads logits and target, writes out and lse. On the given cudaStream_t; nullptr on success, else
/// CUDA's error text. Any cols >= 1.
const char * launch_log_softmax_at_forward(const LogSoftmaxAtKernelArgs & args, void * stream);
/// Backward: reads logits, target, lse and grad_out, writes grad_logits.
const char * launch_log_softmax_at_backward(const LogSoftmaxAtKernelArgs & args, void * stream);

} // namespace studio
