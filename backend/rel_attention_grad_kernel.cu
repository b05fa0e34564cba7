// The backward of training's relative attention (rel_attention_grad_kernel.h). Both kernels form a tile's scores as
// the forward does (rel_attention_tile.cuh: four warps of 16 query rows against 64 keys, the position term shifted
// into place), then the probabilities from the forward's log-sum-exp, the same keep bits, and the scores' gradient
//   ds = p x (kept x dp / keep - rowsum(out x grad_out)),   dp = grad_out . v,
// which, scaled, is the gradient of both terms of the score. The query kernel also forms rowsum(out x grad_out) for
// both (the key kernel runs after it on the same stream). It keeps ds in registers as the operand of
// ds . k (the gradient of q + u) and writes it, shifted back, as the position scores' gradient. The key kernel puts
// the dropped probabilities and ds in shared memory, where each warp reads its 16 keys' columns as a transposed
// operand: p' . grad_out (the values' gradient) and ds' . (q + u) (the keys').
#include "rel_attention_grad_kernel.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernel_common.cuh"
#include "rel_attention_tile.cuh"

namespace studio {

namespace {

using namespace attention_tile;
using kernels::pack_bf16;

/// Shared memory of both kernels: q+u, q+v, the output's gradient and a tile's keys and values (64 rows each), the
/// position band, each warp's position scores; the key kernel also the tile's dropped probabilities and score gradients.
template <int DH, bool kKeySide> struct GradPlan {
    using P = Pitch<DH>;
    static constexpr size_t rows64 = P::rows_bytes(64);
    static constexpr int ld_keys = kKeys + 8;                                      // a (64 queries, 64 keys) tile's pitch
    static constexpr size_t keys_tile_bytes = size_t(kQueryRows) * ld_keys * 2;
    static constexpr size_t band_offset = 5 * rows64 + (kKeySide ? 2 * keys_tile_bytes : 0);
    static constexpr size_t pos_offset = band_offset + P::rows_bytes(kBand);
    static constexpr size_t total = pos_offset + kWarps * P::warp_band_bytes;
    static_assert(rows64 % 16 == 0 && keys_tile_bytes % 16 == 0 && P::warp_band_bytes % 16 == 0, "regions must stay 16-byte aligned");
};

/// What both kernels read of one (batch row, head): base pointers and the per-row statistics.
struct GradOperands {
    const bf16 *q_u, *q_v, *k, *v, *r, *grad_out;
    int T, M, S, first_position;
    __device__ GradOperands(const RelativeAttentionGradKernelArgs & args, int b, int h) {
        const auto & f = args.forward;
        q_u = static_cast<const bf16 *>(f.q) + h * f.q_stride[0] + b * f.q_stride[1];
        q_v = static_cast<const bf16 *>(f.q_position) + h * f.q_stride[0] + b * f.q_stride[1];
        k = static_cast<const bf16 *>(f.k) + h * f.k_stride[0] + b * f.k_stride[1];
        v = static_cast<const bf16 *>(f.v) + h * f.v_stride[0] + b * f.v_stride[1];
        r = static_cast<const bf16 *>(f.r) + h * f.r_stride[0];
        grad_out = static_cast<const bf16 *>(args.grad_out) + h * args.grad_out_stride[0] + b * args.grad_out_stride[1];
        T = int(f.tgt_len);
        M = int(f.mem_len);
        S = T + M;
        first_position = int(f.first_position);
    }
};

/// A lane's two rows' log-sum-exp (log2 domain) and rowsum(out x grad_out); zeros for rows past T.
__device__ inline void row_statistics(const RelativeAttentionGradKernelArgs & args, int b, int h, const int (&queries)[2], int T,
                                      float (&lse2)[2], float (&out_dot_grad)[2]) {
    const auto & stride = args.forward.lse_stride;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int64_t at = h * stride[0] + b * stride[1] + int64_t(queries[half]) * stride[2];
        lse2[half] = queries[half] < T ? args.lse[at] * kLog2e : 0.0f;
        out_dot_grad[half] = queries[half] < T ? args.out_dot_grad[at] : 0.0f;
    }
}

/// scores (log2 domain, -inf where hidden) and dp = grad_out . v of a warp's tile become the scores' gradient ds in
/// place; dropped (where given) receives the dropped probabilities. keep_bits of the lane's rows (all ones: no dropout).
__device__ inline void score_gradients(float (&scores)[kKeys / 8][4], const float (&dp)[kKeys / 8][4], const float (&lse2)[2],
                                       const float (&out_dot_grad)[2], const uint32_t (&keep)[2], float keep_scale,
                                       float (*dropped)[4] = nullptr) {
#pragma unroll
    for (int half = 0; half < 2; ++half)
#pragma unroll
        for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float p = exp2f(scores[n][2 * half + e] - lse2[half]);
                const bool kept = (keep[half] >> (2 * n + e)) & 1u;
                if (dropped) dropped[n][2 * half + e] = kept ? p * keep_scale : 0.0f;
                scores[n][2 * half + e] = p * ((kept ? dp[n][2 * half + e] * keep_scale : 0.0f) - out_dot_grad[half]);
            }
}

/// The keep bits of a lane's two rows in the tile from key0.
__device__ inline void tile_keep_bits(uint32_t (&keep)[2], const AttentionDropout & dropout, uint64_t seed, uint64_t offset, int b, int h,
                                      int heads, const int (&queries)[2], int T, int S, int key0, int c) {
#pragma unroll
    for (int half = 0; half < 2; ++half)
        keep[half] = dropout.enabled ? keep_bits(seed, offset, (uint64_t(b) * heads + h) * T + queries[half], (S + kKeys - 1) / kKeys,
                                                 key0 / kKeys, c, dropout.keep_threshold)
                                     : 0xFFFFFFFFu;
}

/// One block per (query tile, batch row, head): the gradient of q + u and the position scores' gradient.
template <int DH>
__global__ void __launch_bounds__(kThreads) query_gradient_kernel(const RelativeAttentionGradKernelArgs args) {
    using Plan = GradPlan<DH, false>;
    constexpr int ld = Pitch<DH>::ld;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 * q_u = reinterpret_cast<bf16 *>(smem);
    bf16 * q_v = reinterpret_cast<bf16 *>(smem + Plan::rows64);
    bf16 * grad_out = reinterpret_cast<bf16 *>(smem + 2 * Plan::rows64);
    bf16 * keys = reinterpret_cast<bf16 *>(smem + 3 * Plan::rows64);
    bf16 * values = reinterpret_cast<bf16 *>(smem + 4 * Plan::rows64);
    bf16 * band = reinterpret_cast<bf16 *>(smem + Plan::band_offset);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    float * pos_scores = reinterpret_cast<float *>(smem + Plan::pos_offset + warp * Pitch<DH>::warp_band_bytes);
    const auto & f = args.forward;
    const int first_query = blockIdx.x * kQueryRows, b = blockIdx.y, h = blockIdx.z;
    const GradOperands in(args, b, h);
    const int T = in.T, M = in.M, S = in.S;
    load_rows<DH>(q_u, in.q_u, f.q_stride[2], first_query, kQueryRows, T);
    load_rows<DH>(q_v, in.q_v, f.q_stride[2], first_query, kQueryRows, T);
    load_rows<DH>(grad_out, in.grad_out, args.grad_out_stride[2], first_query, kQueryRows, T);
    __syncthreads();

    // Row i's position gradient: columns j + lead - i for its keys j; those below `lead` no kept entry reads.
    const int P = S - in.first_position, lead = T - 1 - in.first_position;
    bf16 * grad_position = static_cast<bf16 *>(args.grad_position) + h * args.grad_position_stride[0] + b * args.grad_position_stride[1];
    for (int idx = threadIdx.x; idx < kQueryRows * lead; idx += kThreads) {
        const int query = first_query + idx / lead;
        if (query < T) grad_position[int64_t(query) * args.grad_position_stride[2] + idx % lead] = __float2bfloat16(0.0f);
    }

    const int queries[2] = {first_query + warp * 16 + g, first_query + warp * 16 + g + 8};
    // rowsum(out x grad_out) of the lane's rows, for this kernel and the key kernel after it.
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        float sum = 0.0f;
        if (queries[half] < T) {
            const bf16 * out_row = static_cast<const bf16 *>(args.out) + h * f.out_stride[0] + b * f.out_stride[1] + int64_t(queries[half]) * f.out_stride[2];
            const bf16 * grad_row = grad_out + (warp * 16 + g + 8 * half) * ld;
#pragma unroll
            for (int n = 0; n < DH / 8; ++n) {
                const float2 o = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(out_row + n * 8 + 2 * c));
                const float2 d = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(grad_row + n * 8 + 2 * c));
                sum += o.x * d.x + o.y * d.y;
            }
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        if (queries[half] < T && c == 0)
            args.out_dot_grad[h * f.lse_stride[0] + b * f.lse_stride[1] + int64_t(queries[half]) * f.lse_stride[2]] = sum;
    }
    __syncwarp();
    float lse2[2], out_dot_grad[2];
    row_statistics(args, b, h, queries, T, lse2, out_dot_grad);
    uint64_t seed = 0, offset = 0;
    if (f.dropout.enabled) dropout_seed_offset(f.dropout, seed, offset);
    float grad_q[DH / 8][4];
#pragma unroll
    for (int n = 0; n < DH / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) grad_q[n][e] = 0.0f;

    const float scale = f.scale * kLog2e;
    const int last_query = min(T, first_query + kQueryRows) - 1;
    const int first_key = f.same_length ? first_query : 0;
    const int last_key = min(S - 1, last_query + M);
    const bf16 * warp_q_u = q_u + warp * 16 * ld;
    const bf16 * warp_q_v = q_v + warp * 16 * ld;
    const bf16 * warp_grad_out = grad_out + warp * 16 * ld;
    const bf16 * warp_band = band + (kQueryRows - 16 - 16 * warp) * ld;
    const Visibility visible{T, M, f.same_length};
    for (int key0 = first_key; key0 <= last_key; key0 += kKeys) {
        __syncthreads();
        load_rows<DH>(keys, in.k, f.k_stride[2], key0, kKeys, S);
        load_rows<DH>(values, in.v, f.v_stride[2], key0, kKeys, S);
        load_rows<DH>(band, in.r, f.r_stride[1], band_start(key0, first_query, T, in.first_position), kBand, P);
        __syncthreads();

        float scores[kKeys / 8][4], dp[kKeys / 8][4];
        warp_scores<DH>(scores, warp_q_u, warp_q_v, keys, warp_band, pos_scores, queries, key0, visible, scale, lane);
        kernels::warp_product(dp, warp_grad_out, values, ld, DH, lane);
        uint32_t keep[2];
        tile_keep_bits(keep, f.dropout, seed, offset, b, h, int(f.heads), queries, T, S, key0, c);
        score_gradients(scores, dp, lse2, out_dot_grad, keep, f.dropout.keep_scale);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            if (queries[half] >= T) continue;
            bf16 * row = grad_position + int64_t(queries[half]) * args.grad_position_stride[2];
#pragma unroll
            for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int column = key0 + n * 8 + 2 * c + e + lead - queries[half];
                    if (column >= 0 && column < P) row[column] = __float2bfloat16(scores[n][2 * half + e] * f.scale);
                }
        }
        kernels::warp_product_from_accumulators(grad_q, scores, keys, ld, lane);   // ds (16 x 64) . keys (64 x DH)
    }

#pragma unroll
    for (int half = 0; half < 2; ++half) {
        if (queries[half] >= T) continue;
        bf16 * row = static_cast<bf16 *>(args.grad_q) + h * args.grad_q_stride[0] + b * args.grad_q_stride[1]
                    + int64_t(queries[half]) * args.grad_q_stride[2];
#pragma unroll
        for (int n = 0; n < DH / 8; ++n)
            *reinterpret_cast<uint32_t *>(row + n * 8 + 2 * c) = pack_bf16(grad_q[n][2 * half] * f.scale, grad_q[n][2 * half + 1] * f.scale);
    }
}

/// One block per (key tile, batch row, head): the gradients of the keys and the values, over the query tiles that see
/// the tile.
template <int DH>
__global__ void __launch_bounds__(kThreads) key_gradient_kernel(const RelativeAttentionGradKernelArgs args) {
    using Plan = GradPlan<DH, true>;
    constexpr int ld = Pitch<DH>::ld;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 * q_u = reinterpret_cast<bf16 *>(smem);
    bf16 * q_v = reinterpret_cast<bf16 *>(smem + Plan::rows64);
    bf16 * grad_out = reinterpret_cast<bf16 *>(smem + 2 * Plan::rows64);
    bf16 * keys = reinterpret_cast<bf16 *>(smem + 3 * Plan::rows64);
    bf16 * values = reinterpret_cast<bf16 *>(smem + 4 * Plan::rows64);
    constexpr int ld_keys = Plan::ld_keys;
    bf16 * dropped = reinterpret_cast<bf16 *>(smem + 5 * Plan::rows64);                           // (64 queries, 64 keys)
    bf16 * score_grads = reinterpret_cast<bf16 *>(smem + 5 * Plan::rows64 + Plan::keys_tile_bytes); // (64 queries, 64 keys)
    bf16 * band = reinterpret_cast<bf16 *>(smem + Plan::band_offset);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    float * pos_scores = reinterpret_cast<float *>(smem + Plan::pos_offset + warp * Pitch<DH>::warp_band_bytes);
    const auto & f = args.forward;
    const int key0 = blockIdx.x * kKeys, b = blockIdx.y, h = blockIdx.z;
    const GradOperands in(args, b, h);
    const int T = in.T, M = in.M, S = in.S, P = S - in.first_position;
    load_rows<DH>(keys, in.k, f.k_stride[2], key0, kKeys, S);
    load_rows<DH>(values, in.v, f.v_stride[2], key0, kKeys, S);

    uint64_t seed = 0, offset = 0;
    if (f.dropout.enabled) dropout_seed_offset(f.dropout, seed, offset);
    float grad_k[DH / 8][4], grad_v[DH / 8][4];
#pragma unroll
    for (int n = 0; n < DH / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) grad_k[n][e] = grad_v[n][e] = 0.0f;

    // Queries i see key j for j - M <= i (<= j with same_length).
    const float scale = f.scale * kLog2e;
    const int first_tile_query = max(0, key0 - M) / kQueryRows * kQueryRows;
    const int last_tile_query = f.same_length ? min(T - 1, key0 + kKeys - 1) : T - 1;
    const bf16 * warp_q_u = q_u + warp * 16 * ld;
    const bf16 * warp_q_v = q_v + warp * 16 * ld;
    const bf16 * warp_grad_out = grad_out + warp * 16 * ld;
    const bf16 * warp_band = band + (kQueryRows - 16 - 16 * warp) * ld;
    const Visibility visible{T, M, f.same_length};
    for (int first_query = first_tile_query; first_query <= last_tile_query; first_query += kQueryRows) {
        __syncthreads();   // the previous tile's operands are read
        load_rows<DH>(q_u, in.q_u, f.q_stride[2], first_query, kQueryRows, T);
        load_rows<DH>(q_v, in.q_v, f.q_stride[2], first_query, kQueryRows, T);
        load_rows<DH>(grad_out, in.grad_out, args.grad_out_stride[2], first_query, kQueryRows, T);
        load_rows<DH>(band, in.r, f.r_stride[1], band_start(key0, first_query, T, in.first_position), kBand, P);
        __syncthreads();

        const int queries[2] = {first_query + warp * 16 + g, first_query + warp * 16 + g + 8};
        float lse2[2], out_dot_grad[2];
        row_statistics(args, b, h, queries, T, lse2, out_dot_grad);
        float scores[kKeys / 8][4], dp[kKeys / 8][4], kept_probs[kKeys / 8][4];
        warp_scores<DH>(scores, warp_q_u, warp_q_v, keys, warp_band, pos_scores, queries, key0, visible, scale, lane);
        kernels::warp_product(dp, warp_grad_out, values, ld, DH, lane);
        uint32_t keep[2];
        tile_keep_bits(keep, f.dropout, seed, offset, b, h, int(f.heads), queries, T, S, key0, c);
        score_gradients(scores, dp, lse2, out_dot_grad, keep, f.dropout.keep_scale, kept_probs);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int row = warp * 16 + g + 8 * half;
#pragma unroll
            for (int n = 0; n < kKeys / 8; ++n) {
                *reinterpret_cast<uint32_t *>(dropped + row * ld_keys + n * 8 + 2 * c) = pack_bf16(kept_probs[n][2 * half], kept_probs[n][2 * half + 1]);
                *reinterpret_cast<uint32_t *>(score_grads + row * ld_keys + n * 8 + 2 * c) = pack_bf16(scores[n][2 * half], scores[n][2 * half + 1]);
            }
        }
        __syncthreads();
        // This warp's 16 keys: columns 16w .. 16w+15 of both tiles, against all 64 query rows.
        kernels::warp_product_transposed(grad_v, dropped + warp * 16, ld_keys, grad_out, ld, kQueryRows, lane);
        kernels::warp_product_transposed(grad_k, score_grads + warp * 16, ld_keys, q_u, ld, kQueryRows, lane);
    }

#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int key = key0 + warp * 16 + g + 8 * half;
        if (key >= S) continue;
        const int64_t at = h * args.grad_kv_stride[0] + b * args.grad_kv_stride[1] + int64_t(key) * args.grad_kv_stride[2];
        bf16 * k_row = static_cast<bf16 *>(args.grad_k) + at;
        bf16 * v_row = static_cast<bf16 *>(args.grad_v) + at;
#pragma unroll
        for (int n = 0; n < DH / 8; ++n) {
            *reinterpret_cast<uint32_t *>(k_row + n * 8 + 2 * c) = pack_bf16(grad_k[n][2 * half] * f.scale, grad_k[n][2 * half + 1] * f.scale);
            *reinterpret_cast<uint32_t *>(v_row + n * 8 + 2 * c) = pack_bf16(grad_v[n][2 * half], grad_v[n][2 * half + 1]);
        }
    }
}

template <int DH>
cudaError_t launch(const RelativeAttentionGradKernelArgs & args, cudaStream_t stream) {
    using QueryPlan = GradPlan<DH, false>;
    using KeyPlan = GradPlan<DH, true>;
    const auto & f = args.forward;
    cudaError_t status = cudaFuncSetAttribute(query_gradient_kernel<DH>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(QueryPlan::total));
    if (status == cudaSuccess)
        status = cudaFuncSetAttribute(key_gradient_kernel<DH>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(KeyPlan::total));
    if (status != cudaSuccess) return status;
    const dim3 query_grid(unsigned((f.tgt_len + kQueryRows - 1) / kQueryRows), unsigned(f.batch), unsigned(f.heads));
    query_gradient_kernel<DH><<<query_grid, kThreads, QueryPlan::total, stream>>>(args);
    const dim3 key_grid(unsigned((f.tgt_len + f.mem_len + kKeys - 1) / kKeys), unsigned(f.batch), unsigned(f.heads));
    key_gradient_kernel<DH><<<key_grid, kThreads, KeyPlan::total, stream>>>(args);
    return cudaGetLastError();
}

} // namespace

const char * launch_relative_attention_backward(const RelativeAttentionGradKernelArgs & args, void * stream_handle) {
    if (!args.forward.same_length || args.forward.first_position > args.forward.tgt_len - 1)
        return "relative attention backward: needs same_length and first_position <= T-1";
    auto stream = static_cast<cudaStream_t>(stream_handle);
    cudaError_t status = cudaErrorInvalidValue;
    switch (args.forward.head_dim) {
    case 16: status = launch<16>(args, stream); break;
    case 32: status = launch<32>(args, stream); break;
    case 64: status = launch<64>(args, stream); break;
    default: return "relative attention backward: head_dim must be 16, 32 or 64";
    }
    return kernels::error_text(status);
}

} // namespace studio
