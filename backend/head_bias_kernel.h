// CUDA kernel for q + u and q + v (biased_product.h's plus_head_bias and head_major_plus_biases): a per-head bias
// added to every row of the heads' batch-major (B*T, H*dh) layout, 16 bytes a thread, written in the same layout or
// head-major. LibTorch's broadcast add took its strided element-wise
// path: 49 us a call at batch 192 of the reference shapes on an H200, two calls a layer. Plain C++ on purpose, as
// rel_attention_kernel.h.
#pragma once

#include <cstdint>

namespace studio {

/// x and out (rows, width) with row strides in elements (unit column stride), bias (width,); all bf16 or all fp32;
/// width a multiple of 8, rows and bias 16-byte aligned.
struct HeadBiasKernelArgs {
    const void * x = nullptr;
    const void * bias = nullptr;
    void * out = nullptr;
    bool bf16 = true;
    int64_t rows = 0, width = 0, x_row_stride = 0, out_row_stride = 0;
    /// Where given, out2 = x + bias2 as well, from the same read of x, laid out as out.
    const void * bias2 = nullptr;
    void * out2 = nullptr;
    /// Where above 0 (a multiple of 8), the outputs are head-major: column c of row r at (c / head_dim) x
    /// out_head_stride + r x out_row_stride + c % head_dim.
    int64_t head_dim = 0, out_head_stride = 0;
};

/// Launch on the given cudaStream_t. Returns nullptr on success, else the reason.
const char * launch_plus_head_bias(const HeadBiasKernelArgs & args, void * stream);

} // namespace studio
