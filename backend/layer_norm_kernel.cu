// One warp a row: 16-byte loads, the row held in registers, mean and variance in fp32 by warp shuffles (two
// passes over the registers, as LibTorch's layer norm: mean first, then the squared deviations).
#include "layer_norm_kernel.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernel_common.cuh"

namespace studio {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kRowsPerBlock = 8;                 // one warp each
constexpr int kMaxChunks = 8;                    // chunks of 8 values a lane holds at most: rows up to 2048

__device__ inline void load8(const bf16 * p, float * out) {
    const uint4 raw = *reinterpret_cast<const uint4 *>(p);
    const bf16 * e = reinterpret_cast<const bf16 *>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = __bfloat162float(e[i]);
}
__device__ inline void load8(const float * p, float * out) {
    const float4 a = *reinterpret_cast<const float4 *>(p), b = *reinterpret_cast<const float4 *>(p + 4);
    out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w; out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
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
    const Input * src = from_memory
        ? static_cast<const Input *>(args.memory) + b * args.memory_stride[0] + s * args.memory_stride[1]
        : static_cast<const Input *>(args.segment) + b * args.segment_stride[0] + (s - args.mem_len) * args.segment_stride[1];
    const int chunks = int(args.dim / 8);
    float x[CHUNKS][8];
    float sum = 0.0f;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
        const int chunk = c * 32 + lane;
        if (chunk < chunks) {
            load8(src + chunk * 8, x[c]);
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
    bf16 * keys = static_cast<bf16 *>(args.keys_out) + row * args.dim;
    bf16 * queries = from_memory ? nullptr : static_cast<bf16 *>(args.queries_out) + (b * args.tgt_len + s - args.mem_len) * args.dim;
    const Param * weight = static_cast<const Param *>(args.weight);
    const Param * bias = static_cast<const Param *>(args.bias);
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
        const int chunk = c * 32 + lane;
        if (chunk < chunks) {
            float w[8], bb[8];
            load8(weight + chunk * 8, w);
            load8(bias + chunk * 8, bb);
            uint4 packed;
            bf16 * out = reinterpret_cast<bf16 *>(&packed);
#pragma unroll
            for (int i = 0; i < 8; ++i) out[i] = __float2bfloat16((x[c][i] - mean) * inverse_std * (1.0f + w[i]) + bb[i]);
            *reinterpret_cast<uint4 *>(keys + chunk * 8) = packed;
            if (queries) *reinterpret_cast<uint4 *>(queries + chunk * 8) = packed;
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

} // namespace studio
