// CUDA kernels for a gated layer's output projection in bf16 training: the fp32 weight's head columns scaled by their
// gates and rounded to bf16 in one pass, and in one pass back the weight's gradient and each gate's. LibTorch's
// operations took three kernels forward (the gates spread over the columns, the product, autocast's cast) and five
// backward per layer, most of them tiny. Plain C++ on purpose, as rel_attention_kernel.h.
#pragma once

#include <cstdint>

namespace studio {

/// The weight (rows, heads x head_dim) is fp32 and row-major; head h owns columns [h x head_dim, (h+1) x head_dim).
struct GatedWeightKernelArgs {
    int64_t rows = 0, heads = 0, head_dim = 0;
    const float * weight = nullptr;  ///< (rows, heads x head_dim)
    const float * gate = nullptr;    ///< (heads,)
    /// forward: out (rows, heads x head_dim) bf16 = weight[r][c] x gate[c / head_dim]
    void * out = nullptr;
    /// backward, from grad_out (rows, heads x head_dim) bf16: grad_weight = grad_out x gate (fp32, same layout) and
    /// grad_gate[h] = sum of grad_out x weight over head h's columns (fp32, summed in a fixed order)
    const void * grad_out = nullptr;
    float * grad_weight = nullptr;
    float * grad_gate = nullptr;
};

/// Whether the kernels take these sizes: 16-byte rows (head_dim and heads x head_dim multiples of 8).
bool gated_weight_kernel_supports(int64_t heads, int64_t head_dim);

/// Launch on the given cudaStream_t. Return nullptr on success, else CUDA's error text.
const char * launch_gated_weight_forward(const GatedWeightKernelArgs & args, void * stream);
const char * launch_gated_weight_backward(const GatedWeightKernelArgs & args, void * stream);

} // namespace studio
