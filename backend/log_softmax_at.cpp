#include "log_softmax_at.h"

#include <torch/torch.h>

#include "device.h"          // is_bf16_or_fp32, current_cuda_stream, check_kernel_launch
#include "rel_attention.h"   // own_kernels_enabled

#ifdef STUDIO_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>

#include "log_softmax_at_kernel.h"
#endif

namespace studio {

bool log_softmax_at_kernel_takes(const torch::Tensor & logits) {
#ifdef STUDIO_CUDA_KERNELS
    return logits.is_cuda() && own_kernels_enabled() && is_bf16_or_fp32(logits.scalar_type()) && logits.dim() == 2 && logits.size(1) > 0
           && logits.stride(1) == 1;
#else
    (void) logits;
    return false;
#endif
}

namespace {

#ifdef STUDIO_CUDA_KERNELS
/// The kernels' arguments for logits (n,V) and target (n,) int64 contiguous, both on the logits' device.
LogSoftmaxAtKernelArgs kernel_args(const torch::Tensor & logits, const torch::Tensor & target) {
    LogSoftmaxAtKernelArgs args;
    args.logits = logits.data_ptr();
    args.logits_bf16 = logits.scalar_type() == torch::kBFloat16;
    args.rows = logits.size(0);
    args.cols = logits.size(1);
    args.logits_stride = logits.stride(0);
    args.target = target.data_ptr<int64_t>();
    return args;
}

/// The forward keeps the per-row log-sum-exp (n floats) beside the logits it already holds, so the backward needs
/// neither a log-softmax tensor nor a zeros-and-scatter of the upstream gradient: one pass writes the gradient.
struct LogSoftmaxAt : public torch::autograd::Function<LogSoftmaxAt> {
    static torch::Tensor forward(torch::autograd::AutogradContext * ctx, const torch::Tensor & logits, const torch::Tensor & column) {
        c10::cuda::CUDAGuard device_guard(logits.device());
        auto target = column.to(logits.device(), torch::kLong).contiguous();                      // (n,)
        auto out = torch::empty({logits.size(0)}, logits.options().dtype(torch::kFloat));         // (n,)
        auto lse = torch::empty_like(out);                                                         // (n,)
        auto args = kernel_args(logits, target);
        args.out = out.data_ptr<float>();
        args.lse = lse.data_ptr<float>();
        check_kernel_launch(launch_log_softmax_at_forward(args, current_cuda_stream(logits.device())), "log_softmax_at forward");
        ctx->save_for_backward({logits, lse, target});
        return out;
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext * ctx, torch::autograd::variable_list grads) {
        const auto saved = ctx->get_saved_variables();
        const auto & logits = saved[0], & lse = saved[1], & target = saved[2];
        c10::cuda::CUDAGuard device_guard(logits.device());
        auto upstream = grads[0].to(torch::kFloat).contiguous();                                  // (n,)
        auto grad = torch::empty({logits.size(0), logits.size(1)}, logits.options());             // (n,V) contiguous
        auto args = kernel_args(logits, target);
        args.lse = lse.data_ptr<float>();
        args.grad_out = upstream.data_ptr<float>();
        args.grad_logits = grad.data_ptr();
        args.grad_stride = grad.stride(0);
        check_kernel_launch(launch_log_softmax_at_backward(args, current_cuda_stream(logits.device())), "log_softmax_at backward");
        return {grad, torch::Tensor()};
    }
};
#endif

} // namespace

torch::Tensor log_softmax_at(const torch::Tensor & logits, const torch::Tensor & column) {   // (n,V), (n,) -> (n,)
    TORCH_CHECK(logits.dim() == 2 && column.dim() == 1 && column.size(0) == logits.size(0),
                "log_softmax_at: logits (n, V) and column (n,), got ", logits.sizes(), " and ", column.sizes());
#ifdef STUDIO_CUDA_KERNELS
    if (log_softmax_at_kernel_takes(logits)) return LogSoftmaxAt::apply(logits, column);
#endif
    // One fused softmax pass: `logit - logsumexp` made ATen write (logits - max) and its exp as two more (n,V)
    // tensors, 2.4 GB each in fp32 for the 160k-word cluster at batch 32 with random targets, where this writes the
    // log-softmax once.
    return torch::log_softmax(logits.to(torch::kFloat), 1).gather(1, column.unsqueeze(1)).squeeze(1);
}

} // namespace studio
