// One pre-norm layer: x + Dropout(Attention(LN(x), LN(memory))), then for Transformer-XL a ReLU feed-forward
// x + Dropout(W2 Dropout(ReLU(W1 LN2(x)))). All-attention layers have no feed-forward: their persistent vectors
// take its place (reference-model.md sections 1.3 and 1b).
#pragma once

#include <utility>

#include <torch/types.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include "rel_attention.h"

namespace studio {

/// LayerNorm whose gain is stored as an offset from 1 (gain = 1 + weight, weight initialised to 0), as the reference
/// stores it: LAMB's trust ratio and weight decay see |weight| = 0 at the start.
struct OffsetLayerNormImpl : torch::nn::Cloneable<OffsetLayerNormImpl> {
    explicit OffsetLayerNormImpl(int64_t dim, double eps = 1e-5) : dim(dim), eps(eps) { reset(); }
    void reset() override {
        weight = register_parameter("weight", torch::zeros({dim}));
        bias = register_parameter("bias", torch::zeros({dim}));
    }
    torch::Tensor forward(const torch::Tensor & x);
    int64_t dim;
    double eps;
    torch::Tensor weight, bias;
};
TORCH_MODULE(OffsetLayerNorm);

/// Training under bf16 autocast on the GPU with our kernels: LN(cat(memory, x)) as the keys' input (B,M+T,D) and LN(x)
/// as the queries' (B,T,D), both bf16, by one kernel each way, with the gradients of x and the norm's parameters
/// (the memory, carried detached, must not require one). With `pending` (B,T,D) bf16, the previous layer's output
/// still to add: x + pending is normed in its place and given back as `sum` (the residual stream, x's dtype), the add
/// made as the kernel reads x, and its gradient's add and cast to bf16 made by the backward's kernel. Undefined
/// tensors where the kernels do not apply (STUDIO_SEGMENT_NORM=ops turns them off): the caller then adds and takes
/// LibTorch's layer norms.
struct TrainingNorm {
    torch::Tensor keys, queries, sum;
};
TrainingNorm normalize_segment_for_training(const torch::Tensor & memory, const torch::Tensor & x, const OffsetLayerNorm & norm,
                                           const torch::Tensor & pending = {});
/// Inference on the GPU with our kernels: LN(x + addend) (B,T,D) bf16 by one kernel, with the sum, rounded to x's
/// dtype as a separate add would leave it, in *sum; without an addend (undefined), LN(x) and *sum untouched.
/// Undefined (and *sum untouched) where the kernel does not take these operands. (How a layer normalises its input
/// and adds the previous layer's pending output, TransformerLayer::forward.)
torch::Tensor normalize_sum(const torch::Tensor & x, const torch::Tensor & addend, const OffsetLayerNorm & norm, torch::Tensor * sum);

/// What a layer takes beyond its input, memory, positions and mask (TransformerLayer::forward).
struct LayerContext {
    torch::Tensor u, v;               ///< Transformer-XL's shared position biases (H*dh,); undefined: the layer's own
    GateControl gates;
    torch::Tensor key_values_into;    ///< inference with the key/value cache: where this segment's keys and values go
    torch::Tensor position_keys;      ///< pos projected by the attention's r_weight, where the caller formed it
    torch::Tensor pending;            ///< the previous layer's output still to add to the input (B,T,D)
    bool defer_residual = false;      ///< All-attention: return the input and leave the layer's output in LayerOutputs::pending
};

/// What a layer gives beside its result.
struct LayerOutputs {
    torch::Tensor closed;             ///< this layer's closed-gate count, when gates act
    torch::Tensor key_values;         ///< with the key/value cache, this segment's keys and values for the next (B,M,2,H*dh)
    torch::Tensor pending;            ///< with defer_residual, the layer's output still to add (B,T,D)
};

struct TransformerLayerOptions {
    TransformerLayerOptions(RelativeAttentionOptions attention) : attention_(std::move(attention)) {}
    TORCH_ARG(RelativeAttentionOptions, attention);
    TORCH_ARG(int64_t, feedforward_dim) = 0; ///< 0 = no feed-forward (All-attention)
    TORCH_ARG(double, proj_drop) = 0.0;
    TORCH_ARG(double, ff_drop) = 0.0;
};

class TransformerLayerImpl : public torch::nn::Cloneable<TransformerLayerImpl> {
public:
    explicit TransformerLayerImpl(TransformerLayerOptions options);
    void reset() override;
    void pretty_print(std::ostream & stream) const override;

    /// x (B,T,D), memory (B,M,D) -> (B,T,D). At inference with the key/value cache, memory may instead be the
    /// previous segment's cached keys and values (B,M,2,H*dh); outputs->key_values then gets this segment's
    /// (RelativeAttention's AttentionOutput::key_values) for the next, written into context.key_values_into where that
    /// fits (RelativeAttention::forward).
    /// The residual add may pass from layer to layer: context.pending, when defined, is the previous layer's output
    /// still to add, so that the input is x + pending (at inference our norm kernel adds it as it reads x); with
    /// context.defer_residual (and outputs given), an All-attention layer returns its input x + pending and leaves its
    /// own output in outputs->pending, for the next layer or the caller to add.
    torch::Tensor forward(const torch::Tensor & x, const torch::Tensor & memory, const torch::Tensor & pos, const torch::Tensor & keep,
                          const LayerContext & context = {}, LayerOutputs * outputs = nullptr);

    TransformerLayerOptions options;
    OffsetLayerNorm norm{nullptr};
    RelativeAttention attention{nullptr};
    OffsetLayerNorm ff_norm{nullptr};            ///< Transformer-XL only
    torch::Tensor ff1_weight, ff1_bias, ff2_weight, ff2_bias;
};
TORCH_MODULE(TransformerLayer);

} // namespace studio
