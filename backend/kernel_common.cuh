// Device helpers that several of our kernels use (nvcc only: each .cu includes this; the plain C++ launch headers
// do not): element conversion between bf16 and fp32, 16-byte vector loads and stores (and 8 elements at a time), the
// join of two running log-sum-exps, a block's sum; for the launchers, their error text and the alignment test for
// 16-byte accesses.
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
