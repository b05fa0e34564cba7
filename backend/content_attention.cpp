#include "content_attention.h"

#include <cmath>
#include <mutex>
#include <stdexcept>

#include <torch/torch.h>
#include <torch/version.h>

#include "device.h"          // environment_is, rows_16_byte_aligned, current_cuda_stream, check_kernel_launch
#include "rel_attention.h"   // own_kernels_enabled

#if defined(STUDIO_CUDA_KERNELS) && TORCH_VERSION_MAJOR >= 2
#define STUDIO_CONTENT_KERNELS 1
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAGuard.h>

#include "rel_attention_grad_kernel.h"
#include "rel_attention_kernel.h"
#endif

namespace studio {

namespace {
// STUDIO_CONTENT_TRAINING=efficient: training's content columns by the memory-efficient kernel with a materialised
// bias, as before our kernels (side-by-side timing).
bool content_kernels_wanted = !environment_is("STUDIO_CONTENT_TRAINING", "efficient");
} // namespace

void set_content_attention_kernels(bool enabled) { content_kernels_wanted = enabled; }
bool content_attention_kernels_enabled() { return content_kernels_wanted; }

bool content_attention_kernels_take(const torch::Tensor & q, const torch::Tensor & k, bool same_length) {
#ifdef STUDIO_CONTENT_KERNELS
    const int64_t dh = q.size(-1);
    return content_kernels_wanted && own_kernels_enabled() && same_length && q.is_cuda() && q.scalar_type() == torch::kBFloat16
           && k.scalar_type() == torch::kBFloat16 && (dh == 16 || dh == 32 || dh == 64) && q.stride(-1) == 1 && k.stride(-1) == 1
           && rows_16_byte_aligned(q) && rows_16_byte_aligned(k);
#else
    (void) q, (void) k, (void) same_length;
    return false;
#endif
}

#ifdef STUDIO_CONTENT_KERNELS
namespace {

/// A (B,H,L,...) tensor's strides as the kernels take them: head, batch, position.
void head_batch_position(int64_t (&stride)[3], const torch::Tensor & t) {
    stride[0] = t.stride(1);
    stride[1] = t.stride(0);
    stride[2] = t.stride(2);
}

/// The dropout's keep threshold and scale, and the generator's state: the forward's record where rng_in is given (the
/// backward, the keep mask), else a new call's.
AttentionDropout dropout_args(double dropout, const torch::Device & device, const torch::Tensor & rng_in) {
    AttentionDropout args;
    if (dropout <= 0) return args;
    TORCH_CHECK(dropout < 1, "attention dropout must be below 1, not ", dropout);
    args.enabled = true;
    args.keep_threshold = (uint32_t) std::lround((1 - dropout) * 65536.0);
    args.keep_scale = (float) (1 / (1 - dropout));
    if (rng_in.defined()) {
        args.rng_in = rng_in.data_ptr<int64_t>();
        return args;
    }
    // The default generator's state for one call, graph-safe: inside a capture, pointers read at every replay.
    auto generator = at::get_generator_or_default<at::CUDAGeneratorImpl>(std::nullopt, at::cuda::detail::getDefaultCUDAGenerator(device.index()));
    at::PhiloxCudaState state;
    {
        std::lock_guard<std::mutex> lock(generator->mutex_);
        state = generator->philox_cuda_state(4);
    }
    if (state.captured_) {
        args.seed_ptr = state.seed_.ptr;
        args.offset_ptr = state.offset_.ptr;
        args.offset_intragraph = state.offset_intragraph_;
    } else {
        args.seed = state.seed_.val;
        args.offset = state.offset_.val;
    }
    return args;
}

RelativeAttentionKernelArgs forward_args(const torch::Tensor & q_u, const torch::Tensor & q_v, const torch::Tensor & k,
                                         const torch::Tensor & val, const torch::Tensor & position_keys, int64_t first_position, double scale) {
    TORCH_CHECK(q_u.strides() == q_v.strides(), "content attention: q + u and q + v need one layout");
    TORCH_CHECK(first_position >= 0 && first_position <= q_u.size(2) - 1 && position_keys.size(1) == k.size(2) - first_position,
                "content attention: the position keys must be rows first_position .. S-1, first_position <= T-1");
    RelativeAttentionKernelArgs args;
    args.q = q_u.data_ptr();
    args.q_position = q_v.data_ptr();
    args.k = k.data_ptr();
    args.v = val.data_ptr();
    args.r = position_keys.data_ptr();
    args.first_position = first_position;
    args.heads = q_u.size(1);
    args.batch = q_u.size(0);
    args.tgt_len = q_u.size(2);
    args.mem_len = k.size(2) - q_u.size(2);
    args.head_dim = q_u.size(3);
    args.same_length = true;
    args.scale = (float) scale;
    head_batch_position(args.q_stride, q_u);
    head_batch_position(args.k_stride, k);
    head_batch_position(args.v_stride, val);
    args.r_stride[0] = position_keys.stride(0);
    args.r_stride[1] = position_keys.stride(1);
    return args;
}

} // namespace

ContentAttention content_attention_forward(const torch::Tensor & q_u, const torch::Tensor & q_v, const torch::Tensor & k,
                                           const torch::Tensor & val, const torch::Tensor & position_keys, int64_t first_position,
                                           const torch::Tensor & persistent_out, const torch::Tensor & persistent_lse, double scale,
                                           double dropout) {
    c10::cuda::CUDAGuard device_guard(q_u.device());
    const int64_t B = q_u.size(0), H = q_u.size(1), T = q_u.size(2), dh = q_u.size(3);
    auto args = forward_args(q_u, q_v, k, val, position_keys, first_position, scale);
    ContentAttention result;
    result.out = torch::empty({B, T, H, dh}, q_u.options()).permute({0, 2, 1, 3});                // (B,H,T,dh)
    result.lse = torch::empty({H, B, T}, q_u.options().dtype(torch::kFloat)).transpose(0, 1);     // (B,H,T)
    result.rng = torch::zeros({2}, q_u.options().dtype(torch::kLong));
    head_batch_position(args.out_stride, result.out);
    args.out = result.out.data_ptr();
    args.lse = result.lse.data_ptr<float>();
    head_batch_position(args.lse_stride, result.lse);
    if (persistent_out.defined()) {
        args.persistent_out = persistent_out.data_ptr();
        args.persistent_lse = persistent_lse.data_ptr<float>();
        for (int d = 0; d < 3; ++d) {
            args.persistent_out_stride[d] = persistent_out.stride(d);
            args.persistent_lse_stride[d] = persistent_lse.stride(d);
        }
    }
    args.dropout = dropout_args(dropout, q_u.device(), {});
    args.dropout.rng_out = result.rng.data_ptr<int64_t>();
    check_kernel_launch(launch_relative_attention(args, current_cuda_stream(q_u.device())), "training relative attention");
    return result;
}

ContentAttentionGradients content_attention_backward(const torch::Tensor & grad, const torch::Tensor & q_u, const torch::Tensor & q_v,
                                                     const torch::Tensor & k, const torch::Tensor & val, const torch::Tensor & position_keys,
                                                     int64_t first_position, const ContentAttention & forward, double scale, double dropout,
                                                     const GradientJoins & joins) {
    c10::cuda::CUDAGuard device_guard(q_u.device());
    const int64_t B = q_u.size(0), H = q_u.size(1), T = q_u.size(2), S = k.size(2), dh = q_u.size(3), P = S - first_position;
    TORCH_CHECK(rows_16_byte_aligned(grad) && grad.stride(-1) == 1, "content attention backward: the gradient's rows must be 16-byte aligned");
    RelativeAttentionGradKernelArgs args;
    args.forward = forward_args(q_u, q_v, k, val, position_keys, first_position, scale);
    head_batch_position(args.forward.out_stride, forward.out);
    head_batch_position(args.forward.lse_stride, forward.lse);
    args.forward.dropout = dropout_args(dropout, q_u.device(), forward.rng);
    args.out = forward.out.data_ptr();
    args.lse = forward.lse.data_ptr<float>();
    args.grad_out = grad.data_ptr();
    head_batch_position(args.grad_out_stride, grad);
    auto out_dot_grad = torch::empty({H, B, T}, forward.lse.options());                             // lse's layout
    args.out_dot_grad = out_dot_grad.data_ptr<float>();
    ContentAttentionGradients grads;
    // Laid out as the model's projections are, (B,L,H,dh).
    grads.q_u = torch::empty({B, T, H, dh}, q_u.options()).permute({0, 2, 1, 3});                 // (B,H,T,dh)
    if (joins.key_values) {
        grads.key_values = torch::empty({B, S, 2, H, dh}, k.options());                             // (B,S,2,H,dh)
        grads.k = grads.key_values.select(2, 0).permute({0, 2, 1, 3});                             // (B,H,S,dh)
        grads.v = grads.key_values.select(2, 1).permute({0, 2, 1, 3});
    } else {
        grads.k = torch::empty({B, S, H, dh}, k.options()).permute({0, 2, 1, 3});                 // (B,H,S,dh)
        grads.v = torch::empty({B, S, H, dh}, k.options()).permute({0, 2, 1, 3});
    }
    grads.position = torch::empty({H, B, T, P}, q_u.options());                                   // (H,B,T,P)
    args.grad_q = grads.q_u.data_ptr();
    head_batch_position(args.grad_q_stride, grads.q_u);
    args.grad_k = grads.k.data_ptr();
    args.grad_v = grads.v.data_ptr();
    head_batch_position(args.grad_kv_stride, grads.k);   // v's strides are the same
    args.grad_position = grads.position.data_ptr();
    for (int d = 0; d < 3; ++d) args.grad_position_stride[d] = grads.position.stride(d);
    const auto stream = current_cuda_stream(q_u.device());
    if (!joins.persistent_q.defined()) {
        check_kernel_launch(launch_relative_attention_backward(args, stream), "training relative attention backward");
        return grads;
    }
    const auto & persistent = joins.persistent_q;
    TORCH_CHECK(persistent.sizes() == q_u.sizes() && persistent.scalar_type() == torch::kBFloat16 && persistent.stride(-1) == 1
                    && persistent.device() == q_u.device(),
                "content attention backward: the persistent part's q gradient must be (B,H,T,dh) bf16 on q's device, got ",
                persistent.sizes(), " ", persistent.scalar_type());
    check_kernel_launch(launch_relative_attention_backward(args, stream, RelativeAttentionBackwardLaunches::rows_and_keys),
                        "training relative attention backward (keys)");
    // (q+v).r's gradient to q + v, before the query launch, which adds it.
    auto position_term = torch::matmul(grads.position.view({H, B * T, P}), position_keys).view({H, B, T, dh}).transpose(0, 1); // (B,H,T,dh)
    const torch::Tensor * terms[2] = {&position_term, &persistent};
    for (int t = 0; t < 2; ++t) {
        args.grad_q_terms[t] = terms[t]->data_ptr();
        head_batch_position(args.grad_q_term_stride[t], *terms[t]);
    }
    auto column_sums = torch::empty({relative_attention_query_tiles(T) * B, H, 2, dh}, q_u.options().dtype(torch::kFloat));
    args.grad_q_column_sums = column_sums.data_ptr<float>();
    check_kernel_launch(launch_relative_attention_backward(args, stream, RelativeAttentionBackwardLaunches::queries),
                        "training relative attention backward (queries)");
    grads.head_biases = column_sums.sum(0);                                                        // (H,2,dh)
    return grads;
}

torch::Tensor content_attention_keep_mask(const torch::Tensor & rng, int64_t B, int64_t H, int64_t T, int64_t S, double dropout) {
    c10::cuda::CUDAGuard device_guard(rng.device());
    auto keep = torch::empty({B, H, T, S}, rng.options().dtype(torch::kUInt8));
    const auto args = dropout_args(dropout, rng.device(), rng);
    check_kernel_launch(launch_attention_keep_mask(args, H, B, T, S - T, keep.data_ptr<uint8_t>(), current_cuda_stream(rng.device())),
                        "attention keep mask");
    return keep.to(torch::kBool);
}

#else
ContentAttention content_attention_forward(const torch::Tensor &, const torch::Tensor &, const torch::Tensor &, const torch::Tensor &,
                                           const torch::Tensor &, int64_t, const torch::Tensor &, const torch::Tensor &, double, double) {
    throw std::runtime_error("content attention: our training kernels are not built (a CUDA build on LibTorch 2)");
}
ContentAttentionGradients content_attention_backward(const torch::Tensor &, const torch::Tensor &, const torch::Tensor &, const torch::Tensor &,
                                                     const torch::Tensor &, const torch::Tensor &, int64_t, const ContentAttention &, double,
                                                     double, const GradientJoins &) {
    throw std::runtime_error("content attention: our training kernels are not built (a CUDA build on LibTorch 2)");
}
torch::Tensor content_attention_keep_mask(const torch::Tensor &, int64_t, int64_t, int64_t, int64_t, double) {
    throw std::runtime_error("content attention: our training kernels are not built (a CUDA build on LibTorch 2)");
}
#endif

} // namespace studio
