// A CUDA kernel for inference: the layer norm of a segment and of its memory in one pass, written as the keys'
// input (memory first) and as the queries' input. Replaces two layer norms, the gains' "1 + weight" and the
// concatenation: five launches a layer with one. Plain C++ interface, like rel_attention_kernel.h.
#pragma once

#include <cstdint>

namespace studio {

struct SegmentNormKernelArgs {
    const void * memory = nullptr;        ///< (B,M,D), rows unit-stride; M may be 0
    const void * segment = nullptr;       ///< (B,T,D)
    const void * weight = nullptr;        ///< (D,): the gain is 1 + weight (OffsetLayerNorm)
    const void * bias = nullptr;          ///< (D,)
    void * keys_out = nullptr;            ///< (B,M+T,D) contiguous bf16: normed memory, then normed segment
    void * queries_out = nullptr;         ///< (B,T,D) contiguous bf16: the normed segment again
    bool input_bf16 = true;               ///< memory and segment: bf16, else fp32
    bool params_bf16 = true;              ///< weight and bias: bf16, else fp32
    int64_t batch = 0, mem_len = 0, tgt_len = 0, dim = 0;
    int64_t memory_stride[2] = {0, 0};    ///< batch, position
    int64_t segment_stride[2] = {0, 0};
    float eps = 1e-5f;
};

/// dim must be a multiple of 8 and at most 2048.
bool segment_norm_kernel_supports(int64_t dim);

/// Launches on the given cudaStream_t. Returns nullptr on success, else CUDA's error text.
const char * launch_segment_norm(const SegmentNormKernelArgs & args, void * stream);

} // namespace studio
