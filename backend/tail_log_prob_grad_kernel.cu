// One kernel, launched twice with the roles of its two matrices swapped. A block owns a tile of 64 items of one side
// (hidden rows, or words) and walks tiles of 64 of the other; each of its 4 warps owns 16 items. The host lays both
// sides out with one more column (tail_laid_out_columns): ones beside the hidden rows, each word's bias beside its
// weights, so the tensor cores form each logit z = h . w + b whole (mma.sync m16n8k16, fp32 accumulation). Of the
// logit's gradient g = grad_out(row) x ([word is the row's target] - p), p = exp(z - lse(row)), the kernels form the
// dense part only, at one fused multiply-add and one exp2 a logit: p, rounded to bf16, times the other side's tile
// into the owned items' fp32 sums in registers (the accumulator fragments of two 8-column tiles of p are exactly the A
// operand of the next product). The rest goes around the loop:
// - rows-owning: dh(row) = grad_out(row) x (w(target) - sum_w p w): the sum is scaled at the end, and split 0 adds the
//   target's word;
// - words-owning: each walked row's p is scaled by its grad_out, and the column of ones gives the bias's gradient
//   in the same product; the targets' own terms (grad_out(row) x [h(row), 1] at each row's target word) are put in
//   the gradients by the host before the launch.
// The walk is split over blocks when the owned tiles alone would not fill the GPU; split blocks add their results
// atomically. (The first form took the target's term, the bias and grad_out per logit: about 3.4 logits a clock per SM.)
#include "tail_log_prob_grad_kernel.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernel_common.cuh"
#include "tail_log_prob_kernel.h"   // the layout

namespace studio {

namespace {

using namespace kernels;

constexpr int kTile = 64;                 // items of a tile, either side
constexpr int kThreads = 128;             // 4 warps x 16 owned items
constexpr int64_t kTargetBlocks = 2048;

int64_t splits_for(int64_t owned_tiles, int64_t walked_tiles) {
    const int64_t wanted = (kTargetBlocks + owned_tiles - 1) / owned_tiles;
    return wanted < 1 ? 1 : wanted > walked_tiles ? walked_tiles : wanted;
}

/// Shared memory of one block: the owned tile, two buffers of the walked side's tiles (one read while the next one
/// arrives by cp.async) and of the walked rows' log-sum-exps and upstream gradients (words-owning).
template <int kDim> struct Plan {
    static constexpr int kColumns = int(tail_laid_out_columns(kDim));          // the rows, then ones or the bias at kDim
    static constexpr int kPitch = kColumns + 8;                                 // bf16 elements, 16-byte multiple
    static constexpr int kTileBytes = kTile * kPitch * 2;
    static constexpr int kItemBytes = kTile * (4 + 4);
    static constexpr int kBytes = 3 * kTileBytes + 2 * kItemBytes;
};

/// kOwnWords: the block owns words (weight and bias gradients) and walks the rows; else it owns rows (the hidden
/// rows' gradient) and walks the words.
template <int kDim, bool kOwnWords>
__global__ void __launch_bounds__(kThreads) grad_kernel(const TailLogProbGradKernelArgs args, int64_t splits) {
    using P = Plan<kDim>;
    constexpr int kPitch = P::kPitch, kColumns = P::kColumns;
    constexpr int kOut = kOwnWords ? kDim / 8 + 1 : kDim / 8;                   // 8-column tiles of the owned sums
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 * owned_tile = reinterpret_cast<bf16 *>(smem);
    bf16 * walked_tiles = owned_tile + kTile * kPitch;                           // [2][kTile * kPitch]
    float * items = reinterpret_cast<float *>(smem + 3 * P::kTileBytes);         // [2][lse kTile, upstream kTile]
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const bf16 * hidden = static_cast<const bf16 *>(args.hidden);
    const bf16 * weight = static_cast<const bf16 *>(args.weight);
    const int64_t owned_count = kOwnWords ? args.words : args.rows, walked_count = kOwnWords ? args.rows : args.words;
    const int64_t first_owned = int64_t(blockIdx.x) * kTile;
    const int64_t walked_tiles_count = (walked_count + kTile - 1) / kTile, per_split = (walked_tiles_count + splits - 1) / splits * kTile;
    const int64_t walk_begin = int64_t(blockIdx.y) * per_split;
    const int64_t walk_end = walk_begin + per_split < walked_count ? walk_begin + per_split : walked_count;
    if (first_owned >= owned_count || walk_begin >= walk_end) return;

    // Rows first .. first+63 of a side into a tile by cp.async, zero past the side's count.
    auto issue_rows = [&](bf16 * tile, bool words, int64_t first) {
        const bf16 * src = words ? weight : hidden;
        const int64_t limit = words ? args.words : args.rows;
        for (int idx = threadIdx.x; idx < kTile * (kColumns / 8); idx += kThreads) {
            const int r = idx / (kColumns / 8), k = (idx % (kColumns / 8)) * 8;
            const bool present = first + r < limit;
            copy_16_async(tile + r * kPitch + k, present ? src + (first + r) * kColumns + k : src, present ? 16 : 0);
        }
    };
    // Words-owning: the walked rows' log-sum-exps and upstream gradients, 16 bytes a copy, zero past the rows' count
    // (a zero upstream gradient drops those rows).
    auto issue_items = [&](float * dst, int64_t first) {
        if constexpr (kOwnWords) {
            for (int chunk = threadIdx.x; chunk < 2 * kTile / 4; chunk += kThreads) {
                const bool upstream = chunk >= kTile / 4;
                const int64_t item = first + int64_t(chunk % (kTile / 4)) * 4, left = walked_count - item;
                const int bytes = left <= 0 ? 0 : left >= 4 ? 16 : int(left) * 4;
                const float * from = upstream ? args.grad_out : args.lse;
                copy_16_async(dst + chunk * 4, bytes ? from + item : from, bytes);
            }
        }
    };
    issue_rows(owned_tile, kOwnWords, first_owned);
    issue_rows(walked_tiles, !kOwnWords, walk_begin);
    issue_items(items, walk_begin);
    commit_async();

    // Rows-owning: the lane's two owned rows (g and g+8 of its warp's 16), their log-sum-exps in log2 units.
    int64_t owned[2];
    bool owned_valid[2];
    float owned_lse2[2] = {0.0f, 0.0f};
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        owned[half] = first_owned + warp * 16 + g + 8 * half;
        owned_valid[half] = owned[half] < owned_count;
        if (!kOwnWords && owned_valid[half]) owned_lse2[half] = args.lse[owned[half]] * kLog2e;
    }
    float acc[kOut][4];
#pragma unroll
    for (int n = 0; n < kOut; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;

    int buffer = 0;
    for (int64_t first_walked = walk_begin; first_walked < walk_end; first_walked += kTile, buffer ^= 1) {
        if (first_walked + kTile < walk_end) {
            issue_rows(walked_tiles + (buffer ^ 1) * kTile * kPitch, !kOwnWords, first_walked + kTile);
            issue_items(items + (buffer ^ 1) * 2 * kTile, first_walked + kTile);
            commit_async();
            wait_async<1>();
        } else {
            wait_async<0>();
        }
        __syncthreads();
        const bf16 * walked_tile = walked_tiles + buffer * kTile * kPitch;
        float z[kTile / 8][4];
        warp_product(z, owned_tile + warp * 16 * kPitch, walked_tile, kPitch, kColumns, lane);   // (16 owned, 64 walked)
        if constexpr (kOwnWords) {
            // Column j of the tile is walked row j: its log-sum-exp and upstream gradient, one pair for both halves.
            const float * walked_lse = items + buffer * 2 * kTile, * walked_upstream = walked_lse + kTile;
#pragma unroll
            for (int n = 0; n < kTile / 8; ++n) {
                const float2 lse = *reinterpret_cast<const float2 *>(walked_lse + n * 8 + 2 * c);
                const float2 upstream = *reinterpret_cast<const float2 *>(walked_upstream + n * 8 + 2 * c);
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    z[n][e] = fast_exp2(fmaf(z[n][e], kLog2e, -(e % 2 ? lse.y : lse.x) * kLog2e)) * (e % 2 ? upstream.y : upstream.x);
            }
        } else {
#pragma unroll
            for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) z[n][e] = fast_exp2(fmaf(z[n][e], kLog2e, -owned_lse2[e / 2]));
            // Past the words the tile's rows are zero, and so would be their products; but exp(0 - lse) can be
            // infinite where every logit is very negative, and infinity x 0 is not.
            const int walked_here = walk_end - first_walked < kTile ? int(walk_end - first_walked) : kTile;
            if (walked_here < kTile) {
#pragma unroll
                for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        if (n * 8 + 2 * c + e % 2 >= walked_here) z[n][e] = 0.0f;
            }
        }
        warp_product_from_accumulators(acc, z, walked_tile, kPitch, lane);   // acc (16 owned x 8 kOut) += p (16 x 64) . walked (64 x 8 kOut)
        __syncthreads();   // the next copies overwrite this buffer
    }

    // The owned items' gradients: rows-owning, grad_out x (w(target) - sum); words-owning, minus the sums (the
    // targets' terms are there already). Split blocks add atomically; a whole walk is the only writer of its items.
    auto add = [&](float * slot, float value) {
        if (splits > 1) atomicAdd(slot, value);
        else if (kOwnWords) *slot += value;
        else *slot = value;
    };
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        if (!owned_valid[half]) continue;
        float upstream = 0.0f;
        const bf16 * target_word = nullptr;
        if (!kOwnWords) {
            upstream = args.grad_out[owned[half]];
            const int64_t target = args.target[owned[half]];
            if (blockIdx.y == 0 && target >= 0 && target < args.words) target_word = weight + target * kColumns;
        }
        float * out = (kOwnWords ? args.grad_weight : args.grad_hidden) + owned[half] * args.dim;
#pragma unroll
        for (int n = 0; n < kDim / 8; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int column = n * 8 + 2 * c + e;
                if (column >= args.dim) continue;
                const float sum = acc[n][2 * half + e];
                add(out + column, kOwnWords ? -sum : upstream * ((target_word ? __bfloat162float(target_word[column]) : 0.0f) - sum));
            }
        if (kOwnWords && c == 0) add(args.grad_bias + owned[half], -acc[kOut - 1][2 * half]);   // column kDim: the ones'
    }
}

template <int kDim>
cudaError_t launch_both(const TailLogProbGradKernelArgs & args, cudaStream_t stream) {
    const int64_t row_tiles = (args.rows + kTile - 1) / kTile, word_tiles = (args.words + kTile - 1) / kTile;
    const int64_t row_splits = splits_for(row_tiles, word_tiles), word_splits = splits_for(word_tiles, row_tiles);
    constexpr int bytes = Plan<kDim>::kBytes;
    for (auto kernel : {grad_kernel<kDim, false>, grad_kernel<kDim, true>}) {
        const cudaError_t status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
        if (status != cudaSuccess) return status;
    }
    grad_kernel<kDim, false><<<dim3(unsigned(row_tiles), unsigned(row_splits)), kThreads, bytes, stream>>>(args, row_splits);
    grad_kernel<kDim, true><<<dim3(unsigned(word_tiles), unsigned(word_splits)), kThreads, bytes, stream>>>(args, word_splits);
    return cudaGetLastError();
}

} // namespace

bool tail_log_prob_grad_kernel_supports(int64_t dim) { return dim > 0 && dim <= 128 && dim % 8 == 0; }


const char * launch_tail_log_prob_grad(const TailLogProbGradKernelArgs & args, void * stream_handle) {
    if (args.rows == 0 || args.words == 0) return nullptr;
    if (!tail_log_prob_grad_kernel_supports(args.dim)) return "tail log-prob gradient kernel: dim must be a multiple of 8 up to 128";
    if (!aligned_16(args.hidden) || !aligned_16(args.weight) || !aligned_16(args.lse) || !aligned_16(args.grad_out))
        return "tail log-prob gradient kernel: every array and hidden row must start 16-byte aligned";
    auto stream = static_cast<cudaStream_t>(stream_handle);
    const int64_t width = tail_width(args.dim);
    cudaError_t status = width == 16 ? launch_both<16>(args, stream) : width == 32 ? launch_both<32>(args, stream)
                         : width == 64 ? launch_both<64>(args, stream) : launch_both<128>(args, stream);
    return error_text(status);
}

} // namespace studio
