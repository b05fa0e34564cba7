// Training's content columns of relative attention by our CUDA kernels (rel_attention_kernel.h's training forward,
// rel_attention_grad_kernel.h's backward): the position term, its relative shift, the mask and the attention
// dropout are formed on chip, tile by tile, so that neither the (H,B,T,S) bias that the memory-efficient kernel takes
// nor its gradient reaches device memory. The persistent columns' part, attended apart, seeds the forward's softmax;
// the backward then yields the gradients of the joined attention, as apart_attention.h's parts do.
#pragma once

#include <cstdint>

#include <torch/types.h>

namespace studio {

/// Whether our training kernels take these operands: built and on, LibTorch 2, CUDA, bf16 q (B,H,T,dh) and k
/// (B,H,S,dh) with 16-byte aligned rows, head_dim 16, 32 or 64, same_length, and STUDIO_CONTENT_TRAINING not
/// `efficient` (nor set_content_attention_kernels(false)).
bool content_attention_kernels_take(const torch::Tensor & q, const torch::Tensor & k, bool same_length);
void set_content_attention_kernels(bool enabled);
bool content_attention_kernels_enabled();

struct ContentAttention {
    torch::Tensor out;   ///< (B,H,T,dh) bf16, a view of (B,T,H,dh) storage: the joined attention's output
    torch::Tensor lse;   ///< (B,H,T) fp32, a view of (H,B,T) storage: the joined softmax's natural log-sum-exp
    torch::Tensor rng;   ///< (2,) int64 on the device: the dropout's seed and offset, which the backward reads
};

/// q_u, q_v (B,H,T,dh): q + u and q + v; k, val (B,H,S,dh), memory first; position_keys (H,S-first_position,dh): rows
/// first_position .. S-1 of the layer's position keys (distances S-1-first_position .. 0; first_position <= T-1, no
/// kept entry reads the others); persistent_out (1,H,B*T,dh) and persistent_lse (1,H,B*T): the persistent columns'
/// softmax (values already scaled), or undefined for none. The mask is the model's same_length one.
ContentAttention content_attention_forward(const torch::Tensor & q_u, const torch::Tensor & q_v, const torch::Tensor & k,
                                           const torch::Tensor & val, const torch::Tensor & position_keys, int64_t first_position,
                                           const torch::Tensor & persistent_out, const torch::Tensor & persistent_lse, double scale,
                                           double dropout);

struct ContentAttentionGradients {
    torch::Tensor q_u, k, v;   ///< in the operands' shapes (B,H,L,dh); q_u is q's whole gradient with joins.persistent_q
    torch::Tensor position;    ///< (H,B,T,P), P = S - first_position: the gradient of (q+v).r before the relative shift
    torch::Tensor head_biases; ///< with joins.persistent_q: (H,2,dh) fp32, the gradients of u and of v
    torch::Tensor key_values;  ///< with joins.key_values: (B,S,2,H,dh), of which k and v are views
};

/// Gradients that training's layer (TrainableApartAttention) takes joined, each saving passes over (B,H,L,dh):
struct GradientJoins {
    /// Where defined, (B,H,T,dh) bf16 with unit stride along dh: the persistent columns' gradient of q, where q_u =
    /// q + u and q_v = q + v come from one q and two head biases. q's three gradient terms are then summed in the
    /// query launch's one pass instead of by two adds: q + u's own, the position term's (q+v).r gradient (by a
    /// product between the key and query launches) and this one. The head biases' gradients come from the same pass.
    torch::Tensor persistent_q;
    /// k's and v's gradients as the halves of one (B,S,2,H,dh) tensor, the layout of one product's output: the keys'
    /// and values' projection then has one product in its backward and no add.
    bool key_values = false;
};

/// The backward of content_attention_forward given the joined output's gradient `grad` (B,H,T,dh).
ContentAttentionGradients content_attention_backward(const torch::Tensor & grad, const torch::Tensor & q_u, const torch::Tensor & q_v,
                                                     const torch::Tensor & k, const torch::Tensor & val, const torch::Tensor & position_keys,
                                                     int64_t first_position, const ContentAttention & forward, double scale, double dropout,
                                                     const GradientJoins & joins = {});

/// The keep mask (B,H,T,S) bool that the forward with this rng drew at this dropout: the tests' reference.
torch::Tensor content_attention_keep_mask(const torch::Tensor & rng, int64_t B, int64_t H, int64_t T, int64_t S, double dropout);

} // namespace studio
