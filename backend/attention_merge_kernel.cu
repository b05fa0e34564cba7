#include "attention_merge_kernel.h"

#include "kernel_common.cuh"

namespace studio {

namespace {

using namespace kernels;

constexpr int kThreads = 256;
constexpr int kChunk = 8;                  // columns a thread takes: one 16-byte access per part (load8/store8)

/// A thread per 8 columns of a row: out = a x share + b x (1 - share), share = sigmoid(lse_a - lse_b), in fp32.
__global__ void __launch_bounds__(kThreads) merge_kernel(const AttentionMergeKernelArgs args) {
    const int64_t X = args.sizes[0], Y = args.sizes[1], L = args.sizes[2], D = args.sizes[3];
    const int64_t chunks = D / kChunk;
    const int64_t i = (int64_t) blockIdx.x * kThreads + threadIdx.x;
    if (i >= X * Y * L * chunks) return;
    const int64_t column = (i % chunks) * kChunk, row = i / chunks;
    const int64_t l = row % L, y = (row / L) % Y, x = row / (L * Y);
    const float lse_a = args.lse_a[x * args.lse_a_stride[0] + y * args.lse_a_stride[1] + l * args.lse_a_stride[2]];
    const float lse_b = args.lse_b[x * args.lse_b_stride[0] + y * args.lse_b_stride[1] + l * args.lse_b_stride[2]];
    const float share = 1.0f / (1.0f + __expf(lse_b - lse_a));
    float a[kChunk], b[kChunk];
    load8(static_cast<const bf16 *>(args.out_a) + x * args.out_a_stride[0] + y * args.out_a_stride[1] + l * args.out_a_stride[2] + column, a);
    load8(static_cast<const bf16 *>(args.out_b) + x * args.out_b_stride[0] + y * args.out_b_stride[1] + l * args.out_b_stride[2] + column, b);
#pragma unroll
    for (int k = 0; k < kChunk; ++k) a[k] = a[k] * share + b[k] * (1.0f - share);
    store8(static_cast<bf16 *>(args.out) + x * args.out_stride[0] + y * args.out_stride[1] + l * args.out_stride[2] + column, a);
}

} // namespace

bool attention_merge_kernel_supports(int64_t head_dim) { return head_dim > 0 && head_dim % kChunk == 0; }

const char * launch_attention_merge(const AttentionMergeKernelArgs & args, void * stream) {
    const int64_t threads = args.sizes[0] * args.sizes[1] * args.sizes[2] * (args.sizes[3] / kChunk);
    if (threads == 0) return nullptr;
    merge_kernel<<<(unsigned) ((threads + kThreads - 1) / kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(args);
    return launch_error();
}

} // namespace studio
