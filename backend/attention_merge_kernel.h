// CUDA kernel that joins two attention parts computed apart (apart_attention.h): each part's output weighted by its
// share of the softmax mass, sigmoid(lse_a - lse_b), in one pass over bf16 outputs. LibTorch's operations made ten
// passes (casts to fp32, the shares, two products, a sum, the cast back, a copy). Plain C++ on purpose, as
// rel_attention_kernel.h.
#pragma once

#include <cstdint>

namespace studio {

/// Outputs (X,Y,L,D) bf16 with element strides for the first three dimensions (the last is unit, rows 16-byte
/// aligned); log-sum-exps (X,Y,L) fp32 with element strides.
struct AttentionMergeKernelArgs {
    int64_t sizes[4] = {0, 0, 0, 0};          ///< X, Y, L, D
    const void * out_a = nullptr;
    const void * out_b = nullptr;
    void * out = nullptr;
    int64_t out_a_stride[3] = {0, 0, 0}, out_b_stride[3] = {0, 0, 0}, out_stride[3] = {0, 0, 0};
    const float * lse_a = nullptr;
    const float * lse_b = nullptr;
    int64_t lse_a_stride[3] = {0, 0, 0}, lse_b_stride[3] = {0, 0, 0};
};

/// Whether the kernel takes a head size: a multiple of 8.
bool attention_merge_kernel_supports(int64_t head_dim);

/// Launch on the given cudaStream_t. Return nullptr on success, else CUDA's error text.
const char * launch_attention_merge(const AttentionMergeKernelArgs & args, void * stream);

} // namespace studio
