// Relative attention at inference, one thread block per (query tile of 64, batch row, head); see
// rel_attention_kernel.h. Four warps each own 16 query rows. For every tile of 64 keys a warp forms, on the tensor
// cores, its content scores (q+u).k (16x64) and the position scores of the 80 distances its rows and keys span
// ((q+v).r, 16x80); the relative shift is then an index into that band, row by row. An online softmax (log2 domain)
// carries the running maximum, sum and output; it starts from the persistent columns' softmax when there are any,
// which is exactly the log-sum-exp merge of the two parts.
#include "rel_attention_kernel.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "kernel_common.cuh"

namespace studio {

namespace {

using bf16 = __nv_bfloat16;
namespace wmma = nvcuda::wmma;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kQueryRows = 16 * kWarps;          // query rows of a block
constexpr int kKeys = 64;                        // keys of a tile
constexpr int kBand = kQueryRows + kKeys;        // position rows a block's tile spans (127, rounded to 128)
constexpr int kWarpBand = 16 + kKeys;            // position rows a warp's tile spans (79, rounded to 80)
constexpr float kLog2e = 1.4426950408889634f;

/// Shared-memory plan. Row pitches are padded off a multiple of 32 banks; every region is a multiple of 32 bytes so
/// that each tile a warp hands the tensor cores starts 256-bit aligned.
template <int DH> struct Plan {
    static constexpr int ld = DH + 8;                                  // bf16 tiles: q+u, q+v, k, v, r band
    static constexpr int ld_scores = (DH > kKeys ? DH : kKeys) + 4;    // fp32: content scores, then P.V
    static constexpr int ld_pos = kWarpBand + 4;                       // fp32: a warp's position band
    static constexpr int ld_p = kKeys + 8;                             // bf16: probabilities
    static constexpr size_t q_bytes = size_t(kQueryRows) * ld * 2;
    static constexpr size_t kv_bytes = size_t(kKeys) * ld * 2;
    static constexpr size_t band_bytes = size_t(kBand) * ld * 2;
    static constexpr size_t scores_bytes = size_t(16) * ld_scores * 4;
    static constexpr size_t pos_bytes = size_t(16) * ld_pos * 4;
    static constexpr size_t p_bytes = size_t(16) * ld_p * 2;
    static constexpr size_t warp_bytes = scores_bytes + pos_bytes + p_bytes;
    static constexpr size_t total = 2 * q_bytes + 2 * kv_bytes + band_bytes + kWarps * warp_bytes;
    static_assert(q_bytes % 32 == 0 && kv_bytes % 32 == 0 && band_bytes % 32 == 0, "tiles must stay 32-byte aligned");
    static_assert(scores_bytes % 32 == 0 && pos_bytes % 32 == 0 && p_bytes % 32 == 0, "warp regions must stay 32-byte aligned");
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
    unsigned char * mine = smem + 2 * P::q_bytes + 2 * P::kv_bytes + P::band_bytes + warp * P::warp_bytes;
    float * scores = reinterpret_cast<float *>(mine);                             // (16, 64) then (16, DH)
    float * pos_scores = reinterpret_cast<float *>(mine + P::scores_bytes);       // (16, 80)
    bf16 * probs = reinterpret_cast<bf16 *>(mine + P::scores_bytes + P::pos_bytes); // (16, 64)

    const int T = int(args.tgt_len), M = int(args.mem_len), S = T + M;
    const int first_query = blockIdx.x * kQueryRows, b = blockIdx.y, h = blockIdx.z;
    const int rows = min(kQueryRows, T - first_query);
    const bf16 * q = static_cast<const bf16 *>(args.q) + h * args.q_stride[0] + b * args.q_stride[1];
    const bf16 * k = static_cast<const bf16 *>(args.k) + h * args.k_stride[0] + b * args.k_stride[1];
    const bf16 * v = static_cast<const bf16 *>(args.v) + h * args.v_stride[0] + b * args.v_stride[1];
    const bf16 * r = static_cast<const bf16 *>(args.r) + h * args.r_stride[0];

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

    // Each lane owns half of one query row: row `mine_row`, columns 2t + half (interleaved to spread the banks).
    const int mine_row = lane / 2, half = lane % 2;
    const int query = first_query + warp * 16 + mine_row;
    const bool query_valid = query < T;
    float running_max = -INFINITY, running_sum = 0.0f;   // log2 domain
    float acc[DH / 2];
#pragma unroll
    for (int t = 0; t < DH / 2; ++t) acc[t] = 0.0f;
    if (args.persistent_out && query_valid) {
        const int64_t row = int64_t(b) * T + query;
        running_max = args.persistent_lse[h * args.persistent_lse_stride[0] + row * args.persistent_lse_stride[1]] * kLog2e;
        running_sum = 1.0f;
        const bf16 * o = static_cast<const bf16 *>(args.persistent_out) + h * args.persistent_out_stride[0] + row * args.persistent_out_stride[1];
#pragma unroll
        for (int t = 0; t < DH / 2; ++t) acc[t] = __bfloat162float(o[2 * t + half]) * args.persistent_value_scale;
    }

    const float scale = args.scale * kLog2e;
    const int last_query = first_query + rows - 1;
    const int first_key = args.same_length ? first_query : 0;
    const int last_key = min(S - 1, last_query + M);
    for (int key0 = first_key; key0 <= last_key; key0 += kKeys) {
        __syncthreads();   // every warp is done with the previous tile
        load_rows<DH>(keys, k, args.k_stride[2], key0, kKeys, S);
        load_rows<DH>(values, v, args.v_stride[2], key0, kKeys, S);
        // Position rows key0+T-1-i for the block's queries i and keys key0..key0+63: 127 rows from key0+T-64-first_query.
        const int band_start = key0 + T - kQueryRows - first_query;
        load_rows<DH>(band, r, args.r_stride[1], band_start, kBand, S);
        __syncthreads();

        // Content scores (16 x 64) and this warp's position band (16 x 80) on the tensor cores.
        {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> content[kKeys / 16], position[kWarpBand / 16];
#pragma unroll
            for (int n = 0; n < kKeys / 16; ++n) wmma::fill_fragment(content[n], 0.0f);
#pragma unroll
            for (int n = 0; n < kWarpBand / 16; ++n) wmma::fill_fragment(position[n], 0.0f);
            // Warp w's rows span band rows 48-16w .. 127-16w.
            const bf16 * warp_band = band + (kQueryRows - 16 - 16 * warp) * P::ld;
#pragma unroll
            for (int kk = 0; kk < DH / 16; ++kk) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a_u, a_v;
                wmma::load_matrix_sync(a_u, q_u + warp * 16 * P::ld + kk * 16, P::ld);
                wmma::load_matrix_sync(a_v, q_v + warp * 16 * P::ld + kk * 16, P::ld);
#pragma unroll
                for (int n = 0; n < kKeys / 16; ++n) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> key_frag;
                    wmma::load_matrix_sync(key_frag, keys + n * 16 * P::ld + kk * 16, P::ld);
                    wmma::mma_sync(content[n], a_u, key_frag, content[n]);
                }
#pragma unroll
                for (int n = 0; n < kWarpBand / 16; ++n) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> pos_frag;
                    wmma::load_matrix_sync(pos_frag, warp_band + n * 16 * P::ld + kk * 16, P::ld);
                    wmma::mma_sync(position[n], a_v, pos_frag, position[n]);
                }
            }
#pragma unroll
            for (int n = 0; n < kKeys / 16; ++n) wmma::store_matrix_sync(scores + n * 16, content[n], P::ld_scores, wmma::mem_row_major);
#pragma unroll
            for (int n = 0; n < kWarpBand / 16; ++n)
                wmma::store_matrix_sync(pos_scores + n * 16, position[n], P::ld_pos, wmma::mem_row_major);
        }
        __syncwarp();

        // Relative shift, mask and online softmax. Row mine_row's key c sits at distance column c - mine_row + 15
        // of the warp's band.
        {
            float s[kKeys / 2];
            float tile_max = -INFINITY;
#pragma unroll
            for (int t = 0; t < kKeys / 2; ++t) {
                const int c = 2 * t + half, key = key0 + c;
                const bool visible = query_valid && key < S && key <= query + M && (!args.same_length || key >= query);
                s[t] = visible ? (scores[mine_row * P::ld_scores + c] + pos_scores[mine_row * P::ld_pos + c - mine_row + 15]) * scale
                               : -INFINITY;
                tile_max = fmaxf(tile_max, s[t]);
            }
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
            const float new_max = fmaxf(running_max, tile_max);
            const bool empty = new_max == -INFINITY;   // nothing visible yet (padding rows)
            const float rescale = empty ? 1.0f : exp2f(running_max - new_max);
            float tile_sum = 0.0f;
#pragma unroll
            for (int t = 0; t < kKeys / 2; ++t) {
                const float p = empty ? 0.0f : exp2f(s[t] - new_max);
                tile_sum += p;
                probs[mine_row * P::ld_p + 2 * t + half] = __float2bfloat16(p);
            }
            tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, 1);
            running_sum = running_sum * rescale + tile_sum;
            running_max = new_max;
#pragma unroll
            for (int t = 0; t < DH / 2; ++t) acc[t] *= rescale;
        }
        __syncwarp();

        // probabilities (16 x 64) . values (64 x DH), through shared memory into the lanes' accumulators.
        {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> out[DH / 16];
#pragma unroll
            for (int n = 0; n < DH / 16; ++n) wmma::fill_fragment(out[n], 0.0f);
#pragma unroll
            for (int kk = 0; kk < kKeys / 16; ++kk) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> p_frag;
                wmma::load_matrix_sync(p_frag, probs + kk * 16, P::ld_p);
#pragma unroll
                for (int n = 0; n < DH / 16; ++n) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> v_frag;
                    wmma::load_matrix_sync(v_frag, values + kk * 16 * P::ld + n * 16, P::ld);
                    wmma::mma_sync(out[n], p_frag, v_frag, out[n]);
                }
            }
#pragma unroll
            for (int n = 0; n < DH / 16; ++n) wmma::store_matrix_sync(scores + n * 16, out[n], P::ld_scores, wmma::mem_row_major);
        }
        __syncwarp();
#pragma unroll
        for (int t = 0; t < DH / 2; ++t) acc[t] += scores[mine_row * P::ld_scores + 2 * t + half];
        __syncwarp();
    }

    if (!query_valid) return;
    const float inverse = 1.0f / running_sum;
    bf16 * o = static_cast<bf16 *>(args.out) + h * args.out_stride[0] + b * args.out_stride[1] + int64_t(query) * args.out_stride[2];
#pragma unroll
    for (int t = 0; t < DH / 2; ++t) o[2 * t + half] = __float2bfloat16(acc[t] * inverse);
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
