// One block of 256 threads per row, both directions. Forward: each thread folds its columns into a running (max, sum)
// in fp32, 16 bytes at a time (8 bf16 or 4 fp32) where every row starts 16-byte aligned, else one by one; the warps'
// pairs are joined by shuffles, the block's eight through shared memory, and thread 0 writes the row's log-sum-exp and
// the target's log-probability. Backward: each column's gradient from the row's log-sum-exp in one pass, written in
// the logits' dtype. Both kernels are bound by memory: two 16-byte loads in flight per thread per loop turn.
#include "log_softmax_at_kernel.h"

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernel_common.cuh"

namespace studio {

namespace {

using namespace kernels;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxRows = 2147483647;   // gridDim.x: one block per row

/// One column folded in. -inf columns (padding) leave the pair as it is, so a thread that has seen only those still
/// holds the empty pair (exp(-inf - -inf) would be NaN).
__device__ inline void fold(float & m, float & s, float z) {
    if (z > m) {
        s = s * __expf(m - z) + 1.0f;
        m = z;
    } else if (z != -INFINITY) {
        s += __expf(z - m);
    }
}

/// N columns folded in: one rescale of the running sum for all of them.
template <int N>
__device__ inline void fold(float & m, float & s, const float (&z)[N]) {
    float top = m;
#pragma unroll
    for (int i = 0; i < N; ++i) top = fmaxf(top, z[i]);
    if (top == -INFINITY) return;
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < N; ++i) sum += __expf(z[i] - top);
    s = s * __expf(m - top) + sum;
    m = top;
}

/// The block's pairs joined; the result is thread 0's.
__device__ inline void join_block(float & m, float & s) {
    __shared__ float warp_max[kWarps], warp_sum[kWarps];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int offset = 16; offset > 0; offset /= 2) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, offset), s2 = __shfl_xor_sync(0xffffffffu, s, offset);
        join(m, s, m2, s2);
    }
    if (lane == 0) {
        warp_max[warp] = m;
        warp_sum[warp] = s;
    }
    __syncthreads();
    if (warp != 0) return;
    m = lane < kWarps ? warp_max[lane] : -INFINITY;
    s = lane < kWarps ? warp_sum[lane] : 0.0f;
    for (int offset = kWarps / 2; offset > 0; offset /= 2) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, offset), s2 = __shfl_xor_sync(0xffffffffu, s, offset);
        join(m, s, m2, s2);
    }
}

/// Calls visit(first column, values) for each whole 16-byte vector of the row (16-byte aligned), two loads in flight
/// per thread; returns the first column left to read one by one.
template <typename T, typename Visit>
__device__ inline int64_t for_each_vector(const T * row, int64_t cols, Visit visit) {
    constexpr int W = Vec<T>::kSize;
    const int64_t vectors = cols / W;
    int64_t v = threadIdx.x;
    for (; v + kThreads < vectors; v += 2 * kThreads) {
        float a[W], b[W];
        Vec<T>::load(row + v * W, a);
        Vec<T>::load(row + (v + kThreads) * W, b);
        visit(v * W, a);
        visit((v + kThreads) * W, b);
    }
    if (v < vectors) {
        float a[W];
        Vec<T>::load(row + v * W, a);
        visit(v * W, a);
    }
    return vectors * W;
}

/// kVector: the row starts 16-byte aligned; its first cols / Vec<T>::kSize vectors are read whole, the rest one by one.
template <typename T, bool kVector>
__global__ void __launch_bounds__(kThreads) forward_kernel(const LogSoftmaxAtKernelArgs args) {
    const int64_t r = blockIdx.x;
    const T * row = static_cast<const T *>(args.logits) + r * args.logits_stride;
    float m = -INFINITY, s = 0.0f;
    int64_t scalar_from = 0;
    if constexpr (kVector) scalar_from = for_each_vector(row, args.cols, [&](int64_t, const float (&z)[Vec<T>::kSize]) { fold(m, s, z); });
    for (int64_t j = scalar_from + threadIdx.x; j < args.cols; j += kThreads) fold(m, s, to_float(row[j]));
    join_block(m, s);
    if (threadIdx.x != 0) return;
    const float lse = m + logf(s);
    const int64_t t = args.target[r];
    args.lse[r] = lse;
    args.out[r] = t >= 0 && t < args.cols ? to_float(row[t]) - lse : NAN;
}

/// kVector: both the logits' and the gradient's rows start 16-byte aligned.
template <typename T, bool kVector>
__global__ void __launch_bounds__(kThreads) backward_kernel(const LogSoftmaxAtKernelArgs args) {
    const int64_t r = blockIdx.x;
    const T * row = static_cast<const T *>(args.logits) + r * args.logits_stride;
    T * grad = static_cast<T *>(args.grad_logits) + r * args.grad_stride;
    const float lse = args.lse[r], g = args.grad_out[r];
    const int64_t t = args.target[r];
    // d out / d x[j] = [j == t] - softmax(x)[j]; a -inf column has probability exp(-inf) = 0.
    auto gradient = [&](float x, int64_t j) { return g * ((j == t ? 1.0f : 0.0f) - __expf(x - lse)); };
    int64_t scalar_from = 0;
    if constexpr (kVector) {
        scalar_from = for_each_vector(row, args.cols, [&](int64_t first, const float (&z)[Vec<T>::kSize]) {
            float out[Vec<T>::kSize];
#pragma unroll
            for (int i = 0; i < Vec<T>::kSize; ++i) out[i] = gradient(z[i], first + i);
            Vec<T>::store(grad + first, out);
        });
    }
    for (int64_t j = scalar_from + threadIdx.x; j < args.cols; j += kThreads) store(grad + j, gradient(to_float(row[j]), j));
}

const char * checked(const LogSoftmaxAtKernelArgs & args) {
    if (args.cols < 1) return "log_softmax_at kernel: cols must be positive";
    if (args.rows > kMaxRows) return "log_softmax_at kernel: more rows than one grid holds (2^31 - 1)";
    return nullptr;
}

template <typename T>
void forward(const LogSoftmaxAtKernelArgs & args, cudaStream_t stream) {
    const unsigned grid = unsigned(args.rows);
    if (aligned_16(args.logits, {args.logits_stride * int64_t(sizeof(T))})) forward_kernel<T, true><<<grid, kThreads, 0, stream>>>(args);
    else forward_kernel<T, false><<<grid, kThreads, 0, stream>>>(args);
}

template <typename T>
void backward(const LogSoftmaxAtKernelArgs & args, cudaStream_t stream) {
    const unsigned grid = unsigned(args.rows);
    if (aligned_16(args.logits, {args.logits_stride * int64_t(sizeof(T))}) && aligned_16(args.grad_logits, {args.grad_stride * int64_t(sizeof(T))}))
        backward_kernel<T, true><<<grid, kThreads, 0, stream>>>(args);
    else
        backward_kernel<T, false><<<grid, kThreads, 0, stream>>>(args);
}

} // namespace

const char * launch_log_softmax_at_forward(const LogSoftmaxAtKernelArgs & args, void * stream_handle) {
    if (args.rows == 0) return nullptr;
    if (const char * error = checked(args)) return error;
    auto stream = static_cast<cudaStream_t>(stream_handle);
    if (args.logits_bf16) forward<bf16>(args, stream);
    else forward<float>(args, stream);
    return launch_error();
}

const char * launch_log_softmax_at_backward(const LogSoftmaxAtKernelArgs & args, void * stream_handle) {
    if (args.rows == 0) return nullptr;
    if (const char * error = checked(args)) return error;
    auto stream = static_cast<cudaStream_t>(stream_handle);
    if (args.logits_bf16) backward<bf16>(args, stream);
    else backward<float>(args, stream);
    return launch_error();
}

} // namespace studio
