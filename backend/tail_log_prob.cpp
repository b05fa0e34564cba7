#include "tail_log_prob.h"

#include <torch/torch.h>

#include "device.h"          // is_bf16_or_fp32, cuda_compute_dtype, current_cuda_stream, check_kernel_launch
#include "rel_attention.h"   // own_kernels_enabled

#include <cstdlib>

#ifdef STUDIO_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "tail_log_prob_grad_kernel.h"
#include "tail_log_prob_kernel.h"
#endif

namespace studio {

bool tail_kernel_applies(const torch::Tensor & like, const torch::Tensor & weight, const torch::Tensor & bias) {
#ifdef STUDIO_CUDA_KERNELS
    return !torch::GradMode::is_enabled() && like.is_cuda() && own_kernels_enabled() && is_bf16_or_fp32(cuda_compute_dtype(like))
           && is_bf16_or_fp32(weight.scalar_type()) && bias.scalar_type() == weight.scalar_type() && weight.is_contiguous()
           && bias.is_contiguous() && tail_log_prob_kernel_supports(weight.size(1));
#else
    (void) like, (void) weight, (void) bias;
    return false;
#endif
}

namespace {
#ifdef STUDIO_CUDA_KERNELS
/// (rows, tail_laid_out_columns(d)) bf16: t's rows (rows, d), zeros, `extra` at column tail_width(d) (a one beside
/// hidden rows, the biases beside words), zeros: the layout our kernels read for d <= 128. Rounded to bf16 as autocast
/// would round fp32 weights for the product.
torch::Tensor laid_out(const torch::Tensor & t, const torch::Tensor & extra) {
    const int64_t d = t.size(1);
    auto wide = torch::zeros({t.size(0), tail_laid_out_columns(d)}, t.options().dtype(torch::kBFloat16));    // (rows, columns)
    wide.narrow(1, 0, d).copy_(t);
    wide.select(1, tail_width(d)).copy_(extra);
    return wide;
}

/// The forward kernel over projected's rows (all of them, or those row_index and range name); lse, where defined,
/// gets each row's log-sum-exp. words: the weight and bias laid out, where the caller has them (else formed here
/// where the kernel reads them so).
torch::Tensor launch_forward(const torch::Tensor & projected, const torch::Tensor & weight, const torch::Tensor & bias,
                             const torch::Tensor & target, const torch::Tensor & row_index, const torch::Tensor & range,
                             const torch::Tensor & lse, torch::Tensor words = {}) {
    c10::cuda::CUDAGuard device_guard(projected.device());
    const int64_t rows = projected.size(0), n_words = weight.size(0);
    auto out = torch::empty({rows}, projected.options().dtype(torch::kFloat));
    auto workspace = torch::empty({tail_log_prob_workspace_floats(rows, n_words)}, out.options());
    TailLogProbKernelArgs args;
    args.hidden = projected.data_ptr();
    args.weight = weight.data_ptr();
    args.bias = bias.data_ptr();
    args.target = target.data_ptr<int64_t>();
    args.rows = rows;
    args.words = n_words;
    args.dim = projected.size(1);
    args.hidden_stride = projected.stride(0);
    args.out = out.data_ptr<float>();
    args.lse = lse.defined() ? lse.data_ptr<float>() : nullptr;
    args.workspace = workspace.data_ptr<float>();
    args.hidden_bf16 = projected.scalar_type() == torch::kBFloat16;
    args.weight_bf16 = weight.scalar_type() == torch::kBFloat16;
    if (!words.defined() && args.hidden_bf16 && args.dim <= 128) words = laid_out(weight, bias);
    if (words.defined()) args.laid_out_weight = words.data_ptr();
    if (row_index.defined()) {
        args.row_index = row_index.data_ptr<int64_t>();
        args.range = range.data_ptr<int64_t>();
    }
    check_kernel_launch(launch_tail_log_prob(args, current_cuda_stream(projected.device())), "tail log-prob");
    return out;                                                                        // (n,)
}

/// t where it is contiguous and starts 16-byte aligned (as the gradient kernels read every array), else a copy.
torch::Tensor contiguous_aligned(const torch::Tensor & t) {
    auto c = t.contiguous();
    return reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 == 0 ? c : c.clone();
}

/// (rows, d) with zero columns up to a multiple of 8, contiguous and aligned: the gradient kernels' rows are 16 bytes
/// at a time. The reference model's tails (128, 32 and 8 wide) pass as they are.
torch::Tensor rows_for_kernels(const torch::Tensor & t) {
    const int64_t padding = (8 - t.size(1) % 8) % 8;
    return padding ? torch::constant_pad_nd(t, {0, padding}) : contiguous_aligned(t);
}

/// The forward keeps each row's log-sum-exp (n floats); the backward forms every logit again on the tensor cores
/// instead of reading a saved (n, words) tensor.
struct TrainableTailLogProb : public torch::autograd::Function<TrainableTailLogProb> {
    static torch::Tensor forward(torch::autograd::AutogradContext * ctx, const torch::Tensor & projected, const torch::Tensor & weight,
                                 const torch::Tensor & bias, const torch::Tensor & column) {
        auto rows = rows_for_kernels(projected);                                                   // (n, d rounded up to 8)
        auto weight_bf16 = rows_for_kernels(weight.to(torch::kBFloat16)), bias_bf16 = contiguous_aligned(bias.to(torch::kBFloat16));
        auto target = contiguous_aligned(column.to(projected.device(), torch::kLong));              // (n,)
        auto lse = torch::empty({projected.size(0)}, projected.options().dtype(torch::kFloat));   // (n,)
        auto words = laid_out(weight_bf16, bias_bf16);                                             // (words, columns)
        auto out = launch_forward(rows, weight_bf16, bias_bf16, target, {}, {}, lse, words);       // (n,)
        ctx->save_for_backward({rows, words, target, lse});
        ctx->saved_data["dim"] = projected.size(1);
        ctx->saved_data["projected_dtype"] = projected.scalar_type();
        ctx->saved_data["weight_dtype"] = weight.scalar_type();
        ctx->saved_data["bias_dtype"] = bias.scalar_type();
        return out;
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext * ctx, torch::autograd::variable_list grads) {
        const auto saved = ctx->get_saved_variables();
        const auto & projected = saved[0], & words = saved[1], & target = saved[2], & lse = saved[3];
        c10::cuda::CUDAGuard device_guard(projected.device());
        const int64_t dim = projected.size(1), n_words = words.size(0);                           // dim: a multiple of 8
        auto hidden = laid_out(projected, torch::ones({}, projected.options()));                  // (n, columns)
        auto upstream = contiguous_aligned(grads[0].to(torch::kFloat));                           // (n,)
        const auto fp32 = projected.options().dtype(torch::kFloat);
        auto grad_projected = torch::zeros({projected.size(0), dim}, fp32);                       // (n,d)
        // The targets' own terms, grad_out(row) x [hidden(row), 1] at the row's target word; the kernels add the rest.
        auto grad_weight = torch::zeros({n_words, dim}, fp32).index_add_(0, target, projected.to(torch::kFloat) * upstream.unsqueeze(1)); // (words,d)
        auto grad_bias = torch::zeros({n_words}, fp32).index_add_(0, target, upstream);          // (words,)
        TailLogProbGradKernelArgs args;
        args.hidden = hidden.data_ptr();
        args.weight = words.data_ptr();
        args.target = target.data_ptr<int64_t>();
        args.rows = projected.size(0);
        args.words = n_words;
        args.dim = dim;
        args.lse = lse.data_ptr<float>();
        args.grad_out = upstream.data_ptr<float>();
        args.grad_hidden = grad_projected.data_ptr<float>();
        args.grad_weight = grad_weight.data_ptr<float>();
        args.grad_bias = grad_bias.data_ptr<float>();
        check_kernel_launch(launch_tail_log_prob_grad(args, current_cuda_stream(projected.device())), "tail log-prob gradient");
        const int64_t unpadded = ctx->saved_data["dim"].toInt();
        return {grad_projected.narrow(1, 0, unpadded).to(ctx->saved_data["projected_dtype"].toScalarType()),
                grad_weight.narrow(1, 0, unpadded).to(ctx->saved_data["weight_dtype"].toScalarType()),
                grad_bias.to(ctx->saved_data["bias_dtype"].toScalarType()), torch::Tensor()};
    }
};
#endif
} // namespace

torch::Tensor tail_log_prob_by_kernel(const torch::Tensor & projected, const torch::Tensor & weight, const torch::Tensor & bias,
                                      const torch::Tensor & column, const torch::Tensor & row_index, const torch::Tensor & range,
                                      const torch::Tensor & words) {
#ifdef STUDIO_CUDA_KERNELS
    if (!tail_kernel_applies(projected, weight, bias) || projected.stride(1) != 1) return {};
    const bool laid_out_taken = projected.scalar_type() == torch::kBFloat16 && projected.size(1) <= 128;
    return launch_forward(projected, weight, bias, column.to(torch::kLong).contiguous(), row_index, range, {}, laid_out_taken ? words : torch::Tensor());
#else
    (void) projected, (void) weight, (void) bias, (void) column, (void) row_index, (void) range, (void) words;
    return {};
#endif
}

torch::Tensor tail_words_for_kernels(const torch::Tensor & weight, const torch::Tensor & bias) {
#ifdef STUDIO_CUDA_KERNELS
    if (!weight.is_cuda() || weight.size(1) > 128) return {};
    return laid_out(weight, bias);
#else
    (void) weight, (void) bias;
    return {};
#endif
}

bool tail_gradient_by_kernels(const std::string & setting) { return setting != "ops"; }

namespace {
std::string tail_gradient = [] {
    const char * value = std::getenv("STUDIO_TAIL_GRADIENT");
    return std::string(value ? value : "auto");
}();

/// trainable_tail_log_prob's conditions.
bool trainable_tail_kernel_applies(const torch::Tensor & projected, const torch::Tensor & weight, const torch::Tensor & bias) {
#ifdef STUDIO_CUDA_KERNELS
    if (!(torch::GradMode::is_enabled() && projected.is_cuda() && own_kernels_enabled() && projected.scalar_type() == torch::kBFloat16
          && projected.dim() == 2 && projected.stride(1) == 1 && is_bf16_or_fp32(weight.scalar_type()) && is_bf16_or_fp32(bias.scalar_type())
          && tail_log_prob_grad_kernel_supports((weight.size(1) + 7) / 8 * 8)))   // narrower rows are padded
        return false;
    return tail_gradient_by_kernels(tail_gradient);
#else
    (void) projected, (void) weight, (void) bias;
    return false;
#endif
}
} // namespace

void set_tail_gradient_setting(const std::string & setting) { tail_gradient = setting; }
std::string tail_gradient_setting() { return tail_gradient; }

torch::Tensor trainable_tail_log_prob(const torch::Tensor & projected, const torch::Tensor & weight, const torch::Tensor & bias,
                                      const torch::Tensor & column) {
    if (!trainable_tail_kernel_applies(projected, weight, bias)) return {};
#ifdef STUDIO_CUDA_KERNELS
    return TrainableTailLogProb::apply(projected, weight, bias, column);
#else
    (void) column;
    return {};
#endif
}

} // namespace studio
