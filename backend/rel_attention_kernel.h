// A CUDA kernel for Transformer-XL relative attention at inference and in training's forward: the content term (q+u).k and the position term
// (q+v).r of each query tile are formed on chip, tile by tile, so the (H,B,T,S) position scores, their relative shift
// and the additive bias never reach device memory. The persistent columns of All-attention, which carry no position
// term, are attended apart (cuDNN's or flash's attention) and enter as the online softmax's starting state.
// Plain C++ on purpose: neither LibTorch nor CUDA headers, so this header costs nothing to include and the kernel's
// source compiles with nvcc alone. Built only where CMake finds a CUDA compiler (STUDIO_ATTENTION_KERNEL).
#pragma once

#include <cstdint>

namespace studio {

/// Training's attention dropout in our kernels: each entry is kept where 16 random bits fall below keep_threshold, and
/// kept probabilities are multiplied by keep_scale. The generator's state is the PyTorch CUDA generator's for the
/// call: seed and offset as values, or (in a captured CUDA graph) read from seed_ptr and offset_ptr at replay, plus
/// offset_intragraph. The forward writes the seed and offset it used to rng_out (2 int64); the backward reads them
/// from rng_in, so that it draws the same bits even from another graph.
struct AttentionDropout {
    bool enabled = false;
    uint32_t keep_threshold = 65536;
    float keep_scale = 1.0f;
    uint64_t seed = 0, offset = 0;
    const int64_t * seed_ptr = nullptr;
    const int64_t * offset_ptr = nullptr;
    uint32_t offset_intragraph = 0;
    int64_t * rng_out = nullptr;
    const int64_t * rng_in = nullptr;
};

/// Pointers and element strides of one call. All matrices are bf16 with unit stride along the head dimension.
/// Query i (0..T-1) sees key j (0..S-1, S = T+M, memory first) when j <= i+M and, with same_length, j >= i; their
/// position vector is row j+T-1-i-first_position of r (rows hold distances S-1-first_position .. 0).
struct RelativeAttentionKernelArgs {
    const void * q = nullptr;                   ///< (H,B,T,dh) bf16; in training q + u already
    const void * q_position = nullptr;          ///< training: (H,B,T,dh) bf16 q + v, q_stride's strides; u_bias and v_bias unused
    const void * k = nullptr;                   ///< (H,B,S,dh) bf16; with k_memory, (H,B,T,dh): the segment's rows alone
    const void * v = nullptr;                   ///< (H,B,S,dh) bf16; with v_memory, (H,B,T,dh)
    const void * k_memory = nullptr;            ///< (H,B,M,dh) bf16: the memory's keys apart (the key/value cache); null = in k
    const void * v_memory = nullptr;            ///< (H,B,M,dh) bf16, given with k_memory
    const void * r = nullptr;                   ///< (H,S - first_position,dh) bf16: distances S-1-first_position .. 0
    int64_t first_position = 0;                 ///< r's first row is the layer's row first_position (no kept entry reads those before)
    const void * u_bias = nullptr;              ///< (H*dh,) content bias u
    const void * v_bias = nullptr;              ///< (H*dh,) position bias v
    bool bias_bf16 = false;                     ///< u and v are bf16, else fp32
    const void * persistent_out = nullptr;      ///< (P,H,B*T,dh) bf16: softmax over the persistent columns alone; null = none
    const float * persistent_lse = nullptr;     ///< (P,H,B*T) their natural log-sum-exp
    int persistent_parts = 1;                   ///< P: parts over disjoint columns, joined by their log-sum-exps (1..4)
    float persistent_value_scale = 1.0f;        ///< persistent_out is multiplied by this (All-attention: sqrt(N))
    void * out = nullptr;                       ///< (H,B,T,dh) bf16
    int64_t heads = 0, batch = 0, tgt_len = 0, mem_len = 0, head_dim = 0;
    bool same_length = true;
    float scale = 1.0f;                         ///< applied to both terms (1/sqrt(dh))
    int64_t q_stride[3] = {0, 0, 0};            ///< head, batch, position
    int64_t k_stride[3] = {0, 0, 0};
    int64_t v_stride[3] = {0, 0, 0};
    int64_t k_memory_stride[3] = {0, 0, 0};
    int64_t v_memory_stride[3] = {0, 0, 0};
    int64_t r_stride[2] = {0, 0};               ///< head, position
    int64_t persistent_out_stride[3] = {0, 0, 0};  ///< part, head, row (b*T+i)
    int64_t persistent_lse_stride[3] = {0, 0, 0};
    int64_t out_stride[3] = {0, 0, 0};
    /// Training (q_position given): the joined softmax's natural log-sum-exp of each row, fp32 (H,B,T) by lse_stride.
    float * lse = nullptr;
    int64_t lse_stride[3] = {0, 0, 0};
    AttentionDropout dropout;
};

/// The most parts of the persistent columns the kernel joins as it starts.
constexpr int kMaxPersistentParts = 4;

/// Head dimensions the kernel is built for (multiples of 16 up to 128).
bool relative_attention_kernel_supports(int64_t head_dim);

/// Launches on the given cudaStream_t. Returns nullptr on success, else CUDA's error text. With args.q_position the
/// training forward: q + u and q + v given, attention dropout, the log-sum-exp written; head_dim 16, 32 or 64.
const char * launch_relative_attention(const RelativeAttentionKernelArgs & args, void * stream);

/// The keep mask that a training call with this dropout drew, written as (B,H,T,S) bytes (1 = kept), contiguous:
/// the tests' reference.
const char * launch_attention_keep_mask(const AttentionDropout & dropout, int64_t heads, int64_t batch, int64_t tgt_len, int64_t mem_len,
                                        unsigned char * keep, void * stream);

} // namespace studio
