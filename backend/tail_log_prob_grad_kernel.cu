// One kernel, launched twice with the roles of its two matrices swapped. A block owns a tile of 64 items of one side
// (hidden rows, or words) and walks tiles of 64 of the other; each of its 4 warps owns 16 items. For every pair it
// forms the logit z = h . w + b on the tensor cores (mma.sync m16n8k16, fp32 accumulation, the inner dimension
// zero-padded to kDim), then the logit's gradient g = grad_out(row) x ([w is the row's target] - exp(z - lse(row))),
// rounds g to bf16 as the unfused path's bf16 logit gradient was, and adds g . (the other side's tile) into the owned
// items' fp32 gradients in registers: the accumulator fragments of two 8-column tiles of g are exactly the A operand
// of the next product. Word-owning blocks also sum g into the bias's gradient. The walk is split over blocks when the
// owned tiles alone would not fill the GPU; split blocks add their results atomically, whole walks store them.
#include "tail_log_prob_grad_kernel.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernel_common.cuh"

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
/// arrives by cp.async) and of their items' own values.
template <int kDim> struct Plan {
    static constexpr int kPitch = kDim + 8;                                      // bf16 elements, 16-byte multiple
    static constexpr int kTileBytes = kTile * kPitch * 2;
    static constexpr int kItemBytes = kTile * (8 + 4 + 4);                       // rows walked: target, lse, upstream
    static constexpr int kBytes = 3 * kTileBytes + 2 * kItemBytes;
};

/// kOwnWords: the block owns words (weight and bias gradients) and walks the rows; else it owns rows (the hidden
/// rows' gradient) and walks the words.
template <int kDim, bool kOwnWords>
__global__ void __launch_bounds__(kThreads) grad_kernel(const TailLogProbGradKernelArgs args, int64_t splits) {
    using P = Plan<kDim>;
    constexpr int kPitch = P::kPitch;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 * owned_tile = reinterpret_cast<bf16 *>(smem);
    bf16 * walked_tiles = owned_tile + kTile * kPitch;                           // [2][kTile * kPitch]
    unsigned char * items = smem + 3 * P::kTileBytes;                            // [2][kItemBytes]
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const bf16 * hidden = static_cast<const bf16 *>(args.hidden);
    const bf16 * weight = static_cast<const bf16 *>(args.weight);
    const bf16 * bias = static_cast<const bf16 *>(args.bias);
    const int64_t owned_count = kOwnWords ? args.words : args.rows, walked_count = kOwnWords ? args.rows : args.words;
    const int64_t first_owned = int64_t(blockIdx.x) * kTile;
    const int64_t walked_tiles_count = (walked_count + kTile - 1) / kTile, per_split = (walked_tiles_count + splits - 1) / splits * kTile;
    const int64_t walk_begin = int64_t(blockIdx.y) * per_split;
    const int64_t walk_end = walk_begin + per_split < walked_count ? walk_begin + per_split : walked_count;
    if (first_owned >= owned_count || walk_begin >= walk_end) return;

    // Rows first .. first+63 of a side into a tile by cp.async, zero past the side's count; columns past dim are
    // zeroed once, below, and never written again.
    auto issue_rows = [&](bf16 * tile, bool words, int64_t first) {
        const bf16 * src = words ? weight : hidden;
        const int64_t stride = words ? args.dim : args.hidden_stride, limit = words ? args.words : args.rows;
        for (int idx = threadIdx.x; idx < kTile * (kDim / 8); idx += kThreads) {
            const int r = idx / (kDim / 8), k = (idx % (kDim / 8)) * 8;
            if (k >= args.dim) continue;
            const bool present = first + r < limit;
            copy_16_async(tile + r * kPitch + k, present ? src + (first + r) * stride + k : src, present ? 16 : 0);
        }
    };
    // The walked items' own values, 16 bytes a copy, zero past the side's count: rows-owning, the words' bf16
    // biases; words-owning, the rows' int64 targets, fp32 log-sum-exps and upstream gradients.
    auto issue_items = [&](unsigned char * dst, int64_t first) {
        auto chunks = [&](unsigned char * to, const void * from, int element_bytes) {
            const int per_chunk = 16 / element_bytes;
            for (int chunk = threadIdx.x; chunk < kTile / per_chunk; chunk += kThreads) {
                const int64_t item = first + int64_t(chunk) * per_chunk, left = walked_count - item;
                const int bytes = left <= 0 ? 0 : left >= per_chunk ? 16 : int(left) * element_bytes;
                copy_16_async(to + chunk * 16, bytes ? static_cast<const unsigned char *>(from) + item * element_bytes : from, bytes);
            }
        };
        if (kOwnWords) {
            chunks(dst, args.target, 8);
            chunks(dst + kTile * 8, args.lse, 4);
            chunks(dst + kTile * 12, args.grad_out, 4);
        } else {
            chunks(dst, args.bias, 2);
        }
    };
    if (args.dim < kDim) {
        for (int idx = threadIdx.x; idx < 3 * kTile * (kDim / 8); idx += kThreads) {
            const int tile = idx / (kTile * (kDim / 8)), r = (idx / (kDim / 8)) % kTile, k = (idx % (kDim / 8)) * 8;
            if (k >= args.dim) *reinterpret_cast<uint4 *>(owned_tile + tile * kTile * kPitch + r * kPitch + k) = make_uint4(0, 0, 0, 0);
        }
    }
    issue_rows(owned_tile, kOwnWords, first_owned);
    issue_rows(walked_tiles, !kOwnWords, walk_begin);
    issue_items(items, walk_begin);
    commit_async();

    // The lane's two owned items: rows g and g+8 of its warp's 16.
    int64_t owned[2], owned_target[2] = {-1, -1};
    bool owned_valid[2];
    float owned_lse[2] = {0.0f, 0.0f}, owned_grad[2] = {0.0f, 0.0f}, owned_bias[2] = {0.0f, 0.0f}, bias_grad[2] = {0.0f, 0.0f};
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        owned[half] = first_owned + warp * 16 + g + 8 * half;
        owned_valid[half] = owned[half] < owned_count;
        if (!owned_valid[half]) continue;
        if (kOwnWords) {
            owned_bias[half] = __bfloat162float(bias[owned[half]]);
        } else {
            owned_target[half] = args.target[owned[half]];
            owned_lse[half] = args.lse[owned[half]];
            owned_grad[half] = args.grad_out[owned[half]];
        }
    }
    float acc[kDim / 8][4];
#pragma unroll
    for (int n = 0; n < kDim / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;

    int buffer = 0;
    for (int64_t first_walked = walk_begin; first_walked < walk_end; first_walked += kTile, buffer ^= 1) {
        if (first_walked + kTile < walk_end) {
            issue_rows(walked_tiles + (buffer ^ 1) * kTile * kPitch, !kOwnWords, first_walked + kTile);
            issue_items(items + (buffer ^ 1) * P::kItemBytes, first_walked + kTile);
            commit_async();
            wait_async<1>();
        } else {
            wait_async<0>();
        }
        __syncthreads();
        const bf16 * walked_tile = walked_tiles + buffer * kTile * kPitch;
        const unsigned char * walked_items = items + buffer * P::kItemBytes;
        const int64_t * walked_target = reinterpret_cast<const int64_t *>(walked_items);
        const float * walked_lse = reinterpret_cast<const float *>(walked_items + kTile * 8);
        const float * walked_grad = reinterpret_cast<const float *>(walked_items + kTile * 12);
        const bf16 * walked_bias = reinterpret_cast<const bf16 *>(walked_items);
        // In 32-bit indices within the tiles: the walked items present, and where each owned row's target lies.
        const int walked_here = walk_end - first_walked < kTile ? int(walk_end - first_walked) : kTile;
        int target_of_owned[2];   // rows-owning: the walked word that is the owned row's target, or -1
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int64_t target = owned_target[half] - first_walked;
            target_of_owned[half] = !kOwnWords && target >= 0 && target < kTile ? int(target) : -1;
        }
        float z[kTile / 8][4];
        warp_product(z, owned_tile + warp * 16 * kPitch, walked_tile, kPitch, kDim, lane);   // (16 owned, 64 walked)
#pragma unroll
        for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int half = e / 2, j = n * 8 + 2 * c + e % 2;             // owned item `half`, walked item j
                const bool hit = kOwnWords ? walked_target[j] == owned[half] : j == target_of_owned[half];
                const float lse = kOwnWords ? walked_lse[j] : owned_lse[half];
                const float upstream = kOwnWords ? walked_grad[j] : owned_grad[half];
                const float logit = z[n][e] + (kOwnWords ? owned_bias[half] : __bfloat162float(walked_bias[j]));
                const float grad = upstream * ((hit ? 1.0f : 0.0f) - __expf(logit - lse));
                z[n][e] = owned_valid[half] && j < walked_here ? grad : 0.0f;
                if (kOwnWords) bias_grad[half] += z[n][e];
            }
        warp_product_from_accumulators(acc, z, walked_tile, kPitch, lane);   // acc (16 owned x kDim) += g (16 x 64) . walked (64 x kDim)
        __syncthreads();   // the next copies overwrite this buffer
    }

    float * out = kOwnWords ? args.grad_weight : args.grad_hidden;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        if (!owned_valid[half]) continue;
#pragma unroll
        for (int n = 0; n < kDim / 8; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int column = n * 8 + 2 * c + e;
                if (column >= args.dim) continue;
                float * slot = out + owned[half] * args.dim + column;
                if (splits > 1) atomicAdd(slot, acc[n][2 * half + e]);
                else *slot = acc[n][2 * half + e];
            }
    }
    if (kOwnWords) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            for (int offset = 1; offset < 4; offset *= 2) bias_grad[half] += __shfl_xor_sync(0xffffffffu, bias_grad[half], offset);
            if (c == 0 && owned_valid[half]) {
                if (splits > 1) atomicAdd(args.grad_bias + owned[half], bias_grad[half]);
                else args.grad_bias[owned[half]] = bias_grad[half];
            }
        }
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
    if (!aligned_16(args.hidden, {args.hidden_stride * 2}) || !aligned_16(args.weight) || !aligned_16(args.bias) || !aligned_16(args.target)
        || !aligned_16(args.lse) || !aligned_16(args.grad_out))
        return "tail log-prob gradient kernel: every array and hidden row must start 16-byte aligned";
    auto stream = static_cast<cudaStream_t>(stream_handle);
    cudaError_t status = args.dim <= 16 ? launch_both<16>(args, stream) : args.dim <= 32 ? launch_both<32>(args, stream)
                         : args.dim <= 64 ? launch_both<64>(args, stream) : launch_both<128>(args, stream);
    return error_text(status);
}

} // namespace studio
