#include "transformer_layer.h"

#include <torch/torch.h>

namespace studio {

namespace F = torch::nn::functional;

torch::Tensor OffsetLayerNormImpl::forward(const torch::Tensor & x) {
    return torch::layer_norm(x, {dim}, weight + 1.0, bias, eps);
}

TransformerLayerImpl::TransformerLayerImpl(TransformerLayerOptions options_) : options(std::move(options_)) {
    reset();
}

void TransformerLayerImpl::reset() {
    const int64_t D = options.attention().hidden_dim();
    norm = register_module("norm", OffsetLayerNorm(D));
    attention = register_module("attention", RelativeAttention(options.attention()));
    if (options.feedforward_dim() > 0) {
        const int64_t F_ = options.feedforward_dim();
        ff_norm = register_module("ff_norm", OffsetLayerNorm(D));
        ff1_weight = register_parameter("ff1_weight", torch::empty({F_, D}));
        ff1_bias = register_parameter("ff1_bias", torch::zeros({F_}));
        ff2_weight = register_parameter("ff2_weight", torch::empty({D, F_}));
        ff2_bias = register_parameter("ff2_bias", torch::zeros({D}));
        torch::NoGradGuard no_grad;
        torch::nn::init::xavier_uniform_(ff1_weight);
        torch::nn::init::xavier_uniform_(ff2_weight);
    }
}

void TransformerLayerImpl::pretty_print(std::ostream & stream) const {
    stream << "studio::TransformerLayer(heads=" << options.attention().num_heads() << ", feedforward=" << options.feedforward_dim() << ")";
}

torch::Tensor TransformerLayerImpl::forward(const torch::Tensor & x, const torch::Tensor & memory, const torch::Tensor & pos,
                                            const torch::Tensor & keep, const torch::Tensor & u, const torch::Tensor & v,
                                            const GateControl & gates, torch::Tensor * closed) {
    auto drop = F::DropoutFuncOptions().p(options.proj_drop()).training(is_training());
    // The same LayerNorm normalises the memory: it is this layer's input from the previous segment.
    auto x_n = norm->forward(x);
    auto mem_n = memory.size(1) > 0 ? norm->forward(memory) : memory;
    auto attended = attention->forward(x_n, mem_n, pos, keep, u, v, gates);
    if (closed) *closed = attended.closed;
    auto h = x + F::dropout(attended.out, drop);                                  // (B,T,D)
    if (options.feedforward_dim() == 0) return h;
    auto inner = F::dropout(torch::relu(F::linear(ff_norm->forward(h), ff1_weight, ff1_bias)),
                            F::DropoutFuncOptions().p(options.ff_drop()).training(is_training())); // (B,T,F)
    return h + F::dropout(F::linear(inner, ff2_weight, ff2_bias), drop);
}

} // namespace studio
