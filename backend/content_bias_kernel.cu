// The content columns' attention bias and its gradients (content_bias_kernel.h). Forward and the position gradient
// take a thread per 8 keys of a query row (h, b, i): the shift is an offset into the row, so neighbouring threads
// read neighbouring elements (the forward from the position rows staged in shared memory), and each writes its 8 in
// one store. The key-bias gradient sums each key's column over the queries.
#include "content_bias_kernel.h"

#include <algorithm>
#include <cstdint>

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

/// A block's query rows: `rows` consecutive rows (h, b, i) of the H*B*T from blockIdx.x * rows on. Each thread
/// places its rows from the block's first by 32-bit steps, not by 64-bit divisions of its own.
struct RowBlock {
    int64_t first_row;
    int rows, first_i, first_hb;
    __device__ RowBlock(const ContentBiasKernelArgs & args, int rows_per_block) {
        first_row = int64_t(blockIdx.x) * rows_per_block;
        rows = int(min(int64_t(rows_per_block), args.heads * args.batch * args.tgt_len - first_row));
        first_hb = int(first_row / args.tgt_len);
        first_i = int(first_row - int64_t(first_hb) * args.tgt_len);
    }
    /// Row r of the block as (i, h * B + b).
    __device__ void place(int r, int T, int & i, int & hb) const {
        i = first_i + r;
        hb = first_hb;
        while (i >= T) i -= T, ++hb;
    }
};

/// The 8 keep flags of keys first .. first+7 of a row (count of them in the row): one 8-byte load where aligned.
__device__ inline void load_keep(const bool * keep, int count, bool aligned, bool (&out)[8]) {
    if (aligned && count == 8) {
        const uint2 raw = *reinterpret_cast<const uint2 *>(keep);
        const unsigned char * bytes = reinterpret_cast<const unsigned char *>(&raw);
#pragma unroll
        for (int e = 0; e < 8; ++e) out[e] = bytes[e] != 0;
        return;
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) out[e] = e < count && keep[e];
}

/// Forward: a block takes `rows` consecutive query rows. It first copies their position rows into shared memory,
/// whole and 16 bytes at a time where the rows are aligned; then a thread per 8 keys of a row reads their shifted
/// columns from there and writes its 8 in one store. kKeyBias: key_bias is given.
template <typename T, bool kKeyBias>
__global__ void __launch_bounds__(kThreads) forward_kernel(const ContentBiasKernelArgs args, int rows_per_block, bool aligned_rows,
                                                           bool aligned_keep) {
    extern __shared__ __align__(16) unsigned char staged_bytes[];
    T * staged = reinterpret_cast<T *>(staged_bytes);                        // (rows, P)
    const RowBlock block(args, rows_per_block);
    const int T_ = int(args.tgt_len), B = int(args.batch), S = int(args.key_len), P = int(args.position_len);
    auto position_row = [&](int i, int hb) {
        return static_cast<const T *>(args.position) + int64_t(hb / B) * args.position_stride[0] + int64_t(hb % B) * args.position_stride[1]
               + int64_t(i) * args.position_stride[2];
    };
    constexpr int kVector = 16 / sizeof(T);
    const int units = aligned_rows ? P / kVector : P;   // 16-byte vectors, or elements
    for (int idx = threadIdx.x; idx < block.rows * units; idx += kThreads) {
        const int r = idx / units, u = idx - r * units;
        int i, hb;
        block.place(r, T_, i, hb);
        if (aligned_rows)
            *reinterpret_cast<uint4 *>(staged + r * P + u * kVector) = *reinterpret_cast<const uint4 *>(position_row(i, hb) + u * kVector);
        else
            staged[r * P + u] = position_row(i, hb)[u];
    }
    __syncthreads();

    const int chunks = (S + 7) / 8;
    for (int idx = threadIdx.x; idx < block.rows * chunks; idx += kThreads) {
        const int r = idx / chunks, first = (idx - r * chunks) * 8, count = min(8, S - first);
        int i, hb;
        block.place(r, T_, i, hb);
        // Key j reads shifted column j + T-1-i of the S the shift spans, held at j + shift of the P given.
        const int shift = (T_ - 1 - i) - (S - P);
        const T * position = staged + r * P;
        bool keep[8];
        load_keep(args.keep + int64_t(i) * args.keep_stride + first, count, aligned_keep, keep);
        float values[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            // A kept key's shifted column j + T-1-i lies in 0 .. S-1 (j <= i + S - T); the rest are never read. A kept
            // key whose column was left out (the caller's contract broken) reads NaN, so that the error shows.
            const int j = first + e, column = j + shift;
            values[e] = -INFINITY;
            if (keep[e]) {
                float value = column >= 0 && column < P ? to_float(position[column]) : NAN;
                if constexpr (kKeyBias)
                    value += load<T>(args.key_bias, int64_t(hb / B) * args.key_bias_stride[0] + int64_t(hb % B) * args.key_bias_stride[1] + j);
                values[e] = value * args.scale;
            }
        }
        store_chunk<T>(args.bias, (block.first_row + r) * S + first, values, count, S % 8 == 0);
    }
}

/// The position gradient: a block takes `rows` consecutive query rows, a thread 8 columns of one: the gradient of the
/// bias at the key each column shifts to, where that key is kept.
template <typename T>
__global__ void __launch_bounds__(kThreads) position_grad_kernel(const ContentBiasKernelArgs args, int rows_per_block) {
    const RowBlock block(args, rows_per_block);
    const int T_ = int(args.tgt_len), B = int(args.batch), S = int(args.key_len), P = int(args.position_len);
    const int chunks = (P + 7) / 8;
    for (int idx = threadIdx.x; idx < block.rows * chunks; idx += kThreads) {
        const int r = idx / chunks, first = (idx - r * chunks) * 8, count = min(8, P - first);
        int i, hb;
        block.place(r, T_, i, hb);
        const T * grad = static_cast<const T *>(args.grad_bias) + int64_t(hb / B) * args.grad_bias_stride[0]
                         + int64_t(hb % B) * args.grad_bias_stride[1] + int64_t(i) * args.grad_bias_stride[2];
        const bool * keep = args.keep + int64_t(i) * args.keep_stride;
        const int first_key = first + (S - P) - (T_ - 1 - i);   // the key whose shifted score column `first` is
        float values[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const int j = first_key + e;
            values[e] = e < count && j >= 0 && j < S && keep[j] ? to_float(grad[j]) * args.scale : 0.0f;
        }
        store_chunk<T>(args.grad_position, (block.first_row + r) * P + first, values, count, P % 8 == 0);
    }
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
constexpr size_t kStagedBytes = 16384, kMaxStagedBytes = 49152;   // the forward's position rows a block: aimed at, at most
constexpr int kMaxRowsPerBlock = 64;

/// Rows a block: about 16 threads' chunks each for columns per row, at most kMaxRowsPerBlock.
int rows_per_block(int64_t columns) {
    const int64_t chunks = (columns + 7) / 8;
    return int(std::max<int64_t>(1, std::min<int64_t>(kMaxRowsPerBlock, 16 * kThreads / std::max<int64_t>(1, chunks))));
}

unsigned blocks_for(const ContentBiasKernelArgs & args, int rows) {
    return unsigned((args.heads * args.batch * args.tgt_len + rows - 1) / rows);
}
} // namespace

bool content_bias_kernel_supports(int64_t position_len, int64_t key_len, bool bf16) {
    return position_len >= 1 && position_len <= key_len && key_len <= (int64_t(1) << 24) && size_t(position_len) * (bf16 ? 2 : 4) <= kMaxStagedBytes;
}

const char * launch_content_bias_forward(const ContentBiasKernelArgs & args, void * stream_handle) {
    if (args.heads * args.batch * args.tgt_len == 0 || args.key_len == 0) return nullptr;
    if (!content_bias_kernel_supports(args.position_len, args.key_len, args.bf16))
        return "content bias kernel: shapes past what it takes (content_bias_kernel_supports)";
    auto stream = static_cast<cudaStream_t>(stream_handle);
    const size_t element = args.bf16 ? 2 : 4, row_bytes = size_t(args.position_len) * element;
    const int rows = int(std::min<size_t>(rows_per_block(args.key_len), std::max<size_t>(1, kStagedBytes / std::max<size_t>(1, row_bytes))));
    const size_t staged = size_t(rows) * row_bytes;
    const bool aligned_rows = aligned_16(args.position, {int64_t(row_bytes), args.position_stride[0] * int64_t(element),
                                                         args.position_stride[1] * int64_t(element), args.position_stride[2] * int64_t(element)});
    const bool aligned_keep = reinterpret_cast<uintptr_t>(args.keep) % 8 == 0 && args.keep_stride % 8 == 0;
    const unsigned blocks = blocks_for(args, rows);
    if (args.bf16) {
        if (args.key_bias) forward_kernel<bf16, true><<<blocks, kThreads, staged, stream>>>(args, rows, aligned_rows, aligned_keep);
        else forward_kernel<bf16, false><<<blocks, kThreads, staged, stream>>>(args, rows, aligned_rows, aligned_keep);
    } else {
        if (args.key_bias) forward_kernel<float, true><<<blocks, kThreads, staged, stream>>>(args, rows, aligned_rows, aligned_keep);
        else forward_kernel<float, false><<<blocks, kThreads, staged, stream>>>(args, rows, aligned_rows, aligned_keep);
    }
    return launch_error();
}

const char * launch_content_bias_backward(const ContentBiasKernelArgs & args, void * stream_handle) {
    if (args.heads * args.batch * args.tgt_len == 0 || args.key_len == 0) return nullptr;
    if (!content_bias_kernel_supports(args.position_len, args.key_len, args.bf16))
        return "content bias kernel: shapes past what it takes (content_bias_kernel_supports)";
    auto stream = static_cast<cudaStream_t>(stream_handle);
    const dim3 columns(unsigned((args.key_len + kColumnKeys - 1) / kColumnKeys), unsigned(args.heads * args.batch));
    const int rows = rows_per_block(args.position_len);
    if (args.bf16) {
        position_grad_kernel<bf16><<<blocks_for(args, rows), kThreads, 0, stream>>>(args, rows);
        if (args.grad_key_bias) key_bias_grad_kernel<bf16><<<columns, kThreads, 0, stream>>>(args);
    } else {
        position_grad_kernel<float><<<blocks_for(args, rows), kThreads, 0, stream>>>(args, rows);
        if (args.grad_key_bias) key_bias_grad_kernel<float><<<columns, kThreads, 0, stream>>>(args);
    }
    return launch_error();
}

} // namespace studio
