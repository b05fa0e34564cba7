// CUDA kernels for the content columns' additive attention bias in training: the relative shift of the position
// scores, the u . k term (where given), the 1/sqrt(dh) scale and the mask in one pass forward and one or two
// backward, where LibTorch's operations make five passes over the (H,B,T,S) scores forward (pad, shift copy, add,
// scale, fill) and about as many backward. Plain C++ on purpose, as rel_attention_kernel.h.
#pragma once

#include <cstdint>

namespace studio {

/// Element strides are given for every dimension but the last, which is unit. All tensors are bf16, or all fp32.
struct ContentBiasKernelArgs {
    bool bf16 = false;
    int64_t heads = 0, batch = 0, tgt_len = 0, key_len = 0;   ///< H, B, T, S
    float scale = 1.0f;
    /// (H,B,T,P) position scores before the relative shift: row i holds (q_i + v) . r for the last P <= S rows of r
    /// (the first S - P columns of the shift's (H,B,T,S), which no kept entry reads, left out)
    const void * position = nullptr;
    int64_t position_len = 0;                    ///< P
    int64_t position_stride[3] = {0, 0, 0};      ///< head, batch, query
    const void * key_bias = nullptr;             ///< (H,B,S): u . k_j; nullptr: no such term (u rides in the query)
    int64_t key_bias_stride[2] = {0, 0};         ///< head, batch
    const bool * keep = nullptr;                 ///< (T,S): query i sees key j
    int64_t keep_stride = 0;                     ///< query
    /// forward: bias (H,B,T,S) contiguous, = (position[i][j + T-1-i - (S-P)] + key_bias[j]) x scale where keep[i][j],
    /// else -inf
    void * bias = nullptr;
    /// backward: the gradients of position (H,B,T,P) and key_bias (H,B,S; not formed where key_bias is nullptr), both
    /// contiguous, from grad_bias
    const void * grad_bias = nullptr;
    int64_t grad_bias_stride[3] = {0, 0, 0};     ///< head, batch, query
    void * grad_position = nullptr;
    void * grad_key_bias = nullptr;
};

/// Whether the kernels take P position columns of S keys: the forward stages a block's position rows in 48 KB of
/// shared memory at most (P <= 24,576 bf16 or 12,288 fp32 columns), and P <= S.
bool content_bias_kernel_supports(int64_t position_len, int64_t key_len, bool bf16);

/// Launch on the given cudaStream_t. Return nullptr on success, else CUDA's error text.
const char * launch_content_bias_forward(const ContentBiasKernelArgs & args, void * stream);
const char * launch_content_bias_backward(const ContentBiasKernelArgs & args, void * stream);

} // namespace studio
