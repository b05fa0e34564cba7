// Relative attention at inference, one thread block per (query tile of 64, batch row, head); see
// rel_attention_kernel.h. Four warps each own 16 query rows. For every tile of 64 keys a warp forms, on the tensor
// cores (mma.sync m16n8k16, operands by ldmatrix), the position scores of the 80 distances its rows and keys span
// ((q+v).r, 16x80), which go to shared memory, and its content scores (q+u).k (16x64), which stay in registers; the
// relative shift is then an index into the band, row by row. An online softmax (log2 domain) carries the running
// maximum, sum and output in registers, and the probabilities become the next product's operand without leaving
// them (the accumulator's layout is the operand's). It starts from the persistent columns' softmax when there are
// any, which is exactly the log-sum-exp merge of the two parts.
#include "rel_attention_kernel.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernel_common.cuh"

namespace studio {

namespace {

using bf16 = __nv_bfloat16;
using kernels::pack_bf16;
using kernels::warp_product_from_accumulators;
using kernels::warp_product;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kQueryRows = 16 * kWarps;          // query rows of a block
constexpr int kKeys = 64;                        // keys of a tile
constexpr int kBand = kQueryRows + kKeys;        // position rows a block's tile spans (127, rounded to 128)
constexpr int kWarpBand = 16 + kKeys;            // position rows a warp's tile spans (79, rounded to 80)
constexpr float kLog2e = 1.4426950408889634f;

/// Shared-memory plan. bf16 rows are padded by 16 bytes, so that the 8 rows an ldmatrix reads fall in distinct banks
/// and stay 16-byte aligned.
template <int DH> struct Plan {
    static constexpr int ld = DH + 8;                                  // bf16 tiles: q+u, q+v, k, v, r band
    static constexpr int ld_pos = kWarpBand + 4;                       // fp32: a warp's position band
    static constexpr size_t q_bytes = size_t(kQueryRows) * ld * 2;
    static constexpr size_t kv_bytes = size_t(kKeys) * ld * 2;
    static constexpr size_t band_bytes = size_t(kBand) * ld * 2;
    static constexpr size_t pos_bytes = size_t(16) * ld_pos * 4;
    static constexpr size_t total = 2 * q_bytes + 2 * kv_bytes + band_bytes + kWarps * pos_bytes;
    static_assert(q_bytes % 16 == 0 && kv_bytes % 16 == 0 && band_bytes % 16 == 0 && pos_bytes % 16 == 0,
                  "regions must stay 16-byte aligned");
};

/// Rows first_row .. first_row+rows-1 of a strided bf16 matrix into shared memory (pitch ld), 16 bytes a thread
/// at a time; rows outside [0, limit) read as zeros.
template <int DH>
__device__ void load_rows(bf16 * dst, const bf16 * src, int64_t row_stride, int first_row, int rows, int limit) {
    constexpr int chunks = DH / 8;
    for (int idx = threadIdx.x; idx < rows * chunks; idx += kThreads) {
        const int r = idx / chunks, c = (idx % chunks) * 8, row = first_row + r;
        uint4 value = make_uint4(0, 0, 0, 0);
        if (row >= 0 && row < limit) value = *reinterpret_cast<const uint4 *>(src + int64_t(row) * row_stride + c);
        *reinterpret_cast<uint4 *>(dst + r * Plan<DH>::ld + c) = value;
    }
}

/// Key or value rows first_row .. first_row+rows-1 of the S = M+T: those before `split` from `memory`, the others
/// from `segment` (row - split). split = 0: all from segment, which then holds all S. The source is chosen once for
/// each side of the split that the tile covers (one side only when M is a multiple of 64): a choice per element made
/// the kernel a quarter slower.
template <int DH>
__device__ void load_key_rows(bf16 * dst, const bf16 * memory, int64_t memory_stride, const bf16 * segment, int64_t segment_stride,
                              int split, int first_row, int rows, int limit) {
    const int memory_rows = first_row >= split ? 0 : min(rows, split - first_row);
    if (memory_rows > 0) load_rows<DH>(dst, memory, memory_stride, first_row, memory_rows, split);
    if (memory_rows < rows)
        load_rows<DH>(dst + memory_rows * Plan<DH>::ld, segment, segment_stride, first_row + memory_rows - split, rows - memory_rows, limit - split);
}

/// Eight bias values from offset on, bf16 or fp32.
__device__ inline void load_bias(const void * bias, bool bf16_bias, int offset, float * out) {
#pragma unroll
    for (int e = 0; e < 8; ++e)
        out[e] = bf16_bias ? __bfloat162float(static_cast<const bf16 *>(bias)[offset + e]) : static_cast<const float *>(bias)[offset + e];
}

template <int DH>
__global__ void __launch_bounds__(kThreads) relative_attention_kernel(const RelativeAttentionKernelArgs args) {
    using P = Plan<DH>;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 * q_u = reinterpret_cast<bf16 *>(smem);                                  // (64, DH) q + u
    bf16 * q_v = reinterpret_cast<bf16 *>(smem + P::q_bytes);                     // (64, DH) q + v
    bf16 * keys = reinterpret_cast<bf16 *>(smem + 2 * P::q_bytes);                // (64, DH)
    bf16 * values = reinterpret_cast<bf16 *>(smem + 2 * P::q_bytes + P::kv_bytes);
    bf16 * band = reinterpret_cast<bf16 *>(smem + 2 * P::q_bytes + 2 * P::kv_bytes); // (128, DH) position rows
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float * pos_scores = reinterpret_cast<float *>(smem + 2 * P::q_bytes + 2 * P::kv_bytes + P::band_bytes + warp * P::pos_bytes); // (16, 80)

    const int T = int(args.tgt_len), M = int(args.mem_len), S = T + M;
    const int first_query = blockIdx.x * kQueryRows, b = blockIdx.y, h = blockIdx.z;
    const int rows = min(kQueryRows, T - first_query);
    const bf16 * q = static_cast<const bf16 *>(args.q) + h * args.q_stride[0] + b * args.q_stride[1];
    const bf16 * k = static_cast<const bf16 *>(args.k) + h * args.k_stride[0] + b * args.k_stride[1];
    const bf16 * v = static_cast<const bf16 *>(args.v) + h * args.v_stride[0] + b * args.v_stride[1];
    const bf16 * r = static_cast<const bf16 *>(args.r) + h * args.r_stride[0];
    // The memory's keys and values apart (the key/value cache), or in k and v with the segment's.
    const int split = args.k_memory ? M : 0;
    const bf16 * k_memory = args.k_memory ? static_cast<const bf16 *>(args.k_memory) + h * args.k_memory_stride[0] + b * args.k_memory_stride[1] : k;
    const bf16 * v_memory = args.v_memory ? static_cast<const bf16 *>(args.v_memory) + h * args.v_memory_stride[0] + b * args.v_memory_stride[1] : v;

    // q + u and q + v, rounded to bf16 once for the tensor cores.
    {
        constexpr int chunks = DH / 8;
        float u_bias[8], v_bias[8];
        for (int idx = threadIdx.x; idx < kQueryRows * chunks; idx += kThreads) {
            const int row = idx / chunks, c = (idx % chunks) * 8;
            uint4 raw = make_uint4(0, 0, 0, 0), with_u = raw, with_v = raw;
            if (row < rows) {
                load_bias(args.u_bias, args.bias_bf16, h * DH + c, u_bias);
                load_bias(args.v_bias, args.bias_bf16, h * DH + c, v_bias);
                raw = *reinterpret_cast<const uint4 *>(q + int64_t(first_query + row) * args.q_stride[2] + c);
                const bf16 * x = reinterpret_cast<const bf16 *>(&raw);
                bf16 * xu = reinterpret_cast<bf16 *>(&with_u);
                bf16 * xv = reinterpret_cast<bf16 *>(&with_v);
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    const float value = __bfloat162float(x[e]);
                    xu[e] = __float2bfloat16(value + u_bias[e]);
                    xv[e] = __float2bfloat16(value + v_bias[e]);
                }
            }
            *reinterpret_cast<uint4 *>(q_u + row * P::ld + c) = with_u;
            *reinterpret_cast<uint4 *>(q_v + row * P::ld + c) = with_v;
        }
    }

    // The lane's rows: g and g+8 of the warp's 16 (queries[0], queries[1]); its columns: 2c and 2c+1 of every 8.
    const int g = lane / 4, c = lane % 4;
    const int queries[2] = {first_query + warp * 16 + g, first_query + warp * 16 + g + 8};
    float running_max[2] = {-INFINITY, -INFINITY};   // log2 domain, the whole row's
    float running_sum[2] = {0.0f, 0.0f};             // this lane's share of the row's sum
    float out[DH / 8][4];
#pragma unroll
    for (int n = 0; n < DH / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) out[n][e] = 0.0f;
    if (args.persistent_out) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            if (queries[half] >= T) continue;
            const int64_t row = int64_t(b) * T + queries[half];
            // The parts (softmaxes over disjoint columns) joined: weights exp(lse_p - lse) with lse their log-sum-exp.
            const float * lse = args.persistent_lse + h * args.persistent_lse_stride[1] + row * args.persistent_lse_stride[2];
            float largest = -INFINITY, total = 0.0f;   // online: no array of the parts' values held in registers
#pragma unroll
            for (int p = 0; p < kMaxPersistentParts; ++p) {
                if (p >= args.persistent_parts) continue;
                const float part_lse = lse[p * args.persistent_lse_stride[0]];
                if (part_lse > largest) {
                    total = total * __expf(largest - part_lse) + 1.0f;
                    largest = part_lse;
                } else {
                    total += __expf(part_lse - largest);
                }
            }
            const float joined_lse = largest + __logf(total);
            running_max[half] = joined_lse * kLog2e;
            running_sum[half] = c == 0 ? 1.0f : 0.0f;   // the row's sum is its four lanes' shares added
            const bf16 * o = static_cast<const bf16 *>(args.persistent_out) + h * args.persistent_out_stride[1] + row * args.persistent_out_stride[2];
#pragma unroll
            for (int n = 0; n < DH / 8; ++n) out[n][2 * half] = out[n][2 * half + 1] = 0.0f;
#pragma unroll
            for (int p = 0; p < kMaxPersistentParts; ++p) {
                if (p >= args.persistent_parts) continue;
                const float weight = __expf(lse[p * args.persistent_lse_stride[0]] - joined_lse) * args.persistent_value_scale;
                const bf16 * part_out = o + p * args.persistent_out_stride[0];
#pragma unroll
                for (int n = 0; n < DH / 8; ++n) {
                    const float2 pair = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(part_out + n * 8 + 2 * c));
                    out[n][2 * half] += pair.x * weight;
                    out[n][2 * half + 1] += pair.y * weight;
                }
            }
        }
    }

    const float scale = args.scale * kLog2e;
    const int last_query = first_query + rows - 1;
    const int first_key = args.same_length ? first_query : 0;
    const int last_key = min(S - 1, last_query + M);
    const bf16 * warp_q_u = q_u + warp * 16 * P::ld;
    const bf16 * warp_q_v = q_v + warp * 16 * P::ld;
    const bf16 * warp_band = band + (kQueryRows - 16 - 16 * warp) * P::ld;   // warp w's rows span band rows 48-16w .. 127-16w
    for (int key0 = first_key; key0 <= last_key; key0 += kKeys) {
        __syncthreads();   // every warp is done with the previous tile
        load_key_rows<DH>(keys, k_memory, args.k_memory_stride[2], k, args.k_stride[2], split, key0, kKeys, S);
        load_key_rows<DH>(values, v_memory, args.v_memory_stride[2], v, args.v_stride[2], split, key0, kKeys, S);
        // Position rows key0+T-1-i for the block's queries i and keys key0..key0+63: 127 rows from key0+T-64-first_query.
        const int band_start = key0 + T - kQueryRows - first_query;
        load_rows<DH>(band, r, args.r_stride[1], band_start, kBand, S);
        __syncthreads();

        // This warp's position band (16 x 80) into shared memory, for the shift's per-row reads.
        {
            float position[kWarpBand / 8][4];
            warp_product(position, warp_q_v, warp_band, P::ld, DH, lane);
#pragma unroll
            for (int n = 0; n < kWarpBand / 8; ++n) {
                *reinterpret_cast<float2 *>(pos_scores + g * P::ld_pos + n * 8 + 2 * c) = make_float2(position[n][0], position[n][1]);
                *reinterpret_cast<float2 *>(pos_scores + (g + 8) * P::ld_pos + n * 8 + 2 * c) = make_float2(position[n][2], position[n][3]);
            }
        }
        __syncwarp();

        // Content scores (16 x 64), in registers.
        float scores[kKeys / 8][4];
        warp_product(scores, warp_q_u, keys, P::ld, DH, lane);

        // Relative shift, mask and online softmax: row i's key column j sits at band column j - i + 15.
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int i = g + 8 * half, query = queries[half];
            float tile_max = -INFINITY;
#pragma unroll
            for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int column = n * 8 + 2 * c + e, key = key0 + column;
                    const bool visible = query < T && key < S && key <= query + M && (!args.same_length || key >= query);
                    const float value = visible ? (scores[n][2 * half + e] + pos_scores[i * P::ld_pos + column - i + 15]) * scale : -INFINITY;
                    scores[n][2 * half + e] = value;
                    tile_max = fmaxf(tile_max, value);
                }
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
            const float new_max = fmaxf(running_max[half], tile_max);
            const bool empty = new_max == -INFINITY;   // nothing visible yet (padding rows)
            const float rescale = empty ? 1.0f : exp2f(running_max[half] - new_max);
            float tile_sum = 0.0f;
#pragma unroll
            for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float p = empty ? 0.0f : exp2f(scores[n][2 * half + e] - new_max);
                    scores[n][2 * half + e] = p;
                    tile_sum += p;
                }
            running_sum[half] = running_sum[half] * rescale + tile_sum;
            running_max[half] = new_max;
#pragma unroll
            for (int n = 0; n < DH / 8; ++n) {
                out[n][2 * half] *= rescale;
                out[n][2 * half + 1] *= rescale;
            }
        }

        warp_product_from_accumulators(out, scores, values, P::ld, lane);   // probabilities (16 x 64) . values (64 x DH)
        __syncwarp();   // the band's reads are done before the next tile's writes
    }

#pragma unroll
    for (int half = 0; half < 2; ++half) {
        float sum = running_sum[half];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        if (queries[half] >= T) continue;
        const float inverse = 1.0f / sum;
        bf16 * o = static_cast<bf16 *>(args.out) + h * args.out_stride[0] + b * args.out_stride[1] + int64_t(queries[half]) * args.out_stride[2];
#pragma unroll
        for (int n = 0; n < DH / 8; ++n)
            *reinterpret_cast<uint32_t *>(o + n * 8 + 2 * c) = pack_bf16(out[n][2 * half] * inverse, out[n][2 * half + 1] * inverse);
    }
}

template <int DH>
cudaError_t launch(const RelativeAttentionKernelArgs & args, cudaStream_t stream) {
    // Over 48 KB of shared memory needs the function's limit raised (a host-side attribute, cheap to repeat).
    cudaError_t status = cudaFuncSetAttribute(relative_attention_kernel<DH>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Plan<DH>::total));
    if (status != cudaSuccess) return status;
    const dim3 grid(unsigned((args.tgt_len + kQueryRows - 1) / kQueryRows), unsigned(args.batch), unsigned(args.heads));
    relative_attention_kernel<DH><<<grid, kThreads, Plan<DH>::total, stream>>>(args);
    return cudaGetLastError();
}

} // namespace

bool relative_attention_kernel_supports(int64_t head_dim) {
    return head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128;
}

const char * launch_relative_attention(const RelativeAttentionKernelArgs & args, void * stream_handle) {
    auto stream = static_cast<cudaStream_t>(stream_handle);
    cudaError_t status = cudaErrorInvalidValue;
    switch (args.head_dim) {
    case 16: status = launch<16>(args, stream); break;
    case 32: status = launch<32>(args, stream); break;
    case 64: status = launch<64>(args, stream); break;
    case 128: status = launch<128>(args, stream); break;
    default: return "relative attention kernel: head_dim must be 16, 32, 64 or 128";
    }
    return kernels::error_text(status);
}

} // namespace studio
