#include "gated_weight_kernel.h"

#include "kernel_common.cuh"

namespace studio {

namespace {

using namespace kernels;

constexpr int kChunk = 8;                   // columns a thread takes at a time (load8/store8)
constexpr int kForwardThreads = 256;
constexpr int kForwardRows = 64;            // rows a forward block scales
constexpr int kBackwardThreads = 1024;      // one block a head: the gate's sum stays in the block, in a fixed order

/// Block (head, rows / kForwardRows): out = weight x gate over the head's columns of its rows.
__global__ void __launch_bounds__(kForwardThreads) forward_kernel(const GatedWeightKernelArgs args) {
    const int64_t width = args.heads * args.head_dim, head = blockIdx.x;
    const int chunks = (int) (args.head_dim / kChunk);                   // chunks in a row of one head
    const float gate = args.gate[head];
    const int64_t first_row = (int64_t) blockIdx.y * kForwardRows;
    for (int i = threadIdx.x; i < kForwardRows * chunks; i += kForwardThreads) {
        const int64_t row = first_row + i / chunks;
        if (row >= args.rows) break;
        const int64_t at = row * width + head * args.head_dim + (int64_t) (i % chunks) * kChunk;
        float v[kChunk];
        load8(args.weight + at, v);
#pragma unroll
        for (int k = 0; k < kChunk; ++k) v[k] *= gate;
        store8(static_cast<bf16 *>(args.out) + at, v);
    }
}

/// Block (head): grad_weight = grad_out x gate over the head's columns, and grad_gate[head] = sum grad_out x weight.
__global__ void __launch_bounds__(kBackwardThreads) backward_kernel(const GatedWeightKernelArgs args) {
    const int64_t width = args.heads * args.head_dim, head = blockIdx.x;
    const int chunks = (int) (args.head_dim / kChunk);
    const float gate = args.gate[head];
    float sum = 0.0f;
    for (int64_t i = threadIdx.x; i < args.rows * chunks; i += kBackwardThreads) {
        const int64_t at = (i / chunks) * width + head * args.head_dim + (i % chunks) * kChunk;
        float grad[kChunk], weight[kChunk];
        load8(static_cast<const bf16 *>(args.grad_out) + at, grad);
        load8(args.weight + at, weight);
#pragma unroll
        for (int k = 0; k < kChunk; ++k) {
            sum += grad[k] * weight[k];
            grad[k] *= gate;
        }
        store8(args.grad_weight + at, grad);
    }
    sum = block_sum<kBackwardThreads>(sum);
    if (threadIdx.x == 0) args.grad_gate[head] = sum;
}

} // namespace

bool gated_weight_kernel_supports(int64_t heads, int64_t head_dim) {
    return heads > 0 && heads <= 65535 && head_dim > 0 && head_dim % kChunk == 0;
}

const char * launch_gated_weight_forward(const GatedWeightKernelArgs & args, void * stream) {
    const dim3 blocks((unsigned) args.heads, (unsigned) ((args.rows + kForwardRows - 1) / kForwardRows));
    forward_kernel<<<blocks, kForwardThreads, 0, static_cast<cudaStream_t>(stream)>>>(args);
    return launch_error();
}

const char * launch_gated_weight_backward(const GatedWeightKernelArgs & args, void * stream) {
    backward_kernel<<<(unsigned) args.heads, kBackwardThreads, 0, static_cast<cudaStream_t>(stream)>>>(args);
    return launch_error();
}

} // namespace studio
