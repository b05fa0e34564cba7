#include "biased_product.h"

#include <torch/torch.h>

#include "device.h"   // cuda_compute_dtype

namespace studio {

namespace {

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

} // namespace

torch::Tensor biased_product(const torch::Tensor & rows, const torch::Tensor & weight, const torch::Tensor & bias, BiasGradient how) {
    TORCH_CHECK(rows.dim() == 2 && weight.dim() == 2 && bias.dim() == 1 && weight.size(1) == rows.size(1) && bias.size(0) == weight.size(0),
                "biased_product: rows (M,K), weight (D,K) and bias (D,), got ", rows.sizes(), ", ", weight.sizes(), " and ", bias.sizes());
    if (!torch::GradMode::is_enabled()) return torch::addmm(bias, rows, weight.t());                   // (M,D)
    return BiasedProduct::apply(rows, weight, bias, (int64_t) how);                                     // (M,D)
}

} // namespace studio
