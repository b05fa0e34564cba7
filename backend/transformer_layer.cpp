#include "transformer_layer.h"

#include <torch/torch.h>

#include "device.h"        // environment_is, cuda_compute_dtype, rows_16_byte_aligned, check_kernel_launch

#ifdef STUDIO_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>

#include "layer_norm_kernel.h"
#endif

namespace studio {

namespace F = torch::nn::functional;

namespace {
#ifdef STUDIO_CUDA_KERNELS
// STUDIO_SEGMENT_NORM=ops: LibTorch's layer norms in training even where our kernels would take them (side-by-side timing).
const bool training_kernels_wanted = !environment_is("STUDIO_SEGMENT_NORM", "ops");

bool segment_norm_takes(const torch::Tensor & memory, const torch::Tensor & x, const OffsetLayerNorm & norm) {
    return x.is_cuda() && segment_norm_kernel_supports(x.size(2)) && is_bf16_or_fp32(x.scalar_type()) && memory.scalar_type() == x.scalar_type()
           && is_bf16_or_fp32(norm->weight.scalar_type()) && norm->bias.scalar_type() == norm->weight.scalar_type()
           && norm->weight.is_contiguous() && norm->bias.is_contiguous() && rows_16_byte_aligned(x)
           && (memory.size(1) == 0 || rows_16_byte_aligned(memory));
}

/// The kernel's arguments for memory (B,M,D) and x (B,T,D), writing keys (B,M+T,D) and queries (B,T,D) where given.
SegmentNormKernelArgs segment_norm_args(const torch::Tensor & memory, const torch::Tensor & x, const torch::Tensor & weight,
                                        const torch::Tensor & bias, double eps, const torch::Tensor & keys = {},
                                        const torch::Tensor & queries = {}) {
    const int64_t B = x.size(0), T = x.size(1), D = x.size(2), M = memory.size(1);
    SegmentNormKernelArgs args;
    args.memory = M > 0 ? memory.data_ptr() : nullptr;
    args.segment = x.data_ptr();
    args.weight = weight.data_ptr();
    args.bias = bias.data_ptr();
    args.keys_out = keys.defined() ? keys.data_ptr() : nullptr;
    args.queries_out = queries.defined() ? queries.data_ptr() : nullptr;
    args.input_bf16 = x.scalar_type() == torch::kBFloat16;
    args.params_bf16 = weight.scalar_type() == torch::kBFloat16;
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
    args.eps = (float) eps;
    return args;
}

/// One launch of the segment-norm kernel: LN(cat(memory, x)) as the keys' input (B,M+T,D) and LN(x) as the queries'
/// (B,T,D), both bf16; with `statistics` (2, B*(M+T)) fp32 given, each row's mean and 1/std in it too. Without
/// `with_queries`, the keys' alone (the queries undefined).
/// With `addend` (B,T,D), x + addend is normed in place of x, and written to *sum.
std::pair<torch::Tensor, torch::Tensor> launch_segment_norm_into_new(const torch::Tensor & memory, const torch::Tensor & x,
                                                                     const torch::Tensor & weight, const torch::Tensor & bias, double eps,
                                                                     const torch::Tensor & statistics = {}, bool with_queries = true,
                                                                     const torch::Tensor & addend = {}, torch::Tensor * sum = nullptr) {
    c10::cuda::CUDAGuard device_guard(x.device());
    const int64_t B = x.size(0), T = x.size(1), D = x.size(2), M = memory.size(1);
    auto options = x.options().dtype(torch::kBFloat16);
    auto keys = torch::empty({B, M + T, D}, options), queries = with_queries ? torch::empty({B, T, D}, options) : torch::Tensor();
    auto args = segment_norm_args(memory, x, weight, bias, eps, keys, queries);
    if (statistics.defined()) {
        args.mean_out = statistics[0].data_ptr<float>();
        args.inverse_std_out = statistics[1].data_ptr<float>();
    }
    if (addend.defined()) {
        *sum = torch::empty({B, T, D}, x.options().memory_format(torch::MemoryFormat::Contiguous));
        args.addend = addend.data_ptr();
        args.addend_bf16 = addend.scalar_type() == torch::kBFloat16;
        args.addend_stride[0] = addend.stride(0);
        args.addend_stride[1] = addend.stride(1);
        args.sum_out = sum->data_ptr();
    }
    check_kernel_launch(launch_segment_norm(args, current_cuda_stream(x.device())), "segment norm");
    return {keys, queries};
}

/// Inference: the segment norm by our kernel, or undefined tensors when it does not take these operands.
std::pair<torch::Tensor, torch::Tensor> normalize_segment(const torch::Tensor & memory, const torch::Tensor & x, const OffsetLayerNorm & norm) {
    if (!segment_norm_takes(memory, x, norm)) return {};
    return launch_segment_norm_into_new(memory, x, norm->weight, norm->bias, norm->eps);
}

/// The same with gradients (training under bf16 autocast): the gradients of x, weight and bias from both outputs in
/// one backward launch, where LibTorch took two layer norms, a concatenation and three casts forward, and backward
/// two layer-norm backwards, the casts' gradients back to fp32 and their sums. The memory gets no gradient: it is
/// carried detached. With `pending` (the previous layer's bf16 output, not yet added: an empty tensor where there is
/// none), x + pending is normed and given back as a third output, the residual stream; the backward adds that
/// output's gradient into x's and writes it again in bf16 as pending's: the residual add, its gradient's add and its
/// cast to bf16 are gone.
struct TrainableSegmentNorm : public torch::autograd::Function<TrainableSegmentNorm> {
    static torch::autograd::variable_list forward(torch::autograd::AutogradContext * ctx, const torch::Tensor & x, const torch::Tensor & pending,
                                                  const torch::Tensor & memory, const torch::Tensor & weight, const torch::Tensor & bias,
                                                  double eps) {
        const int64_t rows = x.size(0) * (memory.size(1) + x.size(1));
        auto statistics = torch::empty({2, rows}, x.options().dtype(torch::kFloat));                   // mean, 1/std per row
        const bool summed = pending.numel() > 0;
        torch::Tensor sum;                                                                             // (B,T,D) x + pending
        auto [keys, queries] = launch_segment_norm_into_new(memory, x, weight, bias, eps, statistics, true, summed ? pending : torch::Tensor(),
                                                            summed ? &sum : nullptr);
        ctx->save_for_backward({summed ? sum : x, memory, weight, bias, statistics});
        ctx->saved_data["eps"] = eps;
        ctx->saved_data["summed"] = summed;
        if (summed) return {keys, queries, sum};
        return {keys, queries};
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext * ctx, torch::autograd::variable_list grads) {
        const auto saved = ctx->get_saved_variables();
        const auto & x = saved[0], & memory = saved[1], & weight = saved[2], & bias = saved[3], & statistics = saved[4];   // x: the rows normed
        c10::cuda::CUDAGuard device_guard(x.device());
        const int64_t B = x.size(0), T = x.size(1), D = x.size(2), M = memory.size(1);
        const bool summed = ctx->saved_data["summed"].toBool();
        auto bf16_rows = [](const torch::Tensor & g) { return g.defined() ? g.to(torch::kBFloat16).contiguous() : g; };
        const auto grad_keys = bf16_rows(grads[0]), grad_queries = bf16_rows(grads[1]);
        const auto grad_sum = summed && grads[2].defined() ? grads[2].to(x.scalar_type()).contiguous() : torch::Tensor();   // (B,T,D)
        auto grad_x = torch::empty({B, T, D}, x.options().memory_format(torch::MemoryFormat::Contiguous));
        auto grad_pending = summed ? torch::empty({B, T, D}, x.options().dtype(torch::kBFloat16)) : torch::Tensor();
        SegmentNormBackwardKernelArgs args;
        args.forward = segment_norm_args(memory, x, weight, bias, ctx->saved_data["eps"].toDouble());
        args.blocks = segment_norm_backward_blocks(B * (M + T));
        auto partial = torch::empty({2, args.blocks, D}, x.options().dtype(torch::kFloat));           // weight, bias
        args.mean = statistics[0].data_ptr<float>();
        args.inverse_std = statistics[1].data_ptr<float>();
        args.grad_keys = grad_keys.defined() ? grad_keys.data_ptr() : nullptr;
        args.grad_queries = grad_queries.defined() ? grad_queries.data_ptr() : nullptr;
        args.grad_segment = grad_x.data_ptr();
        args.grad_sum = grad_sum.defined() ? grad_sum.data_ptr() : nullptr;
        args.grad_addend = summed ? grad_pending.data_ptr() : nullptr;
        args.weight_partial = partial[0].data_ptr<float>();
        args.bias_partial = partial[1].data_ptr<float>();
        check_kernel_launch(launch_segment_norm_backward(args, current_cuda_stream(x.device())), "segment norm backward");
        auto sums = partial.sum(1);                                                                    // (2,D)
        return {grad_x, grad_pending, torch::Tensor(), sums[0].to(weight.scalar_type()), sums[1].to(bias.scalar_type()), torch::Tensor()};
    }
};
#endif
} // namespace

torch::Tensor normalize_sum(const torch::Tensor & x, const torch::Tensor & addend, const OffsetLayerNorm & norm, torch::Tensor * sum) {
#ifdef STUDIO_CUDA_KERNELS
    const auto no_memory = x.narrow(1, 0, 0);                                                     // (B,0,D)
    if (!segment_norm_takes(no_memory, x, norm)) return {};
    if (addend.defined() && (addend.scalar_type() != x.scalar_type() || addend.sizes() != x.sizes() || addend.device() != x.device()
                             || !rows_16_byte_aligned(addend)))
        return {};
    return launch_segment_norm_into_new(no_memory, x, norm->weight, norm->bias, norm->eps, {}, /*with_queries=*/false, addend, sum).first;
#else
    (void) x, (void) addend, (void) norm, (void) sum;
    return {};
#endif
}

TrainingNorm normalize_segment_for_training(const torch::Tensor & memory, const torch::Tensor & x, const OffsetLayerNorm & norm,
                                           const torch::Tensor & pending) {
#ifdef STUDIO_CUDA_KERNELS
    if (training_kernels_wanted && own_kernels_enabled() && torch::GradMode::is_enabled() && !memory.requires_grad()
        && cuda_compute_dtype(x) == torch::kBFloat16 && segment_norm_takes(memory, x, norm)) {
        if (!pending.defined()) {
            auto normed = TrainableSegmentNorm::apply(x, torch::empty({0}, x.options()), memory, norm->weight, norm->bias, norm->eps);
            return {normed[0], normed[1], torch::Tensor()};
        }
        if (pending.scalar_type() == torch::kBFloat16 && pending.sizes() == x.sizes() && pending.stride(2) == 1 && rows_16_byte_aligned(pending)) {
            auto normed = TrainableSegmentNorm::apply(x, pending, memory, norm->weight, norm->bias, norm->eps);
            return {normed[0], normed[1], normed[2]};
        }
    }
#else
    (void) memory, (void) x, (void) norm, (void) pending;
#endif
    return {};
}

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

torch::Tensor TransformerLayerImpl::forward(const torch::Tensor & x_in, const torch::Tensor & memory, const torch::Tensor & pos,
                                            const torch::Tensor & keep, const LayerContext & context, LayerOutputs * outputs) {
    const auto & pending = context.pending;
    auto drop = F::DropoutFuncOptions().p(options.proj_drop()).training(is_training());
    torch::Tensor x_n, mem_n, keys_n, memory_key_values;
    auto x = x_in;
#ifdef STUDIO_CUDA_KERNELS
    // With the memory's keys and values cached by the previous segment only the segment is normalised: by our kernel,
    // which adds the previous layer's pending output in the same pass.
    if (memory.dim() == 4 && attention->own_kernel_applies(x)) x_n = normalize_sum(x_in, pending, norm, &x);
#endif
    if (!x_n.defined() && pending.defined()) {
        // In training our norm kernel adds it as it reads x, and gives the sum back: the residual stream.
        if (memory.dim() != 4) {
            auto normed = normalize_segment_for_training(memory, x_in, norm, pending);
            if (normed.queries.defined()) std::tie(keys_n, x_n, x) = std::tie(normed.keys, normed.queries, normed.sum);
        }
        if (!x_n.defined()) x = x_in + pending;                                  // (B,T,D)
    }
    if (memory.dim() == 4) {
        memory_key_values = memory;
        if (!x_n.defined()) x_n = norm->forward(x);
    } else {
        // The same LayerNorm normalises the memory: it is this layer's input from the previous segment.
#ifdef STUDIO_CUDA_KERNELS
        if (!x_n.defined() && attention->own_kernel_applies(x)) std::tie(keys_n, x_n) = normalize_segment(memory, x, norm);
#endif
        if (!x_n.defined()) {
            auto normed = normalize_segment_for_training(memory, x, norm);
            keys_n = normed.keys;
            x_n = normed.queries;
        }
        if (!x_n.defined()) {
            x_n = norm->forward(x);
            mem_n = memory.size(1) > 0 ? norm->forward(memory) : memory;
        }
    }
    auto attended = attention->forward(x_n, mem_n, pos, keep, context.u, context.v, context.gates, keys_n, memory_key_values,
                                       context.key_values_into, context.position_keys);
    if (outputs) {
        outputs->closed = attended.closed;
        outputs->key_values = attended.key_values;
    }
    auto out = F::dropout(attended.out, drop);                                    // (B,T,D)
    if (outputs && context.defer_residual && options.feedforward_dim() == 0) {
        outputs->pending = out;                                                   // added by the next layer's norm
        return x;
    }
    auto h = x + out;                                                             // (B,T,D)
    if (options.feedforward_dim() == 0) return h;
    auto inner = F::dropout(torch::relu(F::linear(ff_norm->forward(h), ff1_weight, ff1_bias)),
                            F::DropoutFuncOptions().p(options.ff_drop()).training(is_training())); // (B,T,F)
    return h + F::dropout(F::linear(inner, ff2_weight, ff2_bias), drop);
}

} // namespace studio
