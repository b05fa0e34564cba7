// Attention of an All-attention layer with its two sets of keys computed apart and joined as one softmax: the
// content columns (memory and segment, with the relative-position term and the mask in an additive bias) and the
// persistent columns (no bias, the same keys for every batch row, so the batch folds into the query rows). Joining
// two parts by their log-sum-exps is exact; so is their backward, when each part's backward is given the JOINED
// output and log-sum-exp (it then recomputes the joined probabilities and the joined softmax correction itself).
#pragma once

#include <utility>

#include <torch/types.h>

namespace studio {

/// Attention over two disjoint sets of keys, computed apart, as one softmax over their union: each part's output
/// weighted by its share of the softmax mass, sigmoid(lse_a - lse_b). out_a, out_b (..., T, dh); lse_a, lse_b (..., T):
/// the natural log-sum-exp of each part's (scaled, biased) scores. Part b must have at least one unmasked key per row.
/// bf16 outputs on the GPU go through our kernel (attention_merge_kernel.h) in one pass and keep out_a's layout.
torch::Tensor merge_attention_parts(const torch::Tensor & out_a, const torch::Tensor & lse_a, const torch::Tensor & out_b,
                                    const torch::Tensor & lse_b);
/// Whether merge_attention_parts takes these operands through our kernel (built and on, CUDA, bf16 outputs (X,Y,L,D)
/// with 16-byte rows and D a multiple of 8, fp32 log-sum-exps (X,Y,L)).
bool attention_merge_kernel_takes(const torch::Tensor & out_a, const torch::Tensor & lse_a, const torch::Tensor & out_b,
                                  const torch::Tensor & lse_b);

/// Inference (no gradient): q (H,B,T,dh) the persistent columns' query, content_q (H,B,T,dh) the content columns' (the
/// model's q + u), k/val (H,B,S,dh), content_bias (H,B,T,S) already scaled and masked, mem_k/mem_v (H,N,dh) as the
/// model holds them. The persistent scores are q . mem_k unscaled and the persistent values mem_v x sqrt(N), as the
/// reference computes them. LibTorch 2 on CUDA only (its fused kernels).
torch::Tensor persistent_apart_attention(const torch::Tensor & q, const torch::Tensor & content_q, const torch::Tensor & k,
                                         const torch::Tensor & val, const torch::Tensor & content_bias, const torch::Tensor & mem_k,
                                         const torch::Tensor & mem_v, double scale);

/// The persistent part alone, for every batch row in one call of cuDNN's attention (from 6,144 query rows x heads on),
/// or flash's (below, where cuDNN's is not available, or STUDIO_PERSISTENT_INFERENCE=flash); LibTorch 2, CUDA,
/// bf16/fp16, no gradient or dropout. q (H,B,T,dh) read in place as H heads of B*T query rows; keys/values (H,N,dh)
/// in q's dtype. Returns the output (P,H,B*T,dh) and its natural log-sum-exp (P,H,B*T); the scores are q . key
/// unscaled. P = 1, or 2 or 4 where cuDNN's call takes the columns in parts (fewer, shorter waves at few heads): each
/// part is the softmax over its columns, to be joined by their log-sum-exps.
std::pair<torch::Tensor, torch::Tensor> persistent_inference_attention(const torch::Tensor & q, const torch::Tensor & keys,
                                                                       const torch::Tensor & values);
/// From how many query rows x heads on that call takes cuDNN's kernels (6,144 unless set; the selftest sets 0 and the
/// largest value to cover both kernels at its small shapes).
void set_persistent_inference_cudnn_from(int64_t head_rows);
int64_t persistent_inference_cudnn_from();
/// The parts cuDNN's inference call takes the columns in: 0 = by the wave count (the default), 1, 2 or 4 forced
/// (STUDIO_PERSISTENT_SPLITS).
void set_persistent_inference_splits(int64_t splits);
int64_t persistent_inference_forced_splits();
/// Whether cuDNN refused a call in parts (then it takes the columns whole from then on).
bool persistent_inference_split_refused();

/// Training's persistent part takes cuDNN's kernels (LibTorch 2) from this many query rows (B*T) on (12,288 unless
/// set; where cuDNN refuses a call, flash's from then on, and persistent_cudnn_refused() says so), else flash's. The
/// selftest sets 0 to cover cuDNN's at its small shapes. STUDIO_PERSISTENT_ATTENTION=flash: never.
void set_persistent_cudnn_min_rows(int64_t rows);
int64_t persistent_cudnn_min_rows();
bool persistent_cudnn_refused();

/// How each part is computed.
enum class AttentionParts {
    kernels,  ///< LibTorch 2's memory-efficient kernel (content, with its bias) and flash kernel (persistent): CUDA, bf16/fp16
    math,     ///< the same contract written out in tensor operations (any device and dtype): the kernels' reference
};

/// Whether the kernels take these operands (LibTorch 2, CUDA, bf16 or fp16, S a multiple of 16, dh a multiple of 8
/// up to 256).
bool apart_attention_kernels_take(const torch::Tensor & q, const torch::Tensor & k);

/// The content columns' position term for our training kernels (content_attention.h), in place of a bias:
/// queries q + v (H,B,T,dh), keys r (H,S-first,dh), rows first .. S-1 of the layer's (first <= T-1).
struct PositionTerm {
    torch::Tensor queries, keys;
    int64_t first = 0;
    /// (2,H,dh): the head biases u and v. Given in place of content_q and `queries` (both undefined), q + u and q + v
    /// are formed inside, and the backward sums q's three gradient terms and forms u's and v's in one pass.
    torch::Tensor query_biases;
    /// (B,S,2,H,dh): one product's keys and values, given in place of k and val (both undefined); their gradient comes
    /// back as one tensor, so that the product's backward is one product with no add.
    torch::Tensor key_values;
};

/// Attention with gradients and attention dropout (training). q (H,B,T,dh) the persistent columns' query, content_q
/// (H,B,T,dh) the content columns' (the model passes q + u, so that u . k_j needs no place in the bias; q itself
/// where the bias holds it), k/val (H,B,S,dh), content_bias (H,B,T,S) scaled and masked (may require a gradient;
/// it must mask every key past the bottom-right diagonal, j > i + S - T, whose tiles the kernels skip, and its
/// gradient is defined on the kept entries only),
/// persistent_keys/values (H,N,dh) in q's dtype, already in the form the scores use (q . key unscaled; values x
/// sqrt(N)). Returns (H,B,T,dh). Each part drops its own probabilities with probability dropout (independent masks,
/// as one dropout over the joined probabilities would). With content_bias undefined, `position` gives the position
/// term, and our kernels form the bias on chip (AttentionParts::kernels, where content_attention_kernels_take).
torch::Tensor trainable_apart_attention(const torch::Tensor & q, const torch::Tensor & content_q, const torch::Tensor & k,
                                        const torch::Tensor & val, const torch::Tensor & content_bias, const torch::Tensor & persistent_keys,
                                        const torch::Tensor & persistent_values, double scale, double dropout,
                                        AttentionParts parts = AttentionParts::kernels, const PositionTerm & position = {});

} // namespace studio
