// The content columns' attention bias and its gradients (content_bias_kernel.h). Forward and the position gradient
// take one block per query row (h, b, i), a thread per key: the shift is an offset into the row, so reads and writes
// stay coalesced. The key-bias gradient sums each key's column over the queries, a thread per key.
#include "content_bias_kernel.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace studio {

namespace {

using bf16 = __nv_bfloat16;
constexpr int kThreads = 128;

template <typename T> __device__ inline float load(const void * base, int64_t at) { return float(static_cast<const T *>(base)[at]); }
template <> __device__ inline float load<bf16>(const void * base, int64_t at) { return __bfloat162float(static_cast<const bf16 *>(base)[at]); }
template <typename T> __device__ inline void store(void * base, int64_t at, float value) { static_cast<T *>(base)[at] = T(value); }
template <> __device__ inline void store<bf16>(void * base, int64_t at, float value) { static_cast<bf16 *>(base)[at] = __float2bfloat16(value); }

template <typename T>
__global__ void __launch_bounds__(kThreads) forward_kernel(const ContentBiasKernelArgs args) {
    const int64_t T_ = args.tgt_len, S = args.key_len;
    const int64_t row = blockIdx.x, i = row % T_, b = row / T_ % args.batch, h = row / T_ / args.batch;
    const int64_t position = h * args.position_stride[0] + b * args.position_stride[1] + i * args.position_stride[2] + (T_ - 1 - i);
    const int64_t key_bias = h * args.key_bias_stride[0] + b * args.key_bias_stride[1];
    const bool * keep = args.keep + i * args.keep_stride;
    for (int64_t j = threadIdx.x; j < S; j += kThreads) {
        // A kept key's shifted column j + T-1-i lies in 0 .. S-1 (j <= i + S - T); the rest are never read.
        const float value = keep[j] ? (load<T>(args.position, position + j) + load<T>(args.key_bias, key_bias + j)) * args.scale : -INFINITY;
        store<T>(args.bias, row * S + j, value);
    }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) position_grad_kernel(const ContentBiasKernelArgs args) {
    const int64_t T_ = args.tgt_len, S = args.key_len;
    const int64_t row = blockIdx.x, i = row % T_, b = row / T_ % args.batch, h = row / T_ / args.batch;
    const int64_t grad = h * args.grad_bias_stride[0] + b * args.grad_bias_stride[1] + i * args.grad_bias_stride[2];
    const bool * keep = args.keep + i * args.keep_stride;
    for (int64_t c = threadIdx.x; c < S; c += kThreads) {
        const int64_t j = c - (T_ - 1 - i);   // the key whose shifted score column c is
        const bool from_key = j >= 0 && j < S && keep[j];
        store<T>(args.grad_position, row * S + c, from_key ? load<T>(args.grad_bias, grad + j) * args.scale : 0.0f);
    }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) key_bias_grad_kernel(const ContentBiasKernelArgs args) {
    const int64_t hb = blockIdx.y, b = hb % args.batch, h = hb / args.batch;
    const int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x;
    if (j >= args.key_len) return;
    const int64_t grad = h * args.grad_bias_stride[0] + b * args.grad_bias_stride[1] + j;
    float sum = 0.0f;
    for (int64_t i = 0; i < args.tgt_len; ++i)
        if (args.keep[i * args.keep_stride + j]) sum += load<T>(args.grad_bias, grad + i * args.grad_bias_stride[2]);
    store<T>(args.grad_key_bias, hb * args.key_len + j, sum * args.scale);
}

const char * status() {
    const cudaError_t error = cudaGetLastError();
    return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

} // namespace

const char * launch_content_bias_forward(const ContentBiasKernelArgs & args, void * stream_handle) {
    const int64_t rows = args.heads * args.batch * args.tgt_len;
    if (rows == 0 || args.key_len == 0) return nullptr;
    auto stream = static_cast<cudaStream_t>(stream_handle);
    if (args.bf16) forward_kernel<bf16><<<unsigned(rows), kThreads, 0, stream>>>(args);
    else forward_kernel<float><<<unsigned(rows), kThreads, 0, stream>>>(args);
    return status();
}

const char * launch_content_bias_backward(const ContentBiasKernelArgs & args, void * stream_handle) {
    const int64_t rows = args.heads * args.batch * args.tgt_len;
    if (rows == 0 || args.key_len == 0) return nullptr;
    auto stream = static_cast<cudaStream_t>(stream_handle);
    const dim3 columns(unsigned((args.key_len + kThreads - 1) / kThreads), unsigned(args.heads * args.batch));
    if (args.bf16) {
        position_grad_kernel<bf16><<<unsigned(rows), kThreads, 0, stream>>>(args);
        key_bias_grad_kernel<bf16><<<columns, kThreads, 0, stream>>>(args);
    } else {
        position_grad_kernel<float><<<unsigned(rows), kThreads, 0, stream>>>(args);
        key_bias_grad_kernel<float><<<columns, kThreads, 0, stream>>>(args);
    }
    return status();
}

} // namespace studio
