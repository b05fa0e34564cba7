#include "biased_product.h"

#include <cstdint>

#include <torch/torch.h>

#include "device.h"          // cuda_compute_dtype, environment_is, rows_16_byte_aligned, current_cuda_stream, check_kernel_launch
#include "rel_attention.h"   // own_kernels_enabled

#ifdef STUDIO_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>

#include "head_bias_kernel.h"
#endif

namespace studio {

namespace {

/// Whether our head-bias kernel takes x (H,B,T,dh): batch-major rows of H*dh (a head's dh columns after the previous
/// head's, a batch row's T rows one after another; the projections' own layout), 16-byte aligned, the bias in x's
/// dtype on its device.
bool head_bias_kernel_takes(const torch::Tensor & x, const torch::Tensor & bias) {
#ifdef STUDIO_CUDA_KERNELS
    const int64_t H = x.size(0), T = x.size(2), dh = x.size(3);
    const bool batch_major = x.stride(3) == 1 && x.stride(0) == dh && x.stride(2) >= H * dh && x.stride(1) == T * x.stride(2);
    return x.is_cuda() && own_kernels_enabled() && batch_major && rows_16_byte_aligned(x) && rows_16_byte_aligned(bias)
           && (x.scalar_type() == torch::kBFloat16 || x.scalar_type() == torch::kFloat) && bias.scalar_type() == x.scalar_type()
           && bias.device() == x.device() && bias.is_contiguous() && (H * dh) % 8 == 0;
#else
    (void) x, (void) bias;
    return false;
#endif
}

#ifdef STUDIO_CUDA_KERNELS
/// The kernel's arguments for x (H,B,T,dh) (head_bias_kernel_takes) plus bias into out; the caller sets out's layout.
HeadBiasKernelArgs head_bias_args(const torch::Tensor & x, const torch::Tensor & bias, const torch::Tensor & out) {
    HeadBiasKernelArgs args;
    args.x = x.data_ptr();
    args.bias = bias.data_ptr();
    args.out = out.data_ptr();
    args.bf16 = x.scalar_type() == torch::kBFloat16;
    args.rows = x.size(1) * x.size(2);
    args.width = x.size(0) * x.size(3);
    args.x_row_stride = x.stride(2);
    return args;
}
#endif

/// x + bias, by our kernel where it takes x, else by LibTorch's add. The sum keeps x's layout either way.
torch::Tensor add_head_bias(const torch::Tensor & x, const torch::Tensor & bias) {
#ifdef STUDIO_CUDA_KERNELS
    if (head_bias_kernel_takes(x, bias)) {
        c10::cuda::CUDAGuard device_guard(x.device());
        const int64_t H = x.size(0), B = x.size(1), T = x.size(2), dh = x.size(3);
        auto out = torch::empty({B, T, H, dh}, x.options());                                               // (B,T,H,dh)
        auto args = head_bias_args(x, bias, out);
        args.out_row_stride = H * dh;
        check_kernel_launch(launch_plus_head_bias(args, current_cuda_stream(x.device())), "plus_head_bias");
        return out.permute({2, 0, 1, 3});                                                                // (H,B,T,dh)
    }
#endif
    return x + bias;                                                                                    // (H,B,T,dh)
}

struct BiasedProduct : public torch::autograd::Function<BiasedProduct> {
    static torch::Tensor forward(torch::autograd::AutogradContext * ctx, const torch::Tensor & rows, const torch::Tensor & weight,
                                 const torch::Tensor & bias, int64_t how) {
        const auto dtype = cuda_compute_dtype(rows);
        auto rows_used = rows.to(dtype), weight_used = weight.to(dtype);
        ctx->save_for_backward({rows_used, weight_used});
        ctx->saved_data["dtypes"] = std::vector<int64_t>{(int64_t) rows.scalar_type(), (int64_t) weight.scalar_type(), (int64_t) bias.scalar_type()};
        ctx->saved_data["how"] = how;
        return torch::addmm(bias.to(dtype), rows_used, weight_used.t());                                 // (M,D)
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext * ctx, torch::autograd::variable_list grads) {
        const auto saved = ctx->get_saved_variables();
        const auto & rows = saved[0], & weight = saved[1];
        const auto dtypes = ctx->saved_data["dtypes"].toIntVector();
        const int64_t M = rows.size(0), K = rows.size(1);
        auto grad = grads[0].to(rows.scalar_type());                                                    // (M,D)
        torch::Tensor grad_weight, grad_bias;
        if ((BiasGradient) ctx->saved_data["how"].toInt() == BiasGradient::ones_column) {
            auto ones_and_padding = torch::zeros({M, 8}, rows.options());
            ones_and_padding.select(1, 0).fill_(1);
            auto both = grad.t().mm(torch::cat({rows, ones_and_padding}, 1));                          // (D,K+8)
            grad_weight = both.narrow(1, 0, K);                                                         // (D,K)
            grad_bias = both.select(1, K);                                                              // (D,)
        } else {
            grad_weight = grad.t().mm(rows);                                                            // (D,K)
            grad_bias = torch::ones({1, M}, grad.options()).mm(grad).view({grad.size(1)});              // (D,)
        }
        return {grad.mm(weight).to((torch::ScalarType) dtypes[0]), grad_weight.to((torch::ScalarType) dtypes[1]),
                grad_bias.to((torch::ScalarType) dtypes[2]), torch::Tensor()};
    }
};

struct PlusHeadBias : public torch::autograd::Function<PlusHeadBias> {
    static torch::Tensor forward(torch::autograd::AutogradContext *, const torch::Tensor & x, const torch::Tensor & bias) {
        return add_head_bias(x, bias);                                                                  // (H,B,T,dh)
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext *, torch::autograd::variable_list grads) {
        const auto & grad = grads[0];                                                                   // (H,B,T,dh)
        const int64_t H = grad.size(0), rows = grad.size(1) * grad.size(2), dh = grad.size(3);
        auto batch_major = grad.permute({1, 2, 0, 3});                                                 // (B,T,H,dh)
        torch::Tensor grad_bias;
        if (batch_major.is_contiguous())
            grad_bias = torch::ones({1, rows}, grad.options()).mm(batch_major.reshape({rows, H * dh}));             // (1,H*dh)
        else if (grad.is_contiguous())
            grad_bias = torch::bmm(torch::ones({H, 1, rows}, grad.options()), grad.reshape({H, rows, dh}));       // (H,1,dh)
        else
            grad_bias = grad.sum({1, 2});
        return {grad, grad_bias.view({H, 1, 1, dh})};
    }
};

} // namespace

torch::Tensor plus_head_bias(const torch::Tensor & x, const torch::Tensor & bias) {
    TORCH_CHECK(x.dim() == 4 && bias.dim() == 4 && bias.size(0) == x.size(0) && bias.size(1) == 1 && bias.size(2) == 1
                    && bias.size(3) == x.size(3),
                "plus_head_bias: x (H,B,T,dh) and bias (H,1,1,dh), got ", x.sizes(), " and ", bias.sizes());
    // STUDIO_HEAD_BIAS=ops: LibTorch's add and its backward's sum (side-by-side timing).
    static const bool by_product_wanted = !environment_is("STUDIO_HEAD_BIAS", "ops");
    if (!by_product_wanted) return x + bias;                                                            // (H,B,T,dh)
    if (!torch::GradMode::is_enabled()) return add_head_bias(x, bias);                                  // (H,B,T,dh)
    return PlusHeadBias::apply(x, bias);                                                                // (H,B,T,dh)
}

std::pair<torch::Tensor, torch::Tensor> head_major_plus_biases(const torch::Tensor & x, const torch::Tensor & biases) {
    const int64_t H = x.size(0), dh = x.size(3);
    TORCH_CHECK(x.dim() == 4 && biases.dim() == 3 && biases.size(0) == 2 && biases.size(1) == H && biases.size(2) == dh,
                "head_major_plus_biases: x (H,B,T,dh) and biases (2,H,dh), got ", x.sizes(), " and ", biases.sizes());
    const auto u = biases[0].to(x.scalar_type()).contiguous(), v = biases[1].to(x.scalar_type()).contiguous();   // (H,dh)
#ifdef STUDIO_CUDA_KERNELS
    if (head_bias_kernel_takes(x, u) && dh % 8 == 0) {
        c10::cuda::CUDAGuard device_guard(x.device());
        auto plus_u = torch::empty(x.sizes(), x.options()), plus_v = torch::empty(x.sizes(), x.options());   // (H,B,T,dh)
        auto args = head_bias_args(x, u, plus_u);
        args.bias2 = v.data_ptr();
        args.out2 = plus_v.data_ptr();
        args.head_dim = dh;
        args.out_row_stride = dh;
        args.out_head_stride = plus_u.stride(0);
        check_kernel_launch(launch_plus_head_bias(args, current_cuda_stream(x.device())), "plus_head_bias (head-major)");
        return {plus_u, plus_v};
    }
#endif
    return {(x + u.view({H, 1, 1, dh})).contiguous(), (x + v.view({H, 1, 1, dh})).contiguous()};       // (H,B,T,dh)
}

torch::Tensor biased_product(const torch::Tensor & rows, const torch::Tensor & weight, const torch::Tensor & bias, BiasGradient how) {
    TORCH_CHECK(rows.dim() == 2 && weight.dim() == 2 && bias.dim() == 1 && weight.size(1) == rows.size(1) && bias.size(0) == weight.size(0),
                "biased_product: rows (M,K), weight (D,K) and bias (D,), got ", rows.sizes(), ", ", weight.sizes(), " and ", bias.sizes());
    if (!torch::GradMode::is_enabled()) return torch::addmm(bias, rows, weight.t());                   // (M,D)
    return BiasedProduct::apply(rows, weight, bias, (int64_t) how);                                     // (M,D)
}

} // namespace studio
