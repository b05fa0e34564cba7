#include "gated_weight.h"

#include <torch/torch.h>

#include "device.h"          // environment_is, cuda_compute_dtype, rows_16_byte_aligned, current_cuda_stream, check_kernel_launch
#include "rel_attention.h"   // own_kernels_enabled

#ifdef STUDIO_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>

#include "gated_weight_kernel.h"
#endif

namespace studio {

namespace {
// STUDIO_GATED_WEIGHT=ops: LibTorch's operations even where our kernels would take the operands (side-by-side timing).
const bool kernels_wanted = !environment_is("STUDIO_GATED_WEIGHT", "ops");
} // namespace

bool gated_weight_kernel_takes(const torch::Tensor & weight, const torch::Tensor & gate, int64_t head_dim) {
#ifdef STUDIO_CUDA_KERNELS
    return kernels_wanted && weight.is_cuda() && own_kernels_enabled() && weight.dim() == 2 && gate.dim() == 1 && head_dim > 0
           && weight.size(1) == gate.size(0) * head_dim && gated_weight_kernel_supports(gate.size(0), head_dim)
           && weight.scalar_type() == torch::kFloat && gate.scalar_type() == torch::kFloat && gate.device() == weight.device()
           && cuda_compute_dtype(weight) == torch::kBFloat16 && weight.is_contiguous() && rows_16_byte_aligned(weight);
#else
    (void) weight, (void) gate, (void) head_dim;
    return false;
#endif
}

namespace {
#ifdef STUDIO_CUDA_KERNELS
GatedWeightKernelArgs kernel_args(const torch::Tensor & weight, const torch::Tensor & gate, int64_t head_dim) {
    GatedWeightKernelArgs args;
    args.rows = weight.size(0);
    args.heads = gate.size(0);
    args.head_dim = head_dim;
    args.weight = weight.data_ptr<float>();
    args.gate = gate.data_ptr<float>();
    return args;
}

/// The product and the rounding to bf16 in one pass; back, the weight's gradient and the gates' sums in one.
struct GatedWeight : public torch::autograd::Function<GatedWeight> {
    static torch::Tensor forward(torch::autograd::AutogradContext * ctx, const torch::Tensor & weight, const torch::Tensor & gate,
                                 int64_t head_dim) {
        c10::cuda::CUDAGuard device_guard(weight.device());
        auto gate_in = gate.contiguous();
        auto out = torch::empty(weight.sizes(), weight.options().dtype(torch::kBFloat16));               // (D, H x dh)
        auto args = kernel_args(weight, gate_in, head_dim);
        args.out = out.data_ptr();
        check_kernel_launch(launch_gated_weight_forward(args, current_cuda_stream(weight.device())), "gated weight forward");
        ctx->save_for_backward({weight, gate_in});
        ctx->saved_data["head_dim"] = head_dim;
        return out;
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext * ctx, torch::autograd::variable_list grads) {
        const auto saved = ctx->get_saved_variables();
        const auto & weight = saved[0], & gate = saved[1];
        c10::cuda::CUDAGuard device_guard(weight.device());
        auto grad_out = grads[0].to(torch::kBFloat16).contiguous();
        if (!rows_16_byte_aligned(grad_out)) grad_out = grad_out.clone();
        auto grad_weight = torch::empty_like(weight);                                                   // (D, H x dh)
        auto grad_gate = torch::empty_like(gate);                                                       // (H,)
        auto args = kernel_args(weight, gate, ctx->saved_data["head_dim"].toInt());
        args.grad_out = grad_out.data_ptr();
        args.grad_weight = grad_weight.data_ptr<float>();
        args.grad_gate = grad_gate.data_ptr<float>();
        check_kernel_launch(launch_gated_weight_backward(args, current_cuda_stream(weight.device())), "gated weight backward");
        return {grad_weight, grad_gate, torch::Tensor()};
    }
};
#endif
} // namespace

torch::Tensor gated_weight(const torch::Tensor & weight, const torch::Tensor & gate, int64_t head_dim) {
    const int64_t H = gate.size(0);
    TORCH_CHECK(weight.dim() == 2 && gate.dim() == 1 && weight.size(1) == H * head_dim, "gated_weight: weight (D, H x head_dim) and gate (H,), got ",
                weight.sizes(), " and ", gate.sizes(), " with head_dim ", head_dim);
#ifdef STUDIO_CUDA_KERNELS
    if (gated_weight_kernel_takes(weight, gate, head_dim)) return GatedWeight::apply(weight, gate, head_dim);
#endif
    return weight * gate.view({H, 1}).expand({H, head_dim}).reshape({H * head_dim}).to(weight.dtype()); // (D, H x dh)
}

} // namespace studio
