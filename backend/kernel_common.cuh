// Device helpers that several of our kernels use (nvcc only: each .cu includes this; the plain C++ launch headers
// do not): element conversion between bf16 and fp32, 16-byte vector loads and stores (and 8 elements at a time), the
// join of two running log-sum-exps, a block's sum, one warp's tensor-core operands and product (mma.sync, compute
// capability 8.0 on); for the launchers, their error text and the alignment test for 16-byte accesses.
#pragma once

#include <cstdint>
#include <initializer_list>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace studio {
namespace kernels {

using bf16 = __nv_bfloat16;

__device__ inline float to_float(bf16 x) { return __bfloat162float(x); }
__device__ inline float to_float(float x) { return x; }
__device__ inline void store(bf16 * p, float x) { *p = __float2bfloat16(x); }
__device__ inline void store(float * p, float x) { *p = x; }

/// 16 bytes of T as floats, and back.
template <typename T> struct Vec;
template <> struct Vec<float> {
    static constexpr int kSize = 4;
    __device__ static void load(const float * p, float (&v)[kSize]) {
        const float4 x = *reinterpret_cast<const float4 *>(p);
        v[0] = x.x; v[1] = x.y; v[2] = x.z; v[3] = x.w;
    }
    __device__ static void store(float * p, const float (&v)[kSize]) { *reinterpret_cast<float4 *>(p) = make_float4(v[0], v[1], v[2], v[3]); }
};
template <> struct Vec<bf16> {
    static constexpr int kSize = 8;
    __device__ static void load(const bf16 * p, float (&v)[kSize]) {
        const uint4 raw = *reinterpret_cast<const uint4 *>(p);
        const __nv_bfloat162 * pairs = reinterpret_cast<const __nv_bfloat162 *>(&raw);
#pragma unroll
        for (int i = 0; i < kSize / 2; ++i) {
            const float2 f = __bfloat1622float2(pairs[i]);
            v[2 * i] = f.x;
            v[2 * i + 1] = f.y;
        }
    }
    __device__ static void store(bf16 * p, const float (&v)[kSize]) {
        uint4 raw;
        __nv_bfloat162 * pairs = reinterpret_cast<__nv_bfloat162 *>(&raw);
#pragma unroll
        for (int i = 0; i < kSize / 2; ++i) pairs[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
        *reinterpret_cast<uint4 *>(p) = raw;
    }
};

/// 8 elements of T as floats, and back: one 16-byte access for bf16, two for fp32. p 16-byte aligned.
template <typename T> __device__ inline void load8(const T * p, float (&v)[8]) {
    constexpr int lanes = Vec<T>::kSize;
#pragma unroll
    for (int e = 0; e < 8; e += lanes) Vec<T>::load(p + e, *reinterpret_cast<float (*)[lanes]>(v + e));
}
template <typename T> __device__ inline void store8(T * p, const float (&v)[8]) {
    constexpr int lanes = Vec<T>::kSize;
#pragma unroll
    for (int e = 0; e < 8; e += lanes) Vec<T>::store(p + e, *reinterpret_cast<const float (*)[lanes]>(v + e));
}

/// log2(e): softmaxes in log2 units take exp(x) as exp2(x log2(e)).
constexpr float kLog2e = 1.4426950408889634f;

/// 2^x by the special-function unit alone (ex2.approx.ftz: relative error about 2^-22, subnormal results flushed to 0),
/// where exp2f adds range handling around it: for the inner loops of softmaxes whose arguments are <= 0 or nearly.
__device__ inline float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/// (max, sum) pairs of a running log-sum-exp joined: sum is relative to max; (-inf, 0) is the empty pair.
__device__ inline void join(float & m, float & s, float m2, float s2) {
    const float top = fmaxf(m, m2);
    if (top == -INFINITY) return;
    s = s * __expf(m - top) + s2 * __expf(m2 - top);
    m = top;
}

/// The sum of every thread's x over a block of kThreads (a multiple of 32, at most 1024), in a fixed order; thread
/// 0 holds it. Every thread of the block must call it.
template <int kThreads> __device__ inline float block_sum(float x) {
    static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps, at most 32 of them");
    constexpr int kWarps = kThreads / 32;
    __shared__ float warp_sums[kWarps];
    for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) warp_sums[warp] = x;
    __syncthreads();
    x = 0.0f;
    if (warp == 0) {
        x = lane < kWarps ? warp_sums[lane] : 0.0f;
        for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
    }
    __syncthreads();   // warp_sums may be reused by a following call
    return x;
}

// The tensor-core operands of one warp, in mma.sync m16n8k16's layouts. Lane = 4 g + c holds, of a 16x8 fp32
// accumulator, rows g and g+8 at columns 2c and 2c+1; of a 16x16 bf16 A operand, the same rows at columns 2c, 2c+1
// and 2c+8, 2c+9; of a 16x8 B operand (k x n), column g at rows 2c, 2c+1 and 2c+8, 2c+9.
__device__ inline uint32_t shared_address(const void * p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

/// A (16x16) from a row-major bf16 tile: rows 0..15 and columns 0..15 from `tile` (pitch ld).
__device__ inline void load_a(uint32_t (&a)[4], const bf16 * tile, int ld, int lane) {
    const bf16 * p = tile + (lane % 8 + 8 * ((lane / 8) % 2)) * ld + 8 * (lane / 16);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3]) : "r"(shared_address(p)));
}

/// B (16x8) whose n columns are rows 0..7 of a row-major tile and whose k rows are its columns 0..15: keys or
/// position rows against the query's dimensions.
__device__ inline void load_b(uint32_t (&b)[2], const bf16 * tile, int ld, int lane) {
    const bf16 * p = tile + (lane % 8) * ld + 8 * ((lane / 8) % 2);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(b[0]), "=r"(b[1]) : "r"(shared_address(p)));
}

/// B (16x8) whose k rows are rows 0..15 of a row-major tile and whose n columns are its columns 0..7: values.
__device__ inline void load_b_transposed(uint32_t (&b)[2], const bf16 * tile, int ld, int lane) {
    const bf16 * p = tile + (lane % 8 + 8 * ((lane / 8) % 2)) * ld;
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(b[0]), "=r"(b[1]) : "r"(shared_address(p)));
}

/// d += a . b, fp32 accumulation.
__device__ inline void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/// acc (16 x 8N) = A . B^T over k columns (a multiple of 16): A is rows 0..15 of a_tile, B's n columns are rows
/// 0..8N-1 of b_tile, both row-major bf16 in shared memory with pitch ld.
template <int N>
__device__ inline void warp_product(float (&acc)[N][4], const bf16 * a_tile, const bf16 * b_tile, int ld, int k, int lane) {
#pragma unroll
    for (int n = 0; n < N; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < k; kk += 16) {
        uint32_t a[4];
        load_a(a, a_tile + kk, ld, lane);
#pragma unroll
        for (int n = 0; n < N; ++n) {
            uint32_t b[2];
            load_b(b, b_tile + n * 8 * ld + kk, ld, lane);
            mma(acc[n], a, b);
        }
    }
}

/// 16 bytes from global to shared memory without passing through registers (cp.async, compute capability 8.0 on):
/// `bytes` (0..16) are read from src, the rest of the 16 written as zeros. Both addresses 16-byte aligned. Visible
/// to the block after wait_async and a barrier.
__device__ inline void copy_16_async(void * dst, const void * src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" : : "r"(shared_address(dst)), "l"(src), "r"(bytes));
}
/// Closes the group of copies issued since the last call.
__device__ inline void commit_async() { asm volatile("cp.async.commit_group;\n" : :); }
/// Waits until at most `pending` groups of this thread's copies are still in flight.
template <int pending> __device__ inline void wait_async() { asm volatile("cp.async.wait_group %0;\n" : : "n"(pending)); }

/// Two floats as a bf16 pair, the first in the low half (the lower column).
__device__ inline uint32_t pack_bf16(float low, float high) {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
    return *reinterpret_cast<const uint32_t *>(&pair);
}

/// acc (16 x 8N) += P . B, where P (16 x 8K, K even) is a warp's accumulators as warp_product leaves them, rounded to
/// bf16 here (two 8-column accumulator tiles are exactly one A operand), and B's k rows are rows 0..8K-1 of a
/// row-major bf16 tile in shared memory (pitch ld), its n columns that tile's columns 0..8N-1: probabilities times
/// values, or a logit's gradient times the other side's rows.
template <int K, int N>
__device__ inline void warp_product_from_accumulators(float (&acc)[N][4], const float (&p)[K][4], const bf16 * b_tile, int ld, int lane) {
#pragma unroll
    for (int j = 0; j < K / 2; ++j) {
        const uint32_t a[4] = {pack_bf16(p[2 * j][0], p[2 * j][1]), pack_bf16(p[2 * j][2], p[2 * j][3]),
                               pack_bf16(p[2 * j + 1][0], p[2 * j + 1][1]), pack_bf16(p[2 * j + 1][2], p[2 * j + 1][3])};
#pragma unroll
        for (int n = 0; n < N; ++n) {
            uint32_t b[2];
            load_b_transposed(b, b_tile + j * 16 * ld + n * 8, ld, lane);
            mma(acc[n], a, b);
        }
    }
}

/// A (16x16) as the transpose of a 16x16 block of a row-major bf16 tile (pitch ld): A's rows are the block's columns.
__device__ inline void load_a_transposed(uint32_t (&a)[4], const bf16 * tile, int ld, int lane) {
    const bf16 * p = tile + (lane % 8 + 8 * (lane / 16)) * ld + 8 * ((lane / 8) % 2);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3]) : "r"(shared_address(p)));
}

/// acc (16 x 8N) += A . B over k (a multiple of 16), where B's k rows are rows 0..k-1 of b_tile and its n columns
/// their columns 0..8N-1, and A is rows 0..15 of a_tile (16 x k), or with kTransposedA the transpose of its columns
/// 0..15 over rows 0..k-1; both row-major bf16 in shared memory with pitches a_ld and b_ld. With kTransposedA:
/// probabilities or score gradients (queries x keys) turned to the keys' side.
template <bool kTransposedA, int N>
__device__ inline void warp_product_by_rows(float (&acc)[N][4], const bf16 * a_tile, int a_ld, const bf16 * b_tile, int b_ld, int k,
                                            int lane) {
#pragma unroll
    for (int kk = 0; kk < k; kk += 16) {
        uint32_t a[4];
        if constexpr (kTransposedA)
            load_a_transposed(a, a_tile + kk * a_ld, a_ld, lane);
        else
            load_a(a, a_tile + kk, a_ld, lane);
#pragma unroll
        for (int n = 0; n < N; ++n) {
            uint32_t b[2];
            load_b_transposed(b, b_tile + kk * b_ld + n * 8, b_ld, lane);
            mma(acc[n], a, b);
        }
    }
}

/// Whether p is 16-byte aligned and each of byte_strides a multiple of 16: every row of a strided layout from p then
/// starts 16-byte aligned, so a launcher may choose 16-byte accesses.
inline bool aligned_16(const void * p, std::initializer_list<int64_t> byte_strides = {}) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
    for (const int64_t stride : byte_strides)
        if (stride % 16 != 0) return false;
    return true;
}

/// What a launcher returns: nullptr on success, else CUDA's error text.
inline const char * error_text(cudaError_t status) { return status == cudaSuccess ? nullptr : cudaGetErrorString(status); }
/// The error text of the launches just made (nullptr if none failed).
inline const char * launch_error() { return error_text(cudaGetLastError()); }

} // namespace kernels
} // namespace studio
