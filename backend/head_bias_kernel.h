// CUDA kernel for q + u and q + v (biased_product.h's plus_head_bias): a per-head bias added to every row of the
// heads' batch-major (B*T, H*dh) layout, 16 bytes a thread. LibTorch's broadcast add took its strided element-wise
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
};

/// Launch on the given cudaStream_t. Returns nullptr on success, else the reason.
const char * launch_plus_head_bias(const HeadBiasKernelArgs & args, void * stream);

} // namespace studio
