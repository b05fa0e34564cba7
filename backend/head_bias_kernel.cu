#include "head_bias_kernel.h"

#include "kernel_common.cuh"

namespace studio {

namespace {

using namespace kernels;

constexpr int kThreads = 256;
constexpr int kChunk = 8;   // columns a thread takes: 16 bytes of bf16, 32 of fp32 (load8/store8)

template <typename T>
__global__ void __launch_bounds__(kThreads) plus_head_bias_kernel(const HeadBiasKernelArgs args) {
    const int64_t chunks = args.width / kChunk;
    const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
    if (i >= args.rows * chunks) return;
    const int64_t row = i / chunks, column = (i - row * chunks) * kChunk;
    float x[kChunk], bias[kChunk], sum[kChunk];
    load8(static_cast<const T *>(args.x) + row * args.x_row_stride + column, x);
    const int64_t at = args.head_dim > 0 ? column / args.head_dim * args.out_head_stride + row * args.out_row_stride + column % args.head_dim
                                         : row * args.out_row_stride + column;
    const void * biases[2] = {args.bias, args.bias2};
    void * outs[2] = {args.out, args.out2};
#pragma unroll
    for (int which = 0; which < 2; ++which) {
        if (!outs[which]) continue;
        load8(static_cast<const T *>(biases[which]) + column, bias);
#pragma unroll
        for (int k = 0; k < kChunk; ++k) sum[k] = x[k] + bias[k];
        store8(static_cast<T *>(outs[which]) + at, sum);
    }
}

} // namespace

const char * launch_plus_head_bias(const HeadBiasKernelArgs & args, void * stream) {
    const int64_t element = args.bf16 ? 2 : 4;
    const int64_t head_stride = args.head_dim > 0 ? args.out_head_stride * element : 0;
    if (args.width % kChunk != 0 || !aligned_16(args.x, {args.x_row_stride * element}) || !aligned_16(args.bias)
        || !aligned_16(args.out, {args.out_row_stride * element, head_stride}) || (args.head_dim > 0 && args.head_dim % kChunk != 0)
        || (args.out2 && (!args.bias2 || !aligned_16(args.bias2) || !aligned_16(args.out2, {args.out_row_stride * element, head_stride}))))
        return "plus_head_bias kernel: rows (and heads) must be 16-byte aligned and a multiple of 8 wide";
    const int64_t threads = args.rows * (args.width / kChunk);
    if (threads == 0) return nullptr;
    const unsigned blocks = unsigned((threads + kThreads - 1) / kThreads);
    if (args.bf16) plus_head_bias_kernel<bf16><<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(args);
    else plus_head_bias_kernel<float><<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(args);
    return launch_error();
}

} // namespace studio
