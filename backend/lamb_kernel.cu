// Grid-stride loops of 16-byte loads and stores where every buffer is 16-byte aligned (the flat buffers are whole
// allocations), else one element at a time. fp32 throughout, in the order of operations the LibTorch path uses.
#include "lamb_kernel.h"

#include <cstdint>
#include <climits>

#include <cuda_runtime.h>

#include "kernel_common.cuh"

namespace studio {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 132 * 16;   // a few waves of an H200's 132 SMs; the loops stride over the rest

unsigned blocks_for(int64_t items) {
    const int64_t blocks = (items + kThreads - 1) / kThreads;
    return (unsigned) (blocks < 1 ? 1 : blocks > kMaxBlocks ? kMaxBlocks : blocks);
}

/// grad_scale: the clip's coefficient, or 1 (exact: g x 1 = g).
__device__ inline float update_of(float grad, float grad_scale, float p, float & m, float & v, const LambMomentsKernelArgs & a) {
    const float g = grad * grad_scale;
    m = m + a.one_minus_beta1 * (g - m);                 // lerp, as exp_avg.lerp_(grad, 1 - b1)
    v = v * a.beta2 + a.one_minus_beta2 * g * g;
    return m / (sqrtf(v) + a.eps) + a.weight_decay * p;
}

/// Vector i of 4 elements (the buffers 16-byte aligned): the moments and the update, 16 bytes at a time. Returns the
/// parameters read and the update written.
struct Moments4 {
    float4 param, update;
};
__device__ inline Moments4 moments4(int64_t i, float s, const LambMomentsKernelArgs & a) {
    const float4 g = reinterpret_cast<const float4 *>(a.grad)[i], p = reinterpret_cast<const float4 *>(a.param)[i];
    float4 m = reinterpret_cast<float4 *>(a.exp_avg)[i], v = reinterpret_cast<float4 *>(a.exp_avg_sq)[i], u;
    u.x = update_of(g.x, s, p.x, m.x, v.x, a);
    u.y = update_of(g.y, s, p.y, m.y, v.y, a);
    u.z = update_of(g.z, s, p.z, m.z, v.z, a);
    u.w = update_of(g.w, s, p.w, m.w, v.w, a);
    reinterpret_cast<float4 *>(a.exp_avg)[i] = m;
    reinterpret_cast<float4 *>(a.exp_avg_sq)[i] = v;
    reinterpret_cast<float4 *>(a.update)[i] = u;
    return {p, u};
}

__global__ void __launch_bounds__(kThreads) moments_vector_kernel(const LambMomentsKernelArgs a) {
    const int64_t vectors = a.n / 4, stride = (int64_t) gridDim.x * blockDim.x;
    const float s = a.grad_scale ? *a.grad_scale : 1.0f;
    if (!isfinite(s)) return;   // a non-finite gradient norm: the step is skipped
    for (int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; i < vectors; i += stride) moments4(i, s, a);
    // The last n % 4 elements, one thread each.
    const int64_t j = vectors * 4 + (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (j < a.n) a.update[j] = update_of(a.grad[j], s, a.param[j], a.exp_avg[j], a.exp_avg_sq[j], a);
}

/// One block a chunk (LambMomentsKernelArgs::chunk_bounds): the moments and the update as above, and the chunk's sums
/// of p^2 and update^2 in a fixed order.
__global__ void __launch_bounds__(kThreads) moments_chunk_kernel(const LambMomentsKernelArgs a) {
    const float s = a.grad_scale ? *a.grad_scale : 1.0f;
    if (!isfinite(s)) return;   // a non-finite gradient norm: the step is skipped (and so is the apply)
    const int64_t begin = a.chunk_bounds[blockIdx.x], end = a.chunk_bounds[blockIdx.x + 1];
    const int64_t vector_end = begin + (end - begin) / 4 * 4;
    float param_squares = 0.0f, update_squares = 0.0f;
    for (int64_t i = begin / 4 + threadIdx.x; i < vector_end / 4; i += kThreads) {   // chunks start at multiples of 4
        const auto [p, u] = moments4(i, s, a);
        param_squares += p.x * p.x + p.y * p.y + p.z * p.z + p.w * p.w;
        update_squares += u.x * u.x + u.y * u.y + u.z * u.z + u.w * u.w;
    }
    // The group's last n % 4 elements, one thread each.
    const int64_t j = vector_end + threadIdx.x;
    if (j < end) {
        const float p = a.param[j], u = update_of(a.grad[j], s, p, a.exp_avg[j], a.exp_avg_sq[j], a);
        a.update[j] = u;
        param_squares += p * p;
        update_squares += u * u;
    }
    param_squares = kernels::block_sum<kThreads>(param_squares);
    update_squares = kernels::block_sum<kThreads>(update_squares);
    if (threadIdx.x == 0) {
        a.partial_squares[2 * blockIdx.x] = param_squares;
        a.partial_squares[2 * blockIdx.x + 1] = update_squares;
    }
}

/// One warp a tensor: the lanes sum every 32nd chunk, then join (in a fixed order, so the result is repeatable). A thread
/// a tensor walking its chunks one by one took 33 us a step for the 10M-element embedding's 1,250 chunks.
__global__ void __launch_bounds__(kThreads) trust_kernel(const LambTrustKernelArgs a) {
    const int t = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (t >= a.tensors) return;
    float param_squares = 0.0f, update_squares = 0.0f;
    for (int c = a.first_chunk[t] + lane; c < a.first_chunk[t + 1]; c += 32) {
        param_squares += a.partial_squares[2 * c];
        update_squares += a.partial_squares[2 * c + 1];
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        param_squares += __shfl_xor_sync(0xffffffffu, param_squares, offset);
        update_squares += __shfl_xor_sync(0xffffffffu, update_squares, offset);
    }
    if (lane != 0) return;
    const float weight_norm = fminf(sqrtf(param_squares), 10.0f), update_norm = sqrtf(update_squares);
    const float ratio = weight_norm > 0.0f && update_norm > 0.0f ? weight_norm / (update_norm + a.eps) : 1.0f;
    a.step[t] = ratio * *a.lr * a.lr_scale;
}

__global__ void __launch_bounds__(kThreads) moments_scalar_kernel(const LambMomentsKernelArgs a) {
    const int64_t stride = (int64_t) gridDim.x * blockDim.x;
    const float s = a.grad_scale ? *a.grad_scale : 1.0f;
    if (!isfinite(s)) return;
    for (int64_t j = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; j < a.n; j += stride)
        a.update[j] = update_of(a.grad[j], s, a.param[j], a.exp_avg[j], a.exp_avg_sq[j], a);
}

/// The tensor that owns element i: the last start at or before it.
__device__ inline int tensor_of(int64_t i, const LambApplyKernelArgs & a) {
    int lo = 0, hi = a.tensors - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (a.starts[mid] <= i) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/// Each thread's elements only grow, so it searches again only when one passes the next tensor's start.
struct TensorCursor {
    int tensor = 0;
    int64_t next_start = -1;
    __device__ float step_at(int64_t i, const LambApplyKernelArgs & a) {
        if (i >= next_start) {
            tensor = tensor_of(i, a);
            next_start = tensor + 1 < a.tensors ? a.starts[tensor + 1] : INT64_MAX;
        }
        return a.step[tensor];
    }
};

__global__ void __launch_bounds__(kThreads) apply_vector_kernel(const LambApplyKernelArgs a) {
    if (a.skip_unless_finite && !isfinite(*a.skip_unless_finite)) return;
    const int64_t vectors = a.n / 4, stride = (int64_t) gridDim.x * blockDim.x;
    TensorCursor cursor;
    for (int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; i < vectors; i += stride) {
        float4 p = reinterpret_cast<float4 *>(a.param)[i];
        const float4 u = reinterpret_cast<const float4 *>(a.update)[i];
        const float step = cursor.step_at(4 * i, a);   // starts are multiples of 4: one tensor owns all four
        p.x -= step * u.x;
        p.y -= step * u.y;
        p.z -= step * u.z;
        p.w -= step * u.w;
        reinterpret_cast<float4 *>(a.param)[i] = p;
    }
    const int64_t j = vectors * 4 + (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
    if (j < a.n) a.param[j] -= a.step[tensor_of(j, a)] * a.update[j];
}

__global__ void __launch_bounds__(kThreads) apply_scalar_kernel(const LambApplyKernelArgs a) {
    if (a.skip_unless_finite && !isfinite(*a.skip_unless_finite)) return;
    const int64_t stride = (int64_t) gridDim.x * blockDim.x;
    TensorCursor cursor;
    for (int64_t j = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; j < a.n; j += stride) a.param[j] -= cursor.step_at(j, a) * a.update[j];
}

} // namespace

const char * launch_lamb_moments(const LambMomentsKernelArgs & args, void * stream_handle) {
    if (args.n == 0) return nullptr;
    auto stream = static_cast<cudaStream_t>(stream_handle);
    using kernels::aligned_16;
    const bool all_aligned = aligned_16(args.grad) && aligned_16(args.param) && aligned_16(args.exp_avg) && aligned_16(args.exp_avg_sq)
                             && aligned_16(args.update);
    if (args.chunk_bounds) {
        if (!all_aligned || args.chunks < 1 || args.chunks > INT_MAX || !args.partial_squares) return "LAMB moments: chunks need aligned buffers";
        moments_chunk_kernel<<<(unsigned) args.chunks, kThreads, 0, stream>>>(args);
    } else if (all_aligned)
        moments_vector_kernel<<<blocks_for(args.n / 4 > 0 ? args.n / 4 : 1), kThreads, 0, stream>>>(args);
    else
        moments_scalar_kernel<<<blocks_for(args.n), kThreads, 0, stream>>>(args);
    return kernels::launch_error();
}

const char * launch_lamb_apply(const LambApplyKernelArgs & args, void * stream_handle) {
    if (args.n == 0) return nullptr;
    auto stream = static_cast<cudaStream_t>(stream_handle);
    if (args.tensors < 1) return "LAMB apply: no tensors";
    if (kernels::aligned_16(args.param) && kernels::aligned_16(args.update))
        apply_vector_kernel<<<blocks_for(args.n / 4 > 0 ? args.n / 4 : 1), kThreads, 0, stream>>>(args);
    else
        apply_scalar_kernel<<<blocks_for(args.n), kThreads, 0, stream>>>(args);
    return kernels::launch_error();
}

const char * launch_lamb_trust(const LambTrustKernelArgs & args, void * stream_handle) {
    if (args.tensors == 0) return nullptr;
    trust_kernel<<<(unsigned) ((32 * (int64_t) args.tensors + kThreads - 1) / kThreads), kThreads, 0, static_cast<cudaStream_t>(stream_handle)>>>(args);
    return kernels::launch_error();
}

} // namespace studio
