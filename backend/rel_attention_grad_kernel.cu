// The backward of training's relative attention (rel_attention_grad_kernel.h), in three launches:
// 1. rowsum(out x grad_out) of every query row, and zeros in the position gradient's columns that no kept entry reads;
// 2. by key tiles, the tile's scores as the forward forms them (rel_attention_tile.cuh: four warps of 16 query rows
//    against 64 keys, the position term shifted into place), the probabilities from the forward's log-sum-exp, the
//    same keep bits, and the scores' gradient
//      ds = p x (kept x dp / keep - rowsum(out x grad_out)),   dp = grad_out . v,
//    which, scaled, is the gradient of both terms of each score. With the dropped probabilities it goes through shared
//    memory, where each warp reads its 16 keys' columns as a transposed operand: p' . grad_out (the values' gradient)
//    and ds' . (q + u) (the keys'), and from where the block writes it, shifted back, as the position scores' gradient;
// 3. by query tiles, ds . k (the gradient of q + u), reading ds back from the position gradient: row i's entry for key j
//    is its column j + T-1-i-first_position, so nothing is formed twice. Where asked, q's other gradient terms are
//    added as it is written, with the column sums that give the head biases' gradients: q's whole gradient in one pass.
#include "rel_attention_grad_kernel.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernel_common.cuh"
#include "rel_attention_tile.cuh"

namespace studio {

namespace {

using namespace attention_tile;
using kernels::pack_bf16;

constexpr int kLdKeys = kKeys + 8;                                           // pitch of a (64 queries, 64 keys) tile
constexpr size_t kKeysTileBytes = size_t(kQueryRows) * kLdKeys * 2;

/// Shared memory of the key kernel: q+u, q+v, the output's gradient and the tile's keys and values (64 rows each), the
/// tile's dropped probabilities and score gradients, the position band, each warp's position scores.
template <int DH> struct KeyPlan {
    using P = Pitch<DH>;
    static constexpr size_t rows64 = P::rows_bytes(64);
    static constexpr size_t band_offset = 5 * rows64 + 2 * kKeysTileBytes;
    static constexpr size_t pos_offset = band_offset + P::rows_bytes(kBand);
    static constexpr size_t total = pos_offset + kWarps * P::warp_band_bytes;
    static_assert(rows64 % 16 == 0 && kKeysTileBytes % 16 == 0 && P::warp_band_bytes % 16 == 0, "regions must stay 16-byte aligned");
};

/// The position gradient of query row `query` of (batch row b, head h), and its width P and leading zeros.
struct PositionGradient {
    bf16 * base;
    int64_t row_stride;
    int width, lead;
    __device__ PositionGradient(const RelativeAttentionGradKernelArgs & args, int b, int h) {
        const auto & f = args.forward;
        base = static_cast<bf16 *>(args.grad_position) + h * args.grad_position_stride[0] + b * args.grad_position_stride[1];
        row_stride = args.grad_position_stride[2];
        width = int(f.tgt_len + f.mem_len - f.first_position);
        lead = int(f.tgt_len - 1 - f.first_position);
    }
    /// Column of key j in row i (valid where 0 <= column < width).
    __device__ int column(int query, int key) const { return key + lead - query; }
    __device__ bf16 * row(int query) const { return base + int64_t(query) * row_stride; }
};

/// Launch 1: a thread per 8 dimensions of a row (rows in lse's (H,B,T) order).
template <int DH>
__global__ void out_dot_grad_kernel(const RelativeAttentionGradKernelArgs args) {
    constexpr int kChunks = DH / 8;   // threads of one row: 2, 4 or 8, whole groups of a warp
    const auto & f = args.forward;
    const int64_t thread = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, rows = f.heads * f.batch * f.tgt_len;
    const int64_t row = thread / kChunks;
    const int chunk = int(thread % kChunks);
    const bool live = row < rows;
    const int i = int(row % f.tgt_len), b = int(row / f.tgt_len % f.batch), h = int(row / f.tgt_len / f.batch);
    float sum = 0.0f;
    if (live) {
        float o[8], g[8];
        kernels::load8(static_cast<const bf16 *>(args.out) + h * f.out_stride[0] + b * f.out_stride[1] + int64_t(i) * f.out_stride[2] + chunk * 8, o);
        kernels::load8(static_cast<const bf16 *>(args.grad_out) + h * args.grad_out_stride[0] + b * args.grad_out_stride[1]
                           + int64_t(i) * args.grad_out_stride[2] + chunk * 8, g);
#pragma unroll
        for (int e = 0; e < 8; ++e) sum += o[e] * g[e];
    }
#pragma unroll
    for (int offset = kChunks / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (!live) return;
    if (chunk == 0) args.out_dot_grad[h * f.lse_stride[0] + b * f.lse_stride[1] + int64_t(i) * f.lse_stride[2]] = sum;
    const PositionGradient position(args, b, h);
    for (int column = chunk; column < position.lead; column += kChunks) position.row(i)[column] = __float2bfloat16(0.0f);
}

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

/// Launch 2: one block per (key tile, batch row, head), over the query tiles that see the tile.
template <int DH>
__global__ void __launch_bounds__(kThreads) key_gradient_kernel(const RelativeAttentionGradKernelArgs args) {
    using Plan = KeyPlan<DH>;
    constexpr int ld = Pitch<DH>::ld;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 * q_u = reinterpret_cast<bf16 *>(smem);
    bf16 * q_v = reinterpret_cast<bf16 *>(smem + Plan::rows64);
    bf16 * grad_out = reinterpret_cast<bf16 *>(smem + 2 * Plan::rows64);
    bf16 * keys = reinterpret_cast<bf16 *>(smem + 3 * Plan::rows64);
    bf16 * values = reinterpret_cast<bf16 *>(smem + 4 * Plan::rows64);
    bf16 * dropped = reinterpret_cast<bf16 *>(smem + 5 * Plan::rows64);                     // (64 queries, 64 keys)
    bf16 * score_grads = reinterpret_cast<bf16 *>(smem + 5 * Plan::rows64 + kKeysTileBytes); // (64 queries, 64 keys)
    bf16 * band = reinterpret_cast<bf16 *>(smem + Plan::band_offset);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    float * pos_scores = reinterpret_cast<float *>(smem + Plan::pos_offset + warp * Pitch<DH>::warp_band_bytes);
    const auto & f = args.forward;
    const int key0 = blockIdx.x * kKeys, b = blockIdx.y, h = blockIdx.z;
    const int T = int(f.tgt_len), M = int(f.mem_len), S = T + M;
    const bf16 * in_q_u = static_cast<const bf16 *>(f.q) + h * f.q_stride[0] + b * f.q_stride[1];
    const bf16 * in_q_v = static_cast<const bf16 *>(f.q_position) + h * f.q_stride[0] + b * f.q_stride[1];
    const bf16 * in_k = static_cast<const bf16 *>(f.k) + h * f.k_stride[0] + b * f.k_stride[1];
    const bf16 * in_v = static_cast<const bf16 *>(f.v) + h * f.v_stride[0] + b * f.v_stride[1];
    const bf16 * in_r = static_cast<const bf16 *>(f.r) + h * f.r_stride[0];
    const bf16 * in_grad_out = static_cast<const bf16 *>(args.grad_out) + h * args.grad_out_stride[0] + b * args.grad_out_stride[1];
    const PositionGradient position(args, b, h);
    load_rows_async<DH>(keys, in_k, f.k_stride[2], key0, kKeys, S);
    load_rows_async<DH>(values, in_v, f.v_stride[2], key0, kKeys, S);

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
        load_rows_async<DH>(q_u, in_q_u, f.q_stride[2], first_query, kQueryRows, T);
        load_rows_async<DH>(q_v, in_q_v, f.q_stride[2], first_query, kQueryRows, T);
        load_rows_async<DH>(grad_out, in_grad_out, args.grad_out_stride[2], first_query, kQueryRows, T);
        load_rows_async<DH>(band, in_r, f.r_stride[1], band_start(key0, first_query, T, int(f.first_position)), kBand, position.width);
        kernels::commit_async();
        kernels::wait_async<0>();
        __syncthreads();

        const int queries[2] = {first_query + warp * 16 + g, first_query + warp * 16 + g + 8};
        float lse2[2], out_dot_grad[2];
        row_statistics(args, b, h, queries, T, lse2, out_dot_grad);
        float scores[kKeys / 8][4], dp[kKeys / 8][4];
        warp_scores<DH>(scores, warp_q_u, warp_q_v, keys, warp_band, pos_scores, queries, key0, visible, scale, lane);
        kernels::warp_product(dp, warp_grad_out, values, ld, DH, lane);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const uint32_t keep = f.dropout.enabled ? keep_bits(seed, offset, dropout_row(b, h, f.heads, queries[half], T), S, key0, c,
                                                                f.dropout.keep_threshold)
                                                    : 0xFFFFFFFFu;
            const int row = warp * 16 + g + 8 * half;
#pragma unroll
            for (int n = 0; n < kKeys / 8; ++n) {
                float kept[2], ds[2];   // ds scaled: the gradient of both terms of the score
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float p = exp2f(scores[n][2 * half + e] - lse2[half]);
                    const bool is_kept = (keep >> (2 * n + e)) & 1u;
                    kept[e] = is_kept ? p * f.dropout.keep_scale : 0.0f;
                    ds[e] = p * ((is_kept ? dp[n][2 * half + e] * f.dropout.keep_scale : 0.0f) - out_dot_grad[half]) * f.scale;
                }
                *reinterpret_cast<uint32_t *>(dropped + row * kLdKeys + n * 8 + 2 * c) = pack_bf16(kept[0], kept[1]);
                *reinterpret_cast<uint32_t *>(score_grads + row * kLdKeys + n * 8 + 2 * c) = pack_bf16(ds[0], ds[1]);
            }
        }
        __syncthreads();
        // This warp's 16 keys: columns 16w .. 16w+15 of both tiles, against all 64 query rows.
        kernels::warp_product_by_rows<true>(grad_v, dropped + warp * 16, kLdKeys, grad_out, ld, kQueryRows, lane);
        kernels::warp_product_by_rows<true>(grad_k, score_grads + warp * 16, kLdKeys, q_u, ld, kQueryRows, lane);
        // This warp's rows of ds to the position gradient, shifted back: a row's 64 entries are 64 consecutive
        // columns, two a lane, in one 4-byte store where aligned (alike for the whole row: the lanes' columns are even apart).
        for (int r = 0; r < 16; ++r) {
            const int row = warp * 16 + r, query = first_query + row;
            if (query >= T) break;
            const int column = position.column(query, key0 + 2 * lane);
            const __nv_bfloat162 pair = *reinterpret_cast<const __nv_bfloat162 *>(score_grads + row * kLdKeys + 2 * lane);
            bf16 * out = position.row(query) + column;
            if (reinterpret_cast<uintptr_t>(out) % 4 == 0 && column >= 0 && column + 1 < position.width) {
                *reinterpret_cast<__nv_bfloat162 *>(out) = pair;
            } else {
                if (column >= 0 && column < position.width) out[0] = pair.x;
                if (column + 1 >= 0 && column + 1 < position.width) out[1] = pair.y;
            }
        }
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
            *reinterpret_cast<uint32_t *>(k_row + n * 8 + 2 * c) = pack_bf16(grad_k[n][2 * half], grad_k[n][2 * half + 1]);
            *reinterpret_cast<uint32_t *>(v_row + n * 8 + 2 * c) = pack_bf16(grad_v[n][2 * half], grad_v[n][2 * half + 1]);
        }
    }
}

/// Launch 3: one block per (query tile, batch row, head): (scale x ds) . k over the key tiles. Each warp reads its
/// 16 rows of ds from the position gradient straight into the product's operand registers (row i's entry for key j
/// at column j + T-1-i-first_position: rows start at any column, so element by element); the block shares the keys.
template <int DH>
__global__ void __launch_bounds__(kThreads) query_gradient_kernel(const RelativeAttentionGradKernelArgs args) {
    constexpr int ld = Pitch<DH>::ld;
    __shared__ __align__(16) bf16 keys[kKeys * ld];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const auto & f = args.forward;
    const int first_query = blockIdx.x * kQueryRows, b = blockIdx.y, h = blockIdx.z;
    const int T = int(f.tgt_len), M = int(f.mem_len), S = T + M;
    const bf16 * in_k = static_cast<const bf16 *>(f.k) + h * f.k_stride[0] + b * f.k_stride[1];
    const PositionGradient position(args, b, h);
    const int queries[2] = {first_query + warp * 16 + g, first_query + warp * 16 + g + 8};
    const bf16 * rows[2] = {position.row(min(queries[0], T - 1)), position.row(min(queries[1], T - 1))};
    float grad_q[DH / 8][4];
#pragma unroll
    for (int n = 0; n < DH / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) grad_q[n][e] = 0.0f;
    const int last_query = min(T, first_query + kQueryRows) - 1;
    const int first_key = f.same_length ? first_query : 0;
    const int last_key = min(S - 1, last_query + M);
    for (int key0 = first_key; key0 <= last_key; key0 += kKeys) {
        // The A operands of the four 16-key steps: rows g and g+8 at keys 2c, 2c+1 and 2c+8, 2c+9 of each step.
        uint32_t a[kKeys / 16][4];
#pragma unroll
        for (int step = 0; step < kKeys / 16; ++step)
#pragma unroll
            for (int part = 0; part < 4; ++part) {
                const int half = part % 2, key = key0 + step * 16 + 2 * c + 8 * (part / 2);
                const int column = position.column(queries[half], key);
                const bool live = queries[half] < T;
                const bf16 low = live && column >= 0 && column < position.width ? rows[half][column] : __float2bfloat16(0.0f);
                const bf16 high = live && column + 1 >= 0 && column + 1 < position.width ? rows[half][column + 1] : __float2bfloat16(0.0f);
                const __nv_bfloat162 pair = __halves2bfloat162(low, high);
                a[step][part] = *reinterpret_cast<const uint32_t *>(&pair);
            }
        __syncthreads();
        load_rows<DH>(keys, in_k, f.k_stride[2], key0, kKeys, S);
        __syncthreads();
#pragma unroll
        for (int step = 0; step < kKeys / 16; ++step)
#pragma unroll
            for (int n = 0; n < DH / 8; ++n) {
                uint32_t bfrag[2];
                kernels::load_b_transposed(bfrag, keys + step * 16 * ld + n * 8, ld, lane);
                kernels::mma(grad_q[n], a[step], bfrag);
            }
    }
    // Column sums of this lane's two rows: q + u's own gradient (0) and the first added term (1).
    float sums[2][DH / 8][2] = {};
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        if (queries[half] >= T) continue;
        const int64_t query = queries[half];
        bf16 * row = static_cast<bf16 *>(args.grad_q) + h * args.grad_q_stride[0] + b * args.grad_q_stride[1] + query * args.grad_q_stride[2];
        const bf16 * terms[2];
#pragma unroll
        for (int t = 0; t < 2; ++t) {
            const auto & stride = args.grad_q_term_stride[t];
            terms[t] = args.grad_q_terms[t] ? static_cast<const bf16 *>(args.grad_q_terms[t]) + h * stride[0] + b * stride[1] + query * stride[2]
                                            : nullptr;
        }
#pragma unroll
        for (int n = 0; n < DH / 8; ++n) {
            float total[2] = {grad_q[n][2 * half], grad_q[n][2 * half + 1]};
            sums[0][n][0] += total[0];
            sums[0][n][1] += total[1];
#pragma unroll
            for (int t = 0; t < 2; ++t) {
                if (!terms[t]) continue;
                const float2 term = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(terms[t] + n * 8 + 2 * c));
                if (t == 0) {
                    sums[1][n][0] += term.x;
                    sums[1][n][1] += term.y;
                }
                total[0] += term.x;
                total[1] += term.y;
            }
            *reinterpret_cast<uint32_t *>(row + n * 8 + 2 * c) = pack_bf16(total[0], total[1]);
        }
    }
    if (!args.grad_q_column_sums) return;
    // Over the warp's 16 rows (lanes of one c hold one column pair), then over the warps in a fixed order.
    __shared__ float warp_sums[kWarps][2][DH];
#pragma unroll
    for (int k = 0; k < 2; ++k)
#pragma unroll
        for (int n = 0; n < DH / 8; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                float x = sums[k][n][e];
                x += __shfl_xor_sync(0xffffffffu, x, 4);
                x += __shfl_xor_sync(0xffffffffu, x, 8);
                x += __shfl_xor_sync(0xffffffffu, x, 16);
                if (g == 0) warp_sums[warp][k][n * 8 + 2 * c + e] = x;
            }
    __syncthreads();
    float * out = args.grad_q_column_sums + ((int64_t(b) * gridDim.x + blockIdx.x) * f.heads + h) * 2 * DH;
    for (int i = threadIdx.x; i < 2 * DH; i += kThreads) {
        float x = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) x += warp_sums[w][i / DH][i % DH];
        out[i] = x;
    }
}

template <int DH>
cudaError_t launch(const RelativeAttentionGradKernelArgs & args, cudaStream_t stream, RelativeAttentionBackwardLaunches launches) {
    const auto & f = args.forward;
    if (launches != RelativeAttentionBackwardLaunches::queries) {
        cudaError_t status = cudaFuncSetAttribute(key_gradient_kernel<DH>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(KeyPlan<DH>::total));
        if (status != cudaSuccess) return status;
        const int64_t threads = f.heads * f.batch * f.tgt_len * (DH / 8);
        out_dot_grad_kernel<DH><<<unsigned((threads + 255) / 256), 256, 0, stream>>>(args);
        const dim3 key_grid(unsigned((f.tgt_len + f.mem_len + kKeys - 1) / kKeys), unsigned(f.batch), unsigned(f.heads));
        key_gradient_kernel<DH><<<key_grid, kThreads, KeyPlan<DH>::total, stream>>>(args);
    }
    if (launches != RelativeAttentionBackwardLaunches::rows_and_keys) {
        static_assert(kQueryRows == 64, "relative_attention_query_tiles counts tiles of 64 rows");
        const dim3 query_grid(unsigned(relative_attention_query_tiles(f.tgt_len)), unsigned(f.batch), unsigned(f.heads));
        query_gradient_kernel<DH><<<query_grid, kThreads, 0, stream>>>(args);
    }
    return cudaGetLastError();
}

} // namespace

const char * launch_relative_attention_backward(const RelativeAttentionGradKernelArgs & args, void * stream_handle,
                                                RelativeAttentionBackwardLaunches launches) {
    if (!args.forward.same_length || args.forward.first_position > args.forward.tgt_len - 1)
        return "relative attention backward: needs same_length and first_position <= T-1";
    auto stream = static_cast<cudaStream_t>(stream_handle);
    cudaError_t status = cudaErrorInvalidValue;
    switch (args.forward.head_dim) {
    case 16: status = launch<16>(args, stream, launches); break;
    case 32: status = launch<32>(args, stream, launches); break;
    case 64: status = launch<64>(args, stream, launches); break;
    default: return "relative attention backward: head_dim must be 16, 32 or 64";
    }
    return kernels::error_text(status);
}

} // namespace studio
