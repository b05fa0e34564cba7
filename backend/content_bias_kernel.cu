// The content columns' attention bias and its gradients (content_bias_kernel.h). Forward and the position gradient
// take a thread per 8 keys of a query row (h, b, i): the shift is an offset into the row, so neighbouring threads
// read neighbouring elements, and each writes its 8 in one store. The key-bias gradient sums each key's column over
// the queries.
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

/// Eight results from element `at` on: one 16-byte store (bf16) or two (fp32) where the row length keeps them aligned.
template <typename T> __device__ inline void store8(void * base, int64_t at, const float (&values)[8], int count, bool aligned);
template <> __device__ inline void store8<bf16>(void * base, int64_t at, const float (&values)[8], int count, bool aligned) {
    bf16 * out = static_cast<bf16 *>(base) + at;
    if (aligned && count == 8) {
        uint4 packed;
        bf16 * lanes = reinterpret_cast<bf16 *>(&packed);
#pragma unroll
        for (int e = 0; e < 8; ++e) lanes[e] = __float2bfloat16(values[e]);
        *reinterpret_cast<uint4 *>(out) = packed;
        return;
    }
    for (int e = 0; e < count; ++e) out[e] = __float2bfloat16(values[e]);
}
template <> __device__ inline void store8<float>(void * base, int64_t at, const float (&values)[8], int count, bool aligned) {
    float * out = static_cast<float *>(base) + at;
    if (aligned && count == 8) {
        reinterpret_cast<float4 *>(out)[0] = make_float4(values[0], values[1], values[2], values[3]);
        reinterpret_cast<float4 *>(out)[1] = make_float4(values[4], values[5], values[6], values[7]);
        return;
    }
    for (int e = 0; e < count; ++e) out[e] = values[e];
}

/// Thread t of the grid takes keys 8c .. 8c+7 of one query row (h, b, i); rows of S keys hold ceil(S/8) such chunks.
struct Chunk {
    int64_t row, i, b, h, first;
    int count;
};
__device__ inline bool chunk_of(const ContentBiasKernelArgs & args, Chunk & chunk) {
    const int64_t per_row = (args.key_len + 7) / 8;
    const int64_t idx = int64_t(blockIdx.x) * kThreads + threadIdx.x;
    if (idx >= args.heads * args.batch * args.tgt_len * per_row) return false;
    chunk.row = idx / per_row;
    chunk.first = idx % per_row * 8;
    chunk.count = int(min(int64_t(8), args.key_len - chunk.first));
    chunk.i = chunk.row % args.tgt_len;
    chunk.b = chunk.row / args.tgt_len % args.batch;
    chunk.h = chunk.row / args.tgt_len / args.batch;
    return true;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) forward_kernel(const ContentBiasKernelArgs args) {
    Chunk c;
    if (!chunk_of(args, c)) return;
    const int64_t T_ = args.tgt_len, S = args.key_len;
    const int64_t position = c.h * args.position_stride[0] + c.b * args.position_stride[1] + c.i * args.position_stride[2] + (T_ - 1 - c.i);
    const int64_t key_bias = c.h * args.key_bias_stride[0] + c.b * args.key_bias_stride[1];
    const bool * keep = args.keep + c.i * args.keep_stride;
    float values[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        // A kept key's shifted column j + T-1-i lies in 0 .. S-1 (j <= i + S - T); the rest are never read.
        const int64_t j = c.first + e;
        values[e] = e < c.count && keep[j] ? (load<T>(args.position, position + j) + load<T>(args.key_bias, key_bias + j)) * args.scale
                                          : -INFINITY;
    }
    store8<T>(args.bias, c.row * S + c.first, values, c.count, S % 8 == 0);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) position_grad_kernel(const ContentBiasKernelArgs args) {
    Chunk c;
    if (!chunk_of(args, c)) return;
    const int64_t T_ = args.tgt_len, S = args.key_len;
    const int64_t grad = c.h * args.grad_bias_stride[0] + c.b * args.grad_bias_stride[1] + c.i * args.grad_bias_stride[2];
    const bool * keep = args.keep + c.i * args.keep_stride;
    float values[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        const int64_t j = c.first + e - (T_ - 1 - c.i);   // the key whose shifted score column c.first + e is
        values[e] = e < c.count && j >= 0 && j < S && keep[j] ? load<T>(args.grad_bias, grad + j) * args.scale : 0.0f;
    }
    store8<T>(args.grad_position, c.row * S + c.first, values, c.count, S % 8 == 0);
}

/// A block sums 32 keys' columns over the queries, its 8 rows of threads taking every 8th query, then adds the rows.
constexpr int kColumnKeys = 32, kColumnGroups = kThreads / kColumnKeys;

template <typename T>
__global__ void __launch_bounds__(kThreads) key_bias_grad_kernel(const ContentBiasKernelArgs args) {
    __shared__ float partial[kColumnGroups][kColumnKeys];
    const int64_t hb = blockIdx.y, b = hb % args.batch, h = hb / args.batch;
    const int key = threadIdx.x % kColumnKeys, group = threadIdx.x / kColumnKeys;
    const int64_t j = int64_t(blockIdx.x) * kColumnKeys + key;
    float sum = 0.0f;
    if (j < args.key_len) {
        const int64_t grad = h * args.grad_bias_stride[0] + b * args.grad_bias_stride[1] + j;
        for (int64_t i = group; i < args.tgt_len; i += kColumnGroups)
            if (args.keep[i * args.keep_stride + j]) sum += load<T>(args.grad_bias, grad + i * args.grad_bias_stride[2]);
    }
    partial[group][key] = sum;
    __syncthreads();
    if (group != 0 || j >= args.key_len) return;
    for (int g = 1; g < kColumnGroups; ++g) sum += partial[g][key];
    store<T>(args.grad_key_bias, hb * args.key_len + j, sum * args.scale);
}

const char * status() {
    const cudaError_t error = cudaGetLastError();
    return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

} // namespace

namespace {
/// Blocks of the element-wise kernels: one thread per 8 keys of a query row.
unsigned chunk_blocks(const ContentBiasKernelArgs & args) {
    const int64_t chunks = args.heads * args.batch * args.tgt_len * ((args.key_len + 7) / 8);
    return unsigned((chunks + kThreads - 1) / kThreads);
}
} // namespace

const char * launch_content_bias_forward(const ContentBiasKernelArgs & args, void * stream_handle) {
    if (args.heads * args.batch * args.tgt_len == 0 || args.key_len == 0) return nullptr;
    auto stream = static_cast<cudaStream_t>(stream_handle);
    if (args.bf16) forward_kernel<bf16><<<chunk_blocks(args), kThreads, 0, stream>>>(args);
    else forward_kernel<float><<<chunk_blocks(args), kThreads, 0, stream>>>(args);
    return status();
}

const char * launch_content_bias_backward(const ContentBiasKernelArgs & args, void * stream_handle) {
    if (args.heads * args.batch * args.tgt_len == 0 || args.key_len == 0) return nullptr;
    auto stream = static_cast<cudaStream_t>(stream_handle);
    const dim3 columns(unsigned((args.key_len + kColumnKeys - 1) / kColumnKeys), unsigned(args.heads * args.batch));
    if (args.bf16) {
        position_grad_kernel<bf16><<<chunk_blocks(args), kThreads, 0, stream>>>(args);
        key_bias_grad_kernel<bf16><<<columns, kThreads, 0, stream>>>(args);
    } else {
        position_grad_kernel<float><<<chunk_blocks(args), kThreads, 0, stream>>>(args);
        key_bias_grad_kernel<float><<<columns, kThreads, 0, stream>>>(args);
    }
    return status();
}

} // namespace studio
