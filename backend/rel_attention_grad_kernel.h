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
    /// The query launch's epilogue, for training's whole q gradient in one pass (content_attention.h's GradientJoins):
    /// where given, grad_q_terms[0] (q + v's gradient, by the position product) and grad_q_terms[1] (the persistent
    /// part's), (H,B,T,dh) bf16 with unit stride along dh, are added to the gradient it writes.
    const void * grad_q_terms[2] = {nullptr, nullptr};
    int64_t grad_q_term_stride[2][3] = {{0, 0, 0}, {0, 0, 0}};
    /// Where given, (query tiles x B, H, 2, dh) fp32: each block's column sums of q + u's own gradient ([..,0,:]) and
    /// of grad_q_terms[0] ([..,1,:]): the head biases' gradients once summed over the blocks (block (tile x, batch row
    /// b) at b x tiles + x, tiles = relative_attention_query_tiles(T)).
    float * grad_q_column_sums = nullptr;
};

/// Which of the three launches to make: the query launch may wait for a term the caller forms from the position
/// gradient that the key launch writes.
enum class RelativeAttentionBackwardLaunches { all, rows_and_keys, queries };

/// Launches the three kernels on the given cudaStream_t; nullptr on success, else CUDA's error text. head_dim 16, 32 or 64;
/// forward.same_length must hold and forward.first_position must be at most T-1.
const char * launch_relative_attention_backward(const RelativeAttentionGradKernelArgs & args, void * stream,
                                                RelativeAttentionBackwardLaunches launches = RelativeAttentionBackwardLaunches::all);

/// Query tiles of the launch's grid (the column sums' first dimension is this x B).
inline int64_t relative_attention_query_tiles(int64_t tgt_len) { return (tgt_len + 63) / 64; }

} // namespace studio
