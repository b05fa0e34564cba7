#include "content_bias.h"

#include <cmath>

#include <torch/torch.h>

#include "device.h"          // environment_is, is_bf16_or_fp32, current_cuda_stream, check_kernel_launch
#include "rel_attention.h"   // own_kernels_enabled, rel_shift

#ifdef STUDIO_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>

#include "content_bias_kernel.h"
#endif

namespace studio {

namespace {
// STUDIO_CONTENT_BIAS=ops: LibTorch's operations even where our kernels would take the operands (side-by-side timing).
const bool kernels_wanted = !environment_is("STUDIO_CONTENT_BIAS", "ops");
} // namespace

bool content_bias_kernel_takes(const torch::Tensor & position, const torch::Tensor & key_bias, const torch::Tensor & keep) {
#ifdef STUDIO_CUDA_KERNELS
    const bool key_bias_taken = !key_bias.defined()
                                || (key_bias.scalar_type() == position.scalar_type() && key_bias.device() == position.device() && key_bias.stride(2) == 1);
    return kernels_wanted && position.is_cuda() && own_kernels_enabled() && is_bf16_or_fp32(position.scalar_type()) && key_bias_taken
           && keep.device() == position.device() && keep.scalar_type() == torch::kBool && position.stride(3) == 1 && keep.stride(1) == 1
           && content_bias_kernel_supports(position.size(3), keep.size(1), position.scalar_type() == torch::kBFloat16);
#else
    (void) position;
    (void) key_bias;
    (void) keep;
    return false;
#endif
}

namespace {

#ifdef STUDIO_CUDA_KERNELS
ContentBiasKernelArgs kernel_args(const torch::Tensor & keep, int64_t H, int64_t B, int64_t T, int64_t S, bool bf16, double scale) {
    ContentBiasKernelArgs args;
    args.bf16 = bf16;
    args.heads = H;
    args.batch = B;
    args.tgt_len = T;
    args.key_len = S;
    args.scale = (float) scale;
    args.keep = keep.data_ptr<bool>();
    args.keep_stride = keep.stride(0);
    return args;
}

/// The mask, the shift, the sum and the scale in one pass; the backward writes the position gradient in one pass
/// (shifted back, zero off the kept band) and, where there is a key bias, sums each key's column for its gradient in
/// another.
struct ContentBias : public torch::autograd::Function<ContentBias> {
    static torch::Tensor forward(torch::autograd::AutogradContext * ctx, const torch::Tensor & position, const torch::Tensor & key_bias,
                                 const torch::Tensor & keep, double scale) {
        c10::cuda::CUDAGuard device_guard(position.device());
        const int64_t H = position.size(0), B = position.size(1), T = position.size(2), S = keep.size(1), P = position.size(3);
        auto bias = torch::empty({H, B, T, S}, position.options());                                   // (H,B,T,S)
        auto args = kernel_args(keep, H, B, T, S, position.scalar_type() == torch::kBFloat16, scale);
        args.position = position.data_ptr();
        args.position_len = P;
        for (int d = 0; d < 3; ++d) args.position_stride[d] = position.stride(d);
        if (key_bias.numel() > 0) {
            args.key_bias = key_bias.data_ptr();
            args.key_bias_stride[0] = key_bias.stride(0);
            args.key_bias_stride[1] = key_bias.stride(1);
        }
        args.bias = bias.data_ptr();
        check_kernel_launch(launch_content_bias_forward(args, current_cuda_stream(position.device())), "content bias forward");
        ctx->save_for_backward({keep});
        ctx->saved_data["key_bias"] = key_bias.numel() > 0;
        ctx->saved_data["scale"] = scale;
        ctx->saved_data["bf16"] = position.scalar_type() == torch::kBFloat16;
        ctx->saved_data["sizes"] = std::vector<int64_t>{H, B, T, S, P};
        return bias;
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext * ctx, torch::autograd::variable_list grads) {
        const auto keep = ctx->get_saved_variables()[0];
        const auto sizes = ctx->saved_data["sizes"].toIntVector();
        const int64_t H = sizes[0], B = sizes[1], T = sizes[2], S = sizes[3], P = sizes[4];
        c10::cuda::CUDAGuard device_guard(keep.device());
        const bool bf16 = ctx->saved_data["bf16"].toBool();
        auto grad_bias = grads[0].to(bf16 ? torch::kBFloat16 : torch::kFloat);
        if (grad_bias.stride(3) != 1) grad_bias = grad_bias.contiguous();
        auto grad_position = torch::empty({H, B, T, P}, grad_bias.options());                         // (H,B,T,P)
        torch::Tensor grad_key_bias;
        if (ctx->saved_data["key_bias"].toBool()) grad_key_bias = torch::empty({H, B, S}, grad_bias.options());  // (H,B,S)
        auto args = kernel_args(keep, H, B, T, S, bf16, ctx->saved_data["scale"].toDouble());
        args.grad_bias = grad_bias.data_ptr();
        for (int d = 0; d < 3; ++d) args.grad_bias_stride[d] = grad_bias.stride(d);
        args.grad_position = grad_position.data_ptr();
        args.position_len = P;
        args.grad_key_bias = grad_key_bias.defined() ? grad_key_bias.data_ptr() : nullptr;
        check_kernel_launch(launch_content_bias_backward(args, current_cuda_stream(keep.device())), "content bias backward");
        return {grad_position, grad_key_bias, torch::Tensor(), torch::Tensor()};
    }
};
#endif

} // namespace

torch::Tensor content_bias(const torch::Tensor & position, const torch::Tensor & key_bias, const torch::Tensor & keep, double scale) {
    const int64_t S = keep.dim() == 2 ? keep.size(1) : -1;
    const bool key_bias_fits = !key_bias.defined() || (key_bias.dim() == 3 && key_bias.size(0) == position.size(0)
                                                       && key_bias.size(1) == position.size(1) && key_bias.size(2) == S);
    TORCH_CHECK(position.dim() == 4 && key_bias_fits && keep.dim() == 2 && keep.size(0) == position.size(2) && position.size(3) <= S,
                "content_bias: position (H,B,T,P <= S), key_bias (H,B,S) or none and keep (T,S), got ", position.sizes(), ", ",
                key_bias.defined() ? key_bias.sizes() : c10::IntArrayRef{}, " and ", keep.sizes());
#ifdef STUDIO_CUDA_KERNELS
    // LibTorch 2's Function::apply cannot take an undefined tensor: no key bias travels as an empty one.
    if (content_bias_kernel_takes(position, key_bias, keep))
        return ContentBias::apply(position, key_bias.defined() ? key_bias : torch::empty({0}, position.options()), keep, scale);
#endif
    // The columns left out are read by no kept entry: zeros stand in for them.
    auto shifted = rel_shift(position.size(3) < S ? torch::constant_pad_nd(position, {S - position.size(3), 0}) : position);   // (H,B,T,S)
    auto scores = key_bias.defined() ? shifted + key_bias.unsqueeze(2) : shifted;                               // (H,B,T,S)
    return (scores * scale).masked_fill(keep.logical_not(), -INFINITY);
}

} // namespace studio
