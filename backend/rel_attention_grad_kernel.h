// The backward of training's relative-attention kernel (rel_attention_kernel.h with q_position): CUDA kernels that
// form each tile's scores, probabilities and dropout bits again from the forward's log-sum-exp and generator state,
// so that neither the (H,B,T,S) probabilities nor their bias ever reach device memory. Three launches:
// - rowsum(out x grad_out) of every row;
// - by key tiles: the gradients of the keys and the values, and the position scores' gradient (H,B,T,P) in the
//   layout before the relative shift, which two products outside turn into the gradients of q + v and of the
//   position keys;
// - by query tiles: the gradient of q + u, from the position scores' gradient (the same values, shifted).
// Plain C++ like rel_attention_kernel.h: neither LibTorch nor CUDA headers.
#pragma once

#include <cstdint>

#include "rel_attention_kernel.h"

namespace studio {

/// Pointers and element strides of one backward call: the forward's operands as its RelativeAttentionKernelArgs gave
/// them (q + u in q, q + v in q_position, keys and values in k and v with all S rows, no persistent part), plus:
struct RelativeAttentionGradKernelArgs {
    RelativeAttentionKernelArgs forward;
    const void * out = nullptr;                 ///< (H,B,T,dh) bf16, the joined output, forward.out_stride's strides
    const void * grad_out = nullptr;            ///< (H,B,T,dh) bf16, out's gradient, grad_out_stride
    const float * lse = nullptr;                ///< (H,B,T) the forward's joined log-sum-exp, forward.lse_stride
    float * out_dot_grad = nullptr;             ///< (H,B,T) fp32 scratch, forward.lse_stride's strides: rowsum(out x grad_out), by the first launch
    int64_t grad_out_stride[3] = {0, 0, 0};
    void * grad_q = nullptr;                    ///< (H,B,T,dh) bf16: of q + u, grad_q_stride
    int64_t grad_q_stride[3] = {0, 0, 0};
    void * grad_k = nullptr;                    ///< (H,B,S,dh) bf16, grad_kv_stride
    void * grad_v = nullptr;                    ///< (H,B,S,dh) bf16, grad_kv_stride
    int64_t grad_kv_stride[3] = {0, 0, 0};
    /// (H,B,T,P) bf16, P = S - forward.first_position, unit stride along P: the gradient of (q+v).r before the shift
    /// (row i, column j+T-1-i-first_position for key j), zero where no kept entry reads it. Needs same_length.
    void * grad_position = nullptr;
    int64_t grad_position_stride[3] = {0, 0, 0};
};

/// Launches the three kernels on the given cudaStream_t; nullptr on success, else CUDA's error text. head_dim 16, 32 or 64;
/// forward.same_length must hold and forward.first_position must be at most T-1.
const char * launch_relative_attention_backward(const RelativeAttentionGradKernelArgs & args, void * stream);

} // namespace studio
