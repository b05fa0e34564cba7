// The content columns' attention bias and its gradients (content_bias_kernel.h). Forward and the position gradient
// take a thread per 8 keys of a query row (h, b, i): the shift is an offset into the row, so neighbouring threads
// read neighbouring elements, and each writes its 8 in one store. The key-bias gradient sums each key's column over
// the queries.
#include "content_bias_kernel.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernel_common.cuh"

namespace studio {

namespace {

using namespace kernels;
constexpr int kThreads = 128;

template <typename T> __device__ inline float load(const void * base, int64_t at) { return to_float(static_cast<const T *>(base)[at]); }

/// Eight results from element `at` on: 16-byte stores where the row length keeps them aligned, else one by one.
template <typename T> __device__ inline void store_chunk(void * base, int64_t at, const float (&values)[8], int count, bool aligned) {
    T * out = static_cast<T *>(base) + at;
    if (aligned && count == 8) {
        store8(out, values);
        return;
    }
    for (int e = 0; e < count; ++e) store(out + e, values[e]);
}

/// Thread t of the grid takes columns 8c .. 8c+7 of one query row (h, b, i); rows of `columns` (the bias's S keys, or
/// the position gradient's P columns) hold ceil(columns/8) such chunks.
struct Chunk {
    int64_t row, i, b, h, first;
    int count;
};
__device__ inline bool chunk_of(const ContentBiasKernelArgs & args, int64_t columns, Chunk & chunk) {
    const int64_t per_row = (columns + 7) / 8;
    const int64_t idx = int64_t(blockIdx.x) * kThreads + threadIdx.x;
    if (idx >= args.heads * args.batch * args.tgt_len * per_row) return false;
    chunk.row = idx / per_row;
    chunk.first = idx % per_row * 8;
    chunk.count = int(min(int64_t(8), columns - chunk.first));
    chunk.i = chunk.row % args.tgt_len;
    chunk.b = chunk.row / args.tgt_len % args.batch;
    chunk.h = chunk.row / args.tgt_len / args.batch;
    return true;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) forward_kernel(const ContentBiasKernelArgs args) {
    Chunk c;
    if (!chunk_of(args, args.key_len, c)) return;
    const int64_t T_ = args.tgt_len, S = args.key_len;
    // Key j reads shifted column j + T-1-i of the S the shift spans, held at j + shift of the P given.
    const int64_t shift = (T_ - 1 - c.i) - (S - args.position_len);
    const int64_t position = c.h * args.position_stride[0] + c.b * args.position_stride[1] + c.i * args.position_stride[2] + shift;
    const int64_t key_bias = c.h * args.key_bias_stride[0] + c.b * args.key_bias_stride[1];
    const bool * keep = args.keep + c.i * args.keep_stride;
    float values[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        // A kept key's shifted column j + T-1-i lies in 0 .. S-1 (j <= i + S - T); the rest are never read. A kept key
        // whose column was left out (the caller's contract broken) reads NaN, so that the error shows.
        const int64_t j = c.first + e;
        values[e] = -INFINITY;
        if (e < c.count && keep[j]) {
            const float position_term = j + shift >= 0 ? load<T>(args.position, position + j) : NAN;
            values[e] = (position_term + (args.key_bias ? load<T>(args.key_bias, key_bias + j) : 0.0f)) * args.scale;
        }
    }
    store_chunk<T>(args.bias, c.row * S + c.first, values, c.count, S % 8 == 0);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) position_grad_kernel(const ContentBiasKernelArgs args) {
    Chunk c;
    const int64_t P = args.position_len;
    if (!chunk_of(args, P, c)) return;
    const int64_t T_ = args.tgt_len, S = args.key_len;
    const int64_t grad = c.h * args.grad_bias_stride[0] + c.b * args.grad_bias_stride[1] + c.i * args.grad_bias_stride[2];
    const bool * keep = args.keep + c.i * args.keep_stride;
    float values[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        const int64_t j = c.first + e + (S - P) - (T_ - 1 - c.i);   // the key whose shifted score column c.first + e is
        values[e] = e < c.count && j >= 0 && j < S && keep[j] ? load<T>(args.grad_bias, grad + j) * args.scale : 0.0f;
    }
    store_chunk<T>(args.grad_position, c.row * P + c.first, values, c.count, P % 8 == 0);
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
    store(static_cast<T *>(args.grad_key_bias) + hb * args.key_len + j, sum * args.scale);
}

} // namespace

namespace {
/// Blocks of the element-wise kernels: one thread per 8 columns of a query row.
unsigned chunk_blocks(const ContentBiasKernelArgs & args, int64_t columns) {
    const int64_t chunks = args.heads * args.batch * args.tgt_len * ((columns + 7) / 8);
    return unsigned((chunks + kThreads - 1) / kThreads);
}
} // namespace

const char * launch_content_bias_forward(const ContentBiasKernelArgs & args, void * stream_handle) {
    if (args.heads * args.batch * args.tgt_len == 0 || args.key_len == 0) return nullptr;
    auto stream = static_cast<cudaStream_t>(stream_handle);
    if (args.bf16) forward_kernel<bf16><<<chunk_blocks(args, args.key_len), kThreads, 0, stream>>>(args);
    else forward_kernel<float><<<chunk_blocks(args, args.key_len), kThreads, 0, stream>>>(args);
    return launch_error();
}

const char * launch_content_bias_backward(const ContentBiasKernelArgs & args, void * stream_handle) {
    if (args.heads * args.batch * args.tgt_len == 0 || args.key_len == 0) return nullptr;
    auto stream = static_cast<cudaStream_t>(stream_handle);
    const dim3 columns(unsigned((args.key_len + kColumnKeys - 1) / kColumnKeys), unsigned(args.heads * args.batch));
    if (args.bf16) {
        position_grad_kernel<bf16><<<chunk_blocks(args, args.position_len), kThreads, 0, stream>>>(args);
        if (args.grad_key_bias) key_bias_grad_kernel<bf16><<<columns, kThreads, 0, stream>>>(args);
    } else {
        position_grad_kernel<float><<<chunk_blocks(args, args.position_len), kThreads, 0, stream>>>(args);
        if (args.grad_key_bias) key_bias_grad_kernel<float><<<columns, kThreads, 0, stream>>>(args);
    }
    return launch_error();
}

} // namespace studio
