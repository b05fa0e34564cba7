// CUDA kernels: the layer norm of a segment and of its memory in one pass, written as the keys' input (memory first)
// and as the queries' input, and its backward. Replaces two layer norms, the gains' "1 + weight", the concatenation
// and autocast's casts of the three products' inputs (and in training the gradients' casts back and their sums).
// Plain C++ interface, like rel_attention_kernel.h.
#pragma once

#include <cstdint>

namespace studio {

struct SegmentNormKernelArgs {
    const void * memory = nullptr;        ///< (B,M,D), rows unit-stride; M may be 0
    const void * segment = nullptr;       ///< (B,T,D)
    const void * weight = nullptr;        ///< (D,): the gain is 1 + weight (OffsetLayerNorm)
    const void * bias = nullptr;          ///< (D,)
    void * keys_out = nullptr;            ///< (B,M+T,D) contiguous bf16: normed memory, then normed segment
    void * queries_out = nullptr;         ///< (B,T,D) contiguous bf16: the normed segment again; null = not written
    bool input_bf16 = true;               ///< memory and segment: bf16, else fp32
    bool params_bf16 = true;              ///< weight and bias: bf16, else fp32
    int64_t batch = 0, mem_len = 0, tgt_len = 0, dim = 0;
    int64_t memory_stride[2] = {0, 0};    ///< batch, position
    int64_t segment_stride[2] = {0, 0};
    float eps = 1e-5f;
    float * mean_out = nullptr;           ///< optional (B*(M+T),): each row's mean, for the backward
    float * inverse_std_out = nullptr;    ///< with mean_out: each row's 1 / sqrt(variance + eps)
    /// Optional (B,T,D), rows unit-stride, in the segment's dtype or bf16 (addend_bf16): added to the segment's rows
    /// before they are normed, the sum rounded to the segment's dtype first (as a separate add would leave it). The
    /// backward takes the sums as its segment (sum_out) and gives the addend its gradient (grad_addend).
    const void * addend = nullptr;
    bool addend_bf16 = false;
    int64_t addend_stride[2] = {0, 0};    ///< batch, position
    void * sum_out = nullptr;             ///< with addend, optional (B,T,D) contiguous, the segment's dtype: the sums
};

/// The backward, given the forward's arguments (inputs, weight, strides) and its row statistics. The memory gets no
/// gradient (it is carried detached); its rows add to the weight's and bias's gradients.
struct SegmentNormBackwardKernelArgs {
    SegmentNormKernelArgs forward;
    const float * mean = nullptr;         ///< (B*(M+T),)
    const float * inverse_std = nullptr;
    const void * grad_keys = nullptr;     ///< (B,M+T,D) contiguous bf16, or nullptr (no gradient)
    const void * grad_queries = nullptr;  ///< (B,T,D) contiguous bf16, or nullptr
    void * grad_segment = nullptr;        ///< (B,T,D) contiguous, the segment's dtype
    /// Optional (B,T,D) contiguous, the segment's dtype: a gradient the segment has besides the norm's (the residual
    /// stream's, where the forward's sums went on), added into grad_segment.
    const void * grad_sum = nullptr;
    void * grad_addend = nullptr;         ///< optional (B,T,D) contiguous bf16: grad_segment again, rounded (an addend's)
    float * weight_partial = nullptr;     ///< (blocks, D): each block's sum of g x^ over its rows
    float * bias_partial = nullptr;       ///< (blocks, D): each block's sum of g
    int64_t blocks = 0;                   ///< segment_norm_backward_blocks(rows)
};

/// dim must be a multiple of 8 and at most 2048.
bool segment_norm_kernel_supports(int64_t dim);

/// Launches on the given cudaStream_t. Returns nullptr on success, else CUDA's error text.
const char * launch_segment_norm(const SegmentNormKernelArgs & args, void * stream);

/// How many blocks (partial rows) the backward uses for this many rows: at most 1024.
int64_t segment_norm_backward_blocks(int64_t rows);
const char * launch_segment_norm_backward(const SegmentNormBackwardKernelArgs & args, void * stream);

} // namespace studio
