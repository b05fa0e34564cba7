// Device code that the relative-attention kernels share (nvcc only): rel_attention_kernel.cu's forward, at inference
// and in training, and rel_attention_grad_kernel.cu's two backward kernels. A block holds 64 query rows in four warps
// of 16 and walks tiles of 64 keys; for each tile a warp forms its scores on the tensor cores, the position term
// (q+v).r over the 80 distances its rows and keys span and the content term (q+u).k, and joins them by the relative
// shift, an index into the band row by row. Training's attention dropout draws its keep bits from a counter-based
// generator (Philox4x32-10) keyed by each entry's row and column, so that the backward kernels draw the same bits
// without storing them.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernel_common.cuh"
#include "rel_attention_kernel.h"   // AttentionDropout

namespace studio {
namespace attention_tile {

using bf16 = __nv_bfloat16;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kQueryRows = 16 * kWarps;          // query rows of a block
constexpr int kKeys = 64;                        // keys of a tile
constexpr int kBand = kQueryRows + kKeys;        // position rows a block's tile spans (127, rounded to 128)
constexpr int kWarpBand = 16 + kKeys;            // position rows a warp's tile spans (79, rounded to 80)
using kernels::kLog2e;

/// bf16 rows in shared memory are padded by 16 bytes, so that the 8 rows an ldmatrix reads fall in distinct banks and
/// stay 16-byte aligned; a warp's fp32 position band likewise by 16 bytes.
template <int DH> struct Pitch {
    static constexpr int ld = DH + 8;
    static constexpr int ld_pos = kWarpBand + 4;
    static constexpr size_t rows_bytes(int rows) { return size_t(rows) * ld * 2; }
    static constexpr size_t warp_band_bytes = size_t(16) * ld_pos * 4;
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
        *reinterpret_cast<uint4 *>(dst + r * Pitch<DH>::ld + c) = value;
    }
}

/// load_rows by cp.async: every copy of the call in flight at once, none through registers; the rows are there after
/// kernels::commit_async(), kernels::wait_async<0>() and a barrier. src's rows must be 16-byte aligned.
template <int DH>
__device__ void load_rows_async(bf16 * dst, const bf16 * src, int64_t row_stride, int first_row, int rows, int limit) {
    constexpr int chunks = DH / 8;
    for (int idx = threadIdx.x; idx < rows * chunks; idx += kThreads) {
        const int r = idx / chunks, c = (idx % chunks) * 8, row = first_row + r;
        const bool inside = row >= 0 && row < limit;   // else 16 zero bytes, read from nowhere
        kernels::copy_16_async(dst + r * Pitch<DH>::ld + c, inside ? src + int64_t(row) * row_stride + c : src, inside ? 16 : 0);
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
        load_rows<DH>(dst + memory_rows * Pitch<DH>::ld, segment, segment_stride, first_row + memory_rows - split, rows - memory_rows, limit - split);
}

/// Which keys a query sees: key j (0..S-1, memory first) from query i (0..T-1) when j <= i+M and, with same_length,
/// j >= i.
struct Visibility {
    int tgt_len, mem_len;
    bool same_length;
    __device__ bool operator()(int query, int key) const {
        return query < tgt_len && key < tgt_len + mem_len && key <= query + mem_len && (!same_length || key >= query);
    }
};

/// The first row of the position band of a block's 64 queries from first_query and the keys key0..key0+63: row
/// key + T-1 - query of the layer's position keys, counted from their row `first_position`.
__device__ inline int band_start(int key0, int first_query, int tgt_len, int first_position) {
    return key0 + tgt_len - kQueryRows - first_query - first_position;
}

/// A warp's scores for a tile (16 query rows x 64 keys from key0), scaled and in the accumulators' layout:
/// ((q+u).k + (q+v).r) x scale where the key is visible, else -inf. warp_q_u, warp_q_v: the warp's 16 rows;
/// keys: the tile's 64; warp_band: the warp's 80 position rows (the block's band from row 48 - 16 x warp);
/// pos_scores: the warp's own fp32 scratch (16 x 80).
template <int DH>
__device__ void warp_scores(float (&scores)[kKeys / 8][4], const bf16 * warp_q_u, const bf16 * warp_q_v, const bf16 * keys,
                            const bf16 * warp_band, float * pos_scores, const int (&queries)[2], int key0, const Visibility & visible,
                            float scale, int lane) {
    using P = Pitch<DH>;
    const int g = lane / 4, c = lane % 4;
    // The position band (16 x 80) into shared memory, for the shift's per-row reads.
    {
        float position[kWarpBand / 8][4];
        kernels::warp_product(position, warp_q_v, warp_band, P::ld, DH, lane);
#pragma unroll
        for (int n = 0; n < kWarpBand / 8; ++n) {
            *reinterpret_cast<float2 *>(pos_scores + g * P::ld_pos + n * 8 + 2 * c) = make_float2(position[n][0], position[n][1]);
            *reinterpret_cast<float2 *>(pos_scores + (g + 8) * P::ld_pos + n * 8 + 2 * c) = make_float2(position[n][2], position[n][3]);
        }
    }
    __syncwarp();
    kernels::warp_product(scores, warp_q_u, keys, P::ld, DH, lane);
    // Row i's key column j sits at band column j - i + 15.
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int i = g + 8 * half;
#pragma unroll
        for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int column = n * 8 + 2 * c + e;
                scores[n][2 * half + e] = visible(queries[half], key0 + column)
                                              ? (scores[n][2 * half + e] + pos_scores[i * P::ld_pos + column - i + 15]) * scale
                                              : -INFINITY;
            }
    }
    __syncwarp();   // the band's reads are done before the next tile's writes
}

/// Philox4x32-10 (Salmon et al. 2011): four 32-bit random words of a 128-bit counter under a 64-bit key.
__device__ inline uint4 philox(uint4 counter, uint2 key) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            key.x += 0x9E3779B9u;
            key.y += 0xBB67AE85u;
        }
        const uint32_t hi0 = __umulhi(0xD2511F53u, counter.x), lo0 = 0xD2511F53u * counter.x;
        const uint32_t hi1 = __umulhi(0xCD9E8D57u, counter.z), lo1 = 0xCD9E8D57u * counter.z;
        counter = make_uint4(hi1 ^ counter.y ^ key.x, lo1, hi0 ^ counter.w ^ key.y, lo0);
    }
    return counter;
}

/// The generator's seed and offset for this call: from the forward's record (rng_in, the backward), from the
/// generator's device counters (a captured graph: read at replay), or as given.
__device__ inline void dropout_seed_offset(const AttentionDropout & dropout, uint64_t & seed, uint64_t & offset) {
    if (dropout.rng_in) {
        seed = uint64_t(dropout.rng_in[0]);
        offset = uint64_t(dropout.rng_in[1]);
    } else if (dropout.seed_ptr) {
        seed = uint64_t(*dropout.seed_ptr);
        offset = uint64_t(*dropout.offset_ptr) + dropout.offset_intragraph;
    } else {
        seed = dropout.seed;
        offset = dropout.offset;
    }
}

/// The row whose entries query i of (batch row b, head h) draws: (b x H + h) x T + i, the row's place in a (B,H,T,S)
/// layout.
__device__ inline uint64_t dropout_row(int b, int h, int64_t heads, int query, int tgt_len) {
    return (uint64_t(b) * uint64_t(heads) + uint64_t(h)) * uint64_t(tgt_len) + uint64_t(query);
}

/// The keep bits of one lane's 16 entries of a query row (dropout_row) of `keys` keys, in the tile of 64 keys that
/// holds `key`: bit 2n+e for the tile's column 8n + 2c + e, c = lane % 4 (the accumulators' layout). Each entry draws
/// 16 bits, kept below `threshold`. The counter is the call's offset / 4 (the generator reserves 4 per call) and the
/// entry's place (row, tile, c, half), so that no two entries of any call share a draw.
__device__ inline uint32_t keep_bits(uint64_t seed, uint64_t offset, uint64_t row, int keys, int key, int c, uint32_t threshold) {
    const uint64_t tiles = uint64_t((keys + kKeys - 1) / kKeys), tile = uint64_t(key / kKeys);
    uint32_t bits = 0;
    const uint64_t place = ((row * tiles + tile) * 4 + uint64_t(c)) * 2;
    const uint64_t call = offset / 4;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const uint64_t sub = place + uint64_t(half);
        const uint4 r = philox(make_uint4(uint32_t(call), uint32_t(call >> 32), uint32_t(sub), uint32_t(sub >> 32)),
                               make_uint2(uint32_t(seed), uint32_t(seed >> 32)));
        const uint32_t words[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            const int n = 4 * half + w;
            bits |= uint32_t((words[w] & 0xFFFFu) < threshold) << (2 * n);
            bits |= uint32_t((words[w] >> 16) < threshold) << (2 * n + 1);
        }
    }
    return bits;
}

} // namespace attention_tile
} // namespace studio
