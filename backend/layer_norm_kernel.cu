// One warp a row: 16-byte loads, the row held in registers, mean and variance in fp32 by warp shuffles (two
// passes over the registers, as LibTorch's layer norm: mean first, then the squared deviations). The backward keeps
// the same shape: a warp a row for the input's gradient, each warp summing the gain's and bias's gradients over its
// rows in registers, the block's warps joined in shared memory into one partial row per block (a fixed order, so the
// sums are the same every run).
#include "layer_norm_kernel.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "kernel_common.cuh"

namespace studio {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kRowsPerBlock = 8;                 // one warp each
constexpr int kMaxChunks = 8;                    // chunks of 8 values a lane holds at most: rows up to 2048

using kernels::load8;
using kernels::store8;

/// Row s of batch b of the keys' input: the memory's row s, or for s >= M the segment's row s - M.
template <typename Input>
__device__ inline const Input * keys_input_row(const SegmentNormKernelArgs & a, int64_t b, int64_t s) {
    return s < a.mem_len ? static_cast<const Input *>(a.memory) + b * a.memory_stride[0] + s * a.memory_stride[1]
                         : static_cast<const Input *>(a.segment) + b * a.segment_stride[0] + (s - a.mem_len) * a.segment_stride[1];
}

/// CHUNKS: chunks of 8 values each lane holds (rows up to 256 x CHUNKS), so registers fit the row.
template <typename Input, typename Param, int CHUNKS>
__global__ void __launch_bounds__(32 * kRowsPerBlock) segment_norm_kernel(const SegmentNormKernelArgs args) {
    const int64_t S = args.mem_len + args.tgt_len;
    const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;   // b * S + s
    if (row >= args.batch * S) return;
    const int lane = threadIdx.x % 32;
    const int64_t b = row / S, s = row % S;
    const bool from_memory = s < args.mem_len;
    const Input * src = keys_input_row<Input>(args, b, s);
    const int64_t t = s - args.mem_len;
    const int64_t addend_at = b * args.addend_stride[0] + t * args.addend_stride[1];
    const void * addend = from_memory || !args.addend ? nullptr
                          : args.addend_bf16 ? static_cast<const void *>(static_cast<const bf16 *>(args.addend) + addend_at)
                                             : static_cast<const void *>(static_cast<const Input *>(args.addend) + addend_at);
    Input * sum_row = addend && args.sum_out ? static_cast<Input *>(args.sum_out) + (b * args.tgt_len + t) * args.dim : nullptr;
    const int chunks = int(args.dim / 8);
    float x[CHUNKS][8];
    float sum = 0.0f;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
        const int chunk = c * 32 + lane;
        if (chunk < chunks) {
            load8(src + chunk * 8, x[c]);
            if (addend) {
                float a[8];
                if (args.addend_bf16) load8(static_cast<const bf16 *>(addend) + chunk * 8, a);
                else load8(static_cast<const Input *>(addend) + chunk * 8, a);
#pragma unroll
                for (int i = 0; i < 8; ++i) x[c][i] += a[i];
                // Rounded to the input's dtype and read back: the very values a separate add would have written.
                alignas(16) Input rounded[8];
                store8(rounded, x[c]);
                load8(rounded, x[c]);
                if (sum_row) store8(sum_row + chunk * 8, x[c]);
            }
#pragma unroll
            for (int i = 0; i < 8; ++i) sum += x[c][i];
        }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    const float mean = sum / float(args.dim);
    float squares = 0.0f;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
        if (c * 32 + lane < chunks) {
#pragma unroll
            for (int i = 0; i < 8; ++i) squares += (x[c][i] - mean) * (x[c][i] - mean);
        }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) squares += __shfl_xor_sync(0xffffffffu, squares, offset);
    const float inverse_std = rsqrtf(squares / float(args.dim) + args.eps);
    if (args.mean_out && lane == 0) {
        args.mean_out[row] = mean;
        args.inverse_std_out[row] = inverse_std;
    }
    bf16 * keys = static_cast<bf16 *>(args.keys_out) + row * args.dim;
    bf16 * queries = from_memory || !args.queries_out ? nullptr
                     : static_cast<bf16 *>(args.queries_out) + (b * args.tgt_len + s - args.mem_len) * args.dim;
    const Param * weight = static_cast<const Param *>(args.weight);
    const Param * bias = static_cast<const Param *>(args.bias);
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
        const int chunk = c * 32 + lane;
        if (chunk < chunks) {
            float w[8], bb[8];
            load8(weight + chunk * 8, w);
            load8(bias + chunk * 8, bb);
            float out[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) out[i] = (x[c][i] - mean) * inverse_std * (1.0f + w[i]) + bb[i];
            store8(keys + chunk * 8, out);
            if (queries) store8(queries + chunk * 8, out);
        }
    }
}

template <typename Input, typename Param>
cudaError_t launch(const SegmentNormKernelArgs & args, cudaStream_t stream) {
    const int64_t rows = args.batch * (args.mem_len + args.tgt_len);
    const unsigned blocks = unsigned((rows + kRowsPerBlock - 1) / kRowsPerBlock);
    const int64_t lane_chunks = (args.dim / 8 + 31) / 32;
    if (lane_chunks <= 1) segment_norm_kernel<Input, Param, 1><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(args);
    else if (lane_chunks <= 2) segment_norm_kernel<Input, Param, 2><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(args);
    else if (lane_chunks <= 4) segment_norm_kernel<Input, Param, 4><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(args);
    else segment_norm_kernel<Input, Param, kMaxChunks><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(args);
    return cudaGetLastError();
}

/// The backward of the same rows: g is the gradient of the row's normed output (a segment row's from the keys and
/// from the queries, summed), x^ = (x - mean) x inverse_std and w = 1 + weight:
///   d input = inverse_std x (w g - mean(w g) - x^ mean(w g x^)),  d weight = sum of g x^,  d bias = sum of g.
/// Memory rows (no gradient of their own: the memory is carried detached) add to the weight's and bias's only.
template <typename Input, typename Param, int CHUNKS>
__global__ void __launch_bounds__(32 * kRowsPerBlock) segment_norm_backward_kernel(const SegmentNormBackwardKernelArgs args) {
    const SegmentNormKernelArgs & forward = args.forward;
    const int64_t S = forward.mem_len + forward.tgt_len, rows = forward.batch * S;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, chunks = int(forward.dim / 8);
    const Param * weight = static_cast<const Param *>(forward.weight);
    float weight_sum[CHUNKS][8], bias_sum[CHUNKS][8];
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c)
#pragma unroll
        for (int i = 0; i < 8; ++i) weight_sum[c][i] = bias_sum[c][i] = 0.0f;
    for (int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + warp; row < rows; row += int64_t(gridDim.x) * kRowsPerBlock) {
        const int64_t b = row / S, s = row % S;
        const bool from_memory = s < forward.mem_len;
        const int64_t t = s - forward.mem_len;
        const Input * src = keys_input_row<Input>(forward, b, s);
        const bf16 * grad_keys = args.grad_keys ? static_cast<const bf16 *>(args.grad_keys) + row * forward.dim : nullptr;
        const bf16 * grad_queries =
            args.grad_queries && !from_memory ? static_cast<const bf16 *>(args.grad_queries) + (b * forward.tgt_len + t) * forward.dim : nullptr;
        const float mean = args.mean[row], inverse_std = args.inverse_std[row];
        float x_hat[CHUNKS][8], weighted[CHUNKS][8];
        float weighted_sum = 0.0f, weighted_x_hat_sum = 0.0f;
#pragma unroll
        for (int c = 0; c < CHUNKS; ++c) {
            const int chunk = c * 32 + lane;
            if (chunk < chunks) {
                float x[8], g[8] = {0, 0, 0, 0, 0, 0, 0, 0}, part[8], w[8];
                load8(src + chunk * 8, x);
                if (grad_keys) load8(grad_keys + chunk * 8, g);
                if (grad_queries) {
                    load8(grad_queries + chunk * 8, part);
#pragma unroll
                    for (int i = 0; i < 8; ++i) g[i] += part[i];
                }
                load8(weight + chunk * 8, w);
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    x_hat[c][i] = (x[i] - mean) * inverse_std;
                    weighted[c][i] = (1.0f + w[i]) * g[i];
                    weighted_sum += weighted[c][i];
                    weighted_x_hat_sum += weighted[c][i] * x_hat[c][i];
                    weight_sum[c][i] += g[i] * x_hat[c][i];
                    bias_sum[c][i] += g[i];
                }
            }
        }
        if (from_memory) continue;
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) {
            weighted_sum += __shfl_xor_sync(0xffffffffu, weighted_sum, offset);
            weighted_x_hat_sum += __shfl_xor_sync(0xffffffffu, weighted_x_hat_sum, offset);
        }
        const float weighted_mean = weighted_sum / float(forward.dim), weighted_x_hat_mean = weighted_x_hat_sum / float(forward.dim);
        const int64_t out_row = (b * forward.tgt_len + t) * forward.dim;
        Input * grad_segment = static_cast<Input *>(args.grad_segment) + out_row;
        const Input * grad_sum = args.grad_sum ? static_cast<const Input *>(args.grad_sum) + out_row : nullptr;
        bf16 * grad_addend = args.grad_addend ? static_cast<bf16 *>(args.grad_addend) + out_row : nullptr;
#pragma unroll
        for (int c = 0; c < CHUNKS; ++c) {
            const int chunk = c * 32 + lane;
            if (chunk < chunks) {
                float dx[8], other[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                if (grad_sum) load8(grad_sum + chunk * 8, other);
#pragma unroll
                for (int i = 0; i < 8; ++i) dx[i] = inverse_std * (weighted[c][i] - weighted_mean - x_hat[c][i] * weighted_x_hat_mean) + other[i];
                store8(grad_segment + chunk * 8, dx);
                if (grad_addend) store8(grad_addend + chunk * 8, dx);
            }
        }
    }
    // The block's warps joined, 256 columns at a time: one partial row of each sum per block.
    __shared__ float joined[kRowsPerBlock][256];
    for (int which = 0; which < 2; ++which) {
        float * partial = (which == 0 ? args.weight_partial : args.bias_partial) + int64_t(blockIdx.x) * forward.dim;
#pragma unroll
        for (int c = 0; c < CHUNKS; ++c) {
#pragma unroll
            for (int i = 0; i < 8; ++i) joined[warp][lane * 8 + i] = which == 0 ? weight_sum[c][i] : bias_sum[c][i];
            __syncthreads();
            const int column = c * 256 + int(threadIdx.x);
            if (column < forward.dim) {
                float total = 0.0f;
#pragma unroll
                for (int w = 0; w < kRowsPerBlock; ++w) total += joined[w][threadIdx.x];
                partial[column] = total;
            }
            __syncthreads();
        }
    }
}

template <typename Input, typename Param>
cudaError_t launch_backward(const SegmentNormBackwardKernelArgs & args, cudaStream_t stream) {
    const int64_t lane_chunks = (args.forward.dim / 8 + 31) / 32;
    const unsigned blocks = unsigned(args.blocks);
    if (lane_chunks <= 1) segment_norm_backward_kernel<Input, Param, 1><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(args);
    else if (lane_chunks <= 2) segment_norm_backward_kernel<Input, Param, 2><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(args);
    else if (lane_chunks <= 4) segment_norm_backward_kernel<Input, Param, 4><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(args);
    else segment_norm_backward_kernel<Input, Param, kMaxChunks><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(args);
    return cudaGetLastError();
}

} // namespace

bool segment_norm_kernel_supports(int64_t dim) { return dim > 0 && dim % 8 == 0 && dim <= 8 * 32 * kMaxChunks; }

const char * launch_segment_norm(const SegmentNormKernelArgs & args, void * stream_handle) {
    if (!segment_norm_kernel_supports(args.dim)) return "segment norm kernel: dim must be a multiple of 8, at most 2048";
    auto stream = static_cast<cudaStream_t>(stream_handle);
    cudaError_t status;
    if (args.input_bf16) status = args.params_bf16 ? launch<bf16, bf16>(args, stream) : launch<bf16, float>(args, stream);
    else status = args.params_bf16 ? launch<float, bf16>(args, stream) : launch<float, float>(args, stream);
    return kernels::error_text(status);
}

int64_t segment_norm_backward_blocks(int64_t rows) {
    return std::min<int64_t>((rows + kRowsPerBlock - 1) / kRowsPerBlock, 1024);
}

const char * launch_segment_norm_backward(const SegmentNormBackwardKernelArgs & args, void * stream_handle) {
    if (!segment_norm_kernel_supports(args.forward.dim)) return "segment norm kernel: dim must be a multiple of 8, at most 2048";
    if (args.blocks < 1) return "segment norm backward: at least one block";
    auto stream = static_cast<cudaStream_t>(stream_handle);
    const auto & forward = args.forward;
    cudaError_t status;
    if (forward.input_bf16) status = forward.params_bf16 ? launch_backward<bf16, bf16>(args, stream) : launch_backward<bf16, float>(args, stream);
    else status = forward.params_bf16 ? launch_backward<float, bf16>(args, stream) : launch_backward<float, float>(args, stream);
    return kernels::error_text(status);
}

} // namespace studio
