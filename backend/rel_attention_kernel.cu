// Relative attention at inference and training's forward, one thread block per (query tile of 64, batch row, head);
// see rel_attention_kernel.h. Four warps each own 16 query rows. For every tile of 64 keys a warp forms its scores as
// rel_attention_tile.cuh's warp_scores does: on the tensor cores (mma.sync m16n8k16, operands by ldmatrix), the
// position scores of the 80 distances its rows and keys span ((q+v).r, 16x80), which go to shared memory, and its
// content scores (q+u).k (16x64), which stay in registers; the relative shift is then an index into the band, row by
// row. An online softmax (log2 domain) carries the running
// maximum, sum and output in registers, and the probabilities become the next product's operand without leaving
// them (the accumulator's layout is the operand's). It starts from the persistent columns' softmax when there are
// any, which is exactly the log-sum-exp merge of the two parts.
#include "rel_attention_kernel.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernel_common.cuh"
#include "rel_attention_tile.cuh"

namespace studio {

namespace {

using namespace attention_tile;
using kernels::pack_bf16;
using kernels::warp_product_from_accumulators;

/// Shared-memory plan: q+u, q+v, a tile's keys and values, the block's position band, each warp's position scores.
template <int DH> struct Plan {
    using P = Pitch<DH>;
    static constexpr size_t q_bytes = P::rows_bytes(kQueryRows);
    static constexpr size_t kv_bytes = P::rows_bytes(kKeys);
    static constexpr size_t band_bytes = P::rows_bytes(kBand);
    static constexpr size_t total = 2 * q_bytes + 2 * kv_bytes + band_bytes + kWarps * P::warp_band_bytes;
    static_assert(q_bytes % 16 == 0 && kv_bytes % 16 == 0 && band_bytes % 16 == 0 && P::warp_band_bytes % 16 == 0,
                  "regions must stay 16-byte aligned");
};

/// Eight bias values from offset on, bf16 or fp32.
__device__ inline void load_bias(const void * bias, bool bf16_bias, int offset, float * out) {
#pragma unroll
    for (int e = 0; e < 8; ++e)
        out[e] = bf16_bias ? __bfloat162float(static_cast<const bf16 *>(bias)[offset + e]) : static_cast<const float *>(bias)[offset + e];
}

/// kTraining: q + u and q + v come formed (q, q_position), the probabilities are dropped after the row's sum has
/// taken them, and each row's log-sum-exp is written for the backward.
template <int DH, bool kTraining>
__global__ void __launch_bounds__(kThreads) relative_attention_kernel(const RelativeAttentionKernelArgs args) {
    using P = Plan<DH>;
    constexpr int ld = Pitch<DH>::ld;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 * q_u = reinterpret_cast<bf16 *>(smem);                                  // (64, DH) q + u
    bf16 * q_v = reinterpret_cast<bf16 *>(smem + P::q_bytes);                     // (64, DH) q + v
    bf16 * keys = reinterpret_cast<bf16 *>(smem + 2 * P::q_bytes);                // (64, DH)
    bf16 * values = reinterpret_cast<bf16 *>(smem + 2 * P::q_bytes + P::kv_bytes);
    bf16 * band = reinterpret_cast<bf16 *>(smem + 2 * P::q_bytes + 2 * P::kv_bytes); // (128, DH) position rows
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float * pos_scores = reinterpret_cast<float *>(smem + 2 * P::q_bytes + 2 * P::kv_bytes + P::band_bytes + warp * Pitch<DH>::warp_band_bytes);

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

    if constexpr (kTraining) {
        const bf16 * q_position = static_cast<const bf16 *>(args.q_position) + h * args.q_stride[0] + b * args.q_stride[1];
        load_rows<DH>(q_u, q, args.q_stride[2], first_query, kQueryRows, T);
        load_rows<DH>(q_v, q_position, args.q_stride[2], first_query, kQueryRows, T);
    } else {
        // q + u and q + v, rounded to bf16 once for the tensor cores.
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
            *reinterpret_cast<uint4 *>(q_u + row * ld + c) = with_u;
            *reinterpret_cast<uint4 *>(q_v + row * ld + c) = with_v;
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
    const bf16 * warp_q_u = q_u + warp * 16 * ld;
    const bf16 * warp_q_v = q_v + warp * 16 * ld;
    const bf16 * warp_band = band + (kQueryRows - 16 - 16 * warp) * ld;   // warp w's rows span band rows 48-16w .. 127-16w
    const Visibility visible{T, M, args.same_length};
    uint64_t seed = 0, offset = 0;
    if constexpr (kTraining) {
        if (args.dropout.enabled) {
            dropout_seed_offset(args.dropout, seed, offset);
            if (args.dropout.rng_out && blockIdx.x == 0 && b == 0 && h == 0 && threadIdx.x == 0) {
                args.dropout.rng_out[0] = int64_t(seed);
                args.dropout.rng_out[1] = int64_t(offset);
            }
        }
    }
    for (int key0 = first_key; key0 <= last_key; key0 += kKeys) {
        __syncthreads();   // every warp is done with the previous tile
        load_key_rows<DH>(keys, k_memory, args.k_memory_stride[2], k, args.k_stride[2], split, key0, kKeys, S);
        load_key_rows<DH>(values, v_memory, args.v_memory_stride[2], v, args.v_stride[2], split, key0, kKeys, S);
        // Position rows key0+T-1-i for the block's queries i and keys key0..key0+63: 127 rows.
        load_rows<DH>(band, r, args.r_stride[1], band_start(key0, first_query, T, int(args.first_position)), kBand, S - int(args.first_position));
        __syncthreads();

        float scores[kKeys / 8][4];
        warp_scores<DH>(scores, warp_q_u, warp_q_v, keys, warp_band, pos_scores, queries, key0, visible, scale, lane);

        // Online softmax.
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float tile_max = -INFINITY;
#pragma unroll
            for (int n = 0; n < kKeys / 8; ++n) tile_max = fmaxf(tile_max, fmaxf(scores[n][2 * half], scores[n][2 * half + 1]));
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
            if constexpr (kTraining) {
                // Dropped after the sum has taken them: the softmax is of all entries, its output of the kept.
                if (args.dropout.enabled) {
                    const uint32_t keep = keep_bits(seed, offset, dropout_row(b, h, args.heads, queries[half], T), S, key0, c,
                                                    args.dropout.keep_threshold);
#pragma unroll
                    for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
                        for (int e = 0; e < 2; ++e)
                            scores[n][2 * half + e] = (keep >> (2 * n + e)) & 1u ? scores[n][2 * half + e] * args.dropout.keep_scale : 0.0f;
                }
            }
        }

        warp_product_from_accumulators(out, scores, values, ld, lane);   // probabilities (16 x 64) . values (64 x DH)
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
        if constexpr (kTraining) {
            if (c == 0)
                args.lse[h * args.lse_stride[0] + b * args.lse_stride[1] + int64_t(queries[half]) * args.lse_stride[2]] =
                    (running_max[half] + __log2f(sum)) / kLog2e;
        }
    }
}

/// One byte per entry (1 = kept) of the keep mask a training call drew: keep_bits per entry, a thread an entry.
__global__ void attention_keep_mask_kernel(const AttentionDropout dropout, int heads, int batch, int tgt_len, int mem_len, unsigned char * keep) {
    const int S = tgt_len + mem_len;
    const int64_t total = int64_t(batch) * heads * tgt_len * S;
    uint64_t seed = 0, offset = 0;
    dropout_seed_offset(dropout, seed, offset);
    for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x) {
        const int key = int(idx % S);
        const uint64_t row = uint64_t(idx / S);                                  // dropout_row: the (B,H,T,S) layout's
        const int column = key % kKeys, n = column / 8, c = (column % 8) / 2, e = column % 2;
        keep[idx] = (keep_bits(seed, offset, row, S, key, c, dropout.keep_threshold) >> (2 * n + e)) & 1u;
    }
}

template <int DH, bool kTraining>
cudaError_t launch(const RelativeAttentionKernelArgs & args, cudaStream_t stream) {
    // Over 48 KB of shared memory needs the function's limit raised (a host-side attribute, cheap to repeat).
    cudaError_t status =
        cudaFuncSetAttribute(relative_attention_kernel<DH, kTraining>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Plan<DH>::total));
    if (status != cudaSuccess) return status;
    const dim3 grid(unsigned((args.tgt_len + kQueryRows - 1) / kQueryRows), unsigned(args.batch), unsigned(args.heads));
    relative_attention_kernel<DH, kTraining><<<grid, kThreads, Plan<DH>::total, stream>>>(args);
    return cudaGetLastError();
}

} // namespace

bool relative_attention_kernel_supports(int64_t head_dim) {
    return head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128;
}

const char * launch_relative_attention(const RelativeAttentionKernelArgs & args, void * stream_handle) {
    auto stream = static_cast<cudaStream_t>(stream_handle);
    cudaError_t status = cudaErrorInvalidValue;
    if (args.q_position) {
        switch (args.head_dim) {
        case 16: status = launch<16, true>(args, stream); break;
        case 32: status = launch<32, true>(args, stream); break;
        case 64: status = launch<64, true>(args, stream); break;
        default: return "relative attention kernel: training's head_dim must be 16, 32 or 64";
        }
        return kernels::error_text(status);
    }
    switch (args.head_dim) {
    case 16: status = launch<16, false>(args, stream); break;
    case 32: status = launch<32, false>(args, stream); break;
    case 64: status = launch<64, false>(args, stream); break;
    case 128: status = launch<128, false>(args, stream); break;
    default: return "relative attention kernel: head_dim must be 16, 32, 64 or 128";
    }
    return kernels::error_text(status);
}

const char * launch_attention_keep_mask(const AttentionDropout & dropout, int64_t heads, int64_t batch, int64_t tgt_len, int64_t mem_len,
                                        unsigned char * keep, void * stream) {
    attention_keep_mask_kernel<<<256, 256, 0, static_cast<cudaStream_t>(stream)>>>(dropout, int(heads), int(batch), int(tgt_len), int(mem_len), keep);
    return kernels::launch_error();
}

} // namespace studio
