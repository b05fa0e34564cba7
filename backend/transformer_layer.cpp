#include "transformer_layer.h"

#include <torch/torch.h>

#include "device.h"

#ifdef STUDIO_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>

#include "layer_norm_kernel.h"
#endif

namespace studio {

namespace F = torch::nn::functional;

namespace {
#ifdef STUDIO_CUDA_KERNELS
/// Our segment-norm kernel: LN(cat(memory, x)) as the keys' input (B,S,D) and LN(x) as the queries' (B,T,D), both
/// bf16, in one launch. Undefined tensors when the kernel does not take these operands.
std::pair<torch::Tensor, torch::Tensor> normalize_segment(const torch::Tensor & memory, const torch::Tensor & x, const OffsetLayerNorm & norm) {
    const int64_t B = x.size(0), T = x.size(1), D = x.size(2), M = memory.size(1);
    if (!segment_norm_kernel_supports(D) || !is_bf16_or_fp32(x.scalar_type()) || memory.scalar_type() != x.scalar_type()
        || !is_bf16_or_fp32(norm->weight.scalar_type()) || norm->bias.scalar_type() != norm->weight.scalar_type()
        || !norm->weight.is_contiguous() || !norm->bias.is_contiguous() || !rows_16_byte_aligned(x) || (M > 0 && !rows_16_byte_aligned(memory)))
        return {};
    c10::cuda::CUDAGuard device_guard(x.device());
    auto options = x.options().dtype(torch::kBFloat16);
    auto keys = torch::empty({B, M + T, D}, options), queries = torch::empty({B, T, D}, options);
    SegmentNormKernelArgs args;
    args.memory = M > 0 ? memory.data_ptr() : nullptr;
    args.segment = x.data_ptr();
    args.weight = norm->weight.data_ptr();
    args.bias = norm->bias.data_ptr();
    args.keys_out = keys.data_ptr();
    args.queries_out = queries.data_ptr();
    args.input_bf16 = x.scalar_type() == torch::kBFloat16;
    args.params_bf16 = norm->weight.scalar_type() == torch::kBFloat16;
    args.batch = B;
    args.mem_len = M;
    args.tgt_len = T;
    args.dim = D;
    if (M > 0) {
        args.memory_stride[0] = memory.stride(0);
        args.memory_stride[1] = memory.stride(1);
    }
    args.segment_stride[0] = x.stride(0);
    args.segment_stride[1] = x.stride(1);
    args.eps = (float) norm->eps;
    check_kernel_launch(launch_segment_norm(args, current_cuda_stream(x.device())), "segment norm");
    return {keys, queries};
}
#endif
} // namespace

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
    torch::Tensor x_n, mem_n, keys_n;
#ifdef STUDIO_CUDA_KERNELS
    if (attention->own_kernel_applies(x)) std::tie(keys_n, x_n) = normalize_segment(memory, x, norm);
#endif
    if (!x_n.defined()) {
        x_n = norm->forward(x);
        mem_n = memory.size(1) > 0 ? norm->forward(memory) : memory;
    }
    auto attended = attention->forward(x_n, mem_n, pos, keep, u, v, gates, keys_n);
    if (closed) *closed = attended.closed;
    auto h = x + F::dropout(attended.out, drop);                                  // (B,T,D)
    if (options.feedforward_dim() == 0) return h;
    auto inner = F::dropout(torch::relu(F::linear(ff_norm->forward(h), ff1_weight, ff1_bias)),
                            F::DropoutFuncOptions().p(options.ff_drop()).training(is_training())); // (B,T,F)
    return h + F::dropout(F::linear(inner, ff2_weight, ff2_bias), drop);
}

} // namespace studio
