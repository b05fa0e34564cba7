// Relative multi-head attention of Transformer-XL with segment memory, optional persistent key/value vectors per
// head (All-attention, Sukhbaatar et al. 2019) and an optional hard-concrete gate per head
// (reference-model.md sections 1.4 and 2). Every layer may have its own head count, including 0.
#pragma once

#include <string>

#include <torch/types.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include "derived_weight.h"
#include "hard_concrete.h"

namespace studio {

struct RelativeAttentionOptions {
    RelativeAttentionOptions(int64_t hidden_dim, int64_t num_heads, int64_t head_dim)
        : hidden_dim_(hidden_dim), num_heads_(num_heads), head_dim_(head_dim) {}
    TORCH_ARG(int64_t, hidden_dim);
    TORCH_ARG(int64_t, num_heads);        ///< heads of this layer (0 = the layer keeps only its residual path)
    TORCH_ARG(int64_t, head_dim);
    TORCH_ARG(int64_t, persistent) = 0;   ///< persistent key/value vectors per head; 0 = plain Transformer-XL
    TORCH_ARG(bool, own_r_bias) = true;   ///< this layer's own u/v biases (else the model passes shared ones)
    TORCH_ARG(bool, gated) = false;       ///< build a hard-concrete gate per head
    TORCH_ARG(double, attn_drop) = 0.0;
    /// The mask forward's `keep` holds: attention_keep_mask(T, M, same_length). Our CUDA kernel forms the mask from
    /// this and the lengths instead of reading `keep`.
    TORCH_ARG(bool, same_length) = true;
};

/// How the gates act in one forward.
struct GateControl {
    bool enabled = false;          ///< multiply each head's output by its gate (the gating stage and gated eval)
    bool output_scaling = false;   ///< technique 3: scale open heads by clamp(H / (H - closed + 1e-3), 1, H)
    torch::Tensor noise;           ///< (H,) uniform noise for a training sample; undefined = deterministic eval gate
    torch::Tensor weight;          ///< (H,) the gates already sampled (and scaled) by the caller; then noise is not read
};

struct AttentionOutput {
    torch::Tensor out;         ///< (B,T,D) after the output projection (its bias included)
    torch::Tensor closed;      ///< scalar count of closed gates in this forward (undefined when gates are off)
    /// With the key/value cache (inference, caches_key_values): the next segment's memory for this layer, the keys and
    /// values of the last M positions of memory and segment, (B,M,2,H*dh) with keys at [:,:,0] and values at [:,:,1].
    /// Undefined otherwise, and where M = 0.
    torch::Tensor key_values;
};

class RelativeAttentionImpl : public torch::nn::Cloneable<RelativeAttentionImpl> {
public:
    explicit RelativeAttentionImpl(RelativeAttentionOptions options);
    void reset() override;
    void pretty_print(std::ostream & stream) const override;
    /// Also forgets the weights kept for inference (DerivedWeight): training writes parameters unseen.
    void train(bool on = true) override;

    /// x_n (B,T,D) and mem_n (B,M,D) are layer-normed; pos (S,D) with S = M+T encodes distances S-1 .. 0;
    /// keep (T,S) bool; u, v (H*dh,) used when the layer has no biases of its own. keys_n, when given, is
    /// cat(mem_n, x_n) already (B,S,D), and mem_n is not read. memory_key_values, when given, is the previous
    /// segment's AttentionOutput::key_values (B,M,2,H*dh): the memory's keys and values, and neither mem_n nor keys_n
    /// is read. key_values_into, when given with M = T, is a contiguous (B,T,2,H*dh) tensor that the key and value
    /// product writes into and that becomes AttentionOutput::key_values: a caller that keeps the memory in fixed
    /// buffers (a CUDA graph) then copies nothing. position_keys, when given, is pos projected by r_weight
    /// (S,H*dh), formed by the caller (LanguageModel forms every layer's in one product).
    AttentionOutput forward(const torch::Tensor & x_n, const torch::Tensor & mem_n, const torch::Tensor & pos,
                            const torch::Tensor & keep, const torch::Tensor & u, const torch::Tensor & v,
                            const GateControl & gates, const torch::Tensor & keys_n = {}, const torch::Tensor & memory_key_values = {},
                            const torch::Tensor & key_values_into = {}, const torch::Tensor & position_keys = {});

    /// Whether a forward with layer input x would run our CUDA kernel (bf16 inference on the GPU, where built).
    bool own_kernel_applies(const torch::Tensor & x) const;
    /// Whether a forward now carries keys and values to the next segment instead of the memory's hidden states:
    /// inference (no gradient, eval mode) with heads, unless set_key_value_cache(false).
    bool caches_key_values() const;

    /// Parameters that belong to head h (its q/k/v/r rows, u/v slice, persistent vectors, output columns, gate).
    int64_t parameters_per_head() const;

    RelativeAttentionOptions options;
    torch::Tensor q_weight, k_weight, v_weight, r_weight; ///< (H*dh, D) each, no bias
    torch::Tensor u_bias, v_bias;                         ///< (H*dh,) when own_r_bias
    torch::Tensor mem_k, mem_v;                           ///< (H, N, dh) when persistent > 0
    torch::Tensor o_weight, o_bias;                       ///< (D, H*dh), (D,)
    HardConcreteGate gate{nullptr};

private:
    DerivedWeight stacked_weight;                         ///< key_value_weight's, at inference
    /// Inference through our CUDA kernel (built where a CUDA compiler was found): q (H,B,T,dh), k/val (H,B,S,dh),
    /// r (H,S,dh), u/v (H*dh,). The persistent columns, if any, come attended already by a kernel of their own
    /// (cuDNN's or flash's): persistent_out (1,H,B*T,dh) and persistent_lse (1,H,B*T) seed the kernel's online softmax.
    /// With k_memory/v_memory (H,B,M,dh) given, the memory's keys and values are read from them and k/val hold the
    /// segment's T rows only (the key/value cache: no concatenation).
    torch::Tensor kernel_attention(const torch::Tensor & q, const torch::Tensor & k, const torch::Tensor & val, const torch::Tensor & r,
                                   const torch::Tensor & u, const torch::Tensor & v, double scale, const torch::Tensor & persistent_out,
                                   const torch::Tensor & persistent_lse, const torch::Tensor & k_memory = {},
                                   const torch::Tensor & v_memory = {});
    /// The key and value weights stacked, (2*H*dh, D) in dtype; kept between inference forwards.
    torch::Tensor key_value_weight(torch::ScalarType dtype);
    /// Rows (B,L,D) projected to keys and values side by side by one product, (B,L,2,H*dh), in the dtype F::linear
    /// would give; into `into` where it is such a tensor, contiguous.
    torch::Tensor key_value_rows(const torch::Tensor & rows, const torch::Tensor & into = {});
    /// Scores and probabilities materialised in fp32: the reference computation, and the path on CPU.
    torch::Tensor explicit_attention(const torch::Tensor & q, const torch::Tensor & q_u, const torch::Tensor & k, const torch::Tensor & val,
                                     const torch::Tensor & bd, const torch::Tensor & keep, double scale);
    /// explicit_attention of heads first_head .. first_head+heads-1 (q, q_u, k, val, bd hold only those heads).
    torch::Tensor attention_of_heads(const torch::Tensor & q, const torch::Tensor & q_u, const torch::Tensor & k, const torch::Tensor & val,
                                     const torch::Tensor & bd, const torch::Tensor & keep, double scale, int64_t first_head, int64_t heads);
};
TORCH_MODULE(RelativeAttention);

/// Whether attention may run as one fused kernel call (scaled_dot_product_attention of LibTorch 2 on CUDA, with the
/// position term and the persistent columns' correction as its additive bias) instead of materialising the fp32
/// score and probability tensors. On by default where available; STUDIO_ATTENTION=explicit turns it off.
bool fused_attention_available(const torch::Device & device);
void set_fused_attention(bool enabled);
bool fused_attention_enabled();
/// Our CUDA kernels for inference on the GPU (rel_attention_kernel.h, layer_norm_kernel.h, tail_log_prob_kernel.h):
/// built where CMake found a CUDA compiler; on unless STUDIO_ATTENTION is sdpa or concat (LibTorch's kernels only)
/// or explicit.
bool own_kernels_built();
void set_own_kernels(bool enabled);
bool own_kernels_enabled();
/// The key/value cache at inference (RelativeAttentionImpl::caches_key_values): on by default;
/// STUDIO_KEY_VALUE_CACHE=0 or set_key_value_cache(false) carries hidden states and projects them again instead.
void set_key_value_cache(bool enabled);
bool key_value_cache_enabled();
/// Whether keys and values come from one product over their stacked weights, and every layer's position keys from one
/// product over all layers' (LanguageModel): on unless STUDIO_STACKED_PRODUCTS=0 (side-by-side timing).
bool stacked_products_enabled();
/// What computes inference attention on this device in this dtype: "explicit", "sdpa" or "studio-kernel".
std::string inference_attention_name(const torch::Device & device, torch::ScalarType dtype);

/// Transformer-XL's relative shift: out[.., i, j] = x[.., i, j + T-1-i] for the valid (unmasked) entries.
torch::Tensor rel_shift(const torch::Tensor & x);

} // namespace studio
