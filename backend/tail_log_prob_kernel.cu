// Two launches. The first, for fp32 operands: grid (row tiles of 32, column splits), 256 threads; each thread forms a 4 x 4 block of
// logits per 128-column tile from fp32 copies of the hidden rows and weight columns in shared memory (stored
// k-major, so a thread's four rows are one 16-byte read), folds them into a running max and sum for its four rows,
// and notes its row's target logit when it meets that column. A warp then joins its 32 threads' partial sums per row.
// (bf16 operands take the tensor-core kernel below instead.) The second launch joins the splits and subtracts:
// log p = target logit - log-sum-exp.
#include "tail_log_prob_kernel.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernel_common.cuh"

namespace studio {

namespace {

using namespace kernels;

constexpr int kRows = 32;                 // rows of a block: 8 warps x 4 rows
constexpr int kCols = 128;                // columns of a tile: 32 lanes x 4 columns
constexpr int kInner = 32;                // inner (dim) slice held in shared memory at a time
constexpr int kThreads = 256;
constexpr int64_t kTargetBlocks = 2048;   // enough blocks to fill an H200 a few times over
constexpr int kRowPitch = kRows + 4;      // k-major hidden slice, 16-byte aligned rows
constexpr int kColPitch = kCols + 1;      // k-major weight slice, odd pitch against bank conflicts on the stores

/// Column splits for a grid of about kTargetBlocks blocks of rows_per_block x cols_per_tile.
/// Rows of this call: how many (read from device memory when indirect) and the physical row of logical row r.
struct Rows {
    int64_t first = 0, count = 0;
    const int64_t * index = nullptr;
    __device__ explicit Rows(const TailLogProbKernelArgs & args)
        : first(args.range ? args.range[0] : 0), count(args.range ? args.range[1] : args.rows), index(args.row_index) {}
    __device__ int64_t physical(int64_t r) const { return index ? index[first + r] : r; }
};

int64_t splits_for(int64_t rows, int64_t words, int64_t rows_per_block, int64_t cols_per_tile) {
    const int64_t row_tiles = (rows + rows_per_block - 1) / rows_per_block, col_tiles = (words + cols_per_tile - 1) / cols_per_tile;
    const int64_t wanted = (kTargetBlocks + row_tiles - 1) / row_tiles;
    return wanted < 1 ? 1 : wanted > col_tiles ? col_tiles : wanted;
}
/// The most splits either kernel may take (sizes the workspace).
int64_t max_splits(int64_t rows, int64_t words) {
    const int64_t a = splits_for(rows, words, 32, 128), b = splits_for(rows, words, 64, 64);
    return a > b ? a : b;
}

template <typename Hidden, typename Weight>
__global__ void __launch_bounds__(kThreads) partial_kernel(const TailLogProbKernelArgs args, int64_t splits) {
    __shared__ __align__(16) float hidden_slice[kInner * kRowPitch];   // [k][row]
    __shared__ float weight_slice[kInner * kColPitch];                 // [k][column]
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int64_t first_row = int64_t(blockIdx.x) * kRows;
    const int64_t split = blockIdx.y, per_split = ((args.words + kCols - 1) / kCols + splits - 1) / splits * kCols;
    const int64_t first_col = split * per_split, end_col = first_col + per_split < args.words ? first_col + per_split : args.words;
    const Hidden * hidden = static_cast<const Hidden *>(args.hidden);
    const Weight * weight = static_cast<const Weight *>(args.weight);
    const Weight * bias = static_cast<const Weight *>(args.bias);
    const Rows rows(args);
    if (first_row >= rows.count) return;

    int64_t my_target[4];
    float run_max[4], run_sum[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int64_t row = first_row + warp * 4 + i;
        my_target[i] = row < rows.count ? args.target[rows.physical(row)] : -1;
        run_max[i] = -INFINITY;
        run_sum[i] = 0.0f;
    }
    for (int64_t col0 = first_col; col0 < end_col; col0 += kCols) {
        float acc[4][4] = {};
        for (int64_t k0 = 0; k0 < args.dim; k0 += kInner) {
            const int inner = args.dim - k0 < kInner ? int(args.dim - k0) : kInner;
            __syncthreads();
            for (int idx = threadIdx.x; idx < kRows * inner; idx += kThreads) {
                const int r = idx / inner, k = idx % inner;
                const int64_t row = first_row + r;
                hidden_slice[k * kRowPitch + r] = row < rows.count ? to_float(hidden[rows.physical(row) * args.hidden_stride + k0 + k]) : 0.0f;
            }
            for (int idx = threadIdx.x; idx < kCols * inner; idx += kThreads) {
                const int c = idx / inner, k = idx % inner;
                const int64_t col = col0 + c;
                weight_slice[k * kColPitch + c] = col < end_col ? to_float(weight[col * args.dim + k0 + k]) : 0.0f;
            }
            __syncthreads();
            for (int k = 0; k < inner; ++k) {
                const float4 a = *reinterpret_cast<const float4 *>(&hidden_slice[k * kRowPitch + warp * 4]);
                const float a_rows[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const float b = weight_slice[k * kColPitch + lane + 32 * j];
#pragma unroll
                    for (int i = 0; i < 4; ++i) acc[i][j] = fmaf(a_rows[i], b, acc[i][j]);
                }
            }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int64_t col = col0 + lane + 32 * j;
            if (col >= end_col) continue;
            const float b = to_float(bias[col]);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float z = acc[i][j] + b;
                if (z > run_max[i]) {
                    run_sum[i] = run_sum[i] * __expf(run_max[i] - z) + 1.0f;
                    run_max[i] = z;
                } else {
                    run_sum[i] += __expf(z - run_max[i]);
                }
                if (col == my_target[i]) args.workspace[2 * args.rows * splits + first_row + warp * 4 + i] = z;
            }
        }
    }
    // Join the 32 lanes' partial results for each of the warp's four rows.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        for (int offset = 16; offset > 0; offset /= 2) {
            const float m2 = __shfl_xor_sync(0xffffffffu, run_max[i], offset), l2 = __shfl_xor_sync(0xffffffffu, run_sum[i], offset);
            join(run_max[i], run_sum[i], m2, l2);
        }
        const int64_t row = first_row + warp * 4 + i;
        if (lane == 0 && row < rows.count) {
            args.workspace[row * splits + split] = run_max[i];
            args.workspace[args.rows * splits + row * splits + split] = run_sum[i];
        }
    }
}

// bf16 hidden rows and weights: the logits on the tensor cores (fp32 accumulation, as cuBLAS forms them from the
// same bf16 operands; mma.sync m16n8k16). 4 warps, 16 rows each, 64 columns a tile; the inner dimension padded with
// zeros to a multiple of 16 in shared memory. The logits stay in the accumulators: lane 4g + c holds rows g and g+8
// of the warp's 16 at columns 2c and 2c+1 of every 8, keeps a running max and sum for each of its two rows, and the
// four lanes of a row join theirs at the end.
constexpr int kTensorRows = 64, kTensorCols = 64, kTensorThreads = 128;

__global__ void __launch_bounds__(kTensorThreads) tensor_core_partial_kernel(const TailLogProbKernelArgs args, int64_t splits,
                                                                             int inner_padded, bool vector_loads) {
    extern __shared__ __align__(128) unsigned char smem[];
    const int pitch = inner_padded + 8;                                           // bf16 elements, 16-byte multiple
    bf16 * hidden_tile = reinterpret_cast<bf16 *>(smem);                          // (64, inner_padded)
    bf16 * weight_tile = hidden_tile + kTensorRows * pitch;                       // (64, inner_padded)
    float * bias_tile = reinterpret_cast<float *>(weight_tile + kTensorCols * pitch); // (64,) the tile's biases
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const int64_t first_row = int64_t(blockIdx.x) * kTensorRows;
    const int64_t split = blockIdx.y, col_tiles = (args.words + kTensorCols - 1) / kTensorCols;
    const int64_t per_split = (col_tiles + splits - 1) / splits * kTensorCols;
    const int64_t first_col = split * per_split, end_col = first_col + per_split < args.words ? first_col + per_split : args.words;
    const bf16 * hidden = static_cast<const bf16 *>(args.hidden);
    const bf16 * weight = static_cast<const bf16 *>(args.weight);
    const bf16 * bias = static_cast<const bf16 *>(args.bias);
    const int chunks = inner_padded / 8;
    const Rows rows(args);
    if (first_row >= rows.count) return;

    // Rows (zero past the end and past dim), 8 bf16 at a time when dim allows, else one by one.
    // gather: whether tile row r is logical row first + r of this call (else row first + r of src itself).
    auto load_tile = [&](bf16 * tile, const bf16 * src, int64_t stride, int64_t first, int64_t limit, bool gather) {
        for (int idx = threadIdx.x; idx < 64 * chunks; idx += kTensorThreads) {
            const int r = idx / chunks, k = (idx % chunks) * 8;
            const int64_t row = first + r;
            uint4 value = make_uint4(0, 0, 0, 0);
            bf16 * e = reinterpret_cast<bf16 *>(&value);
            if (row < limit) {
                const bf16 * line = src + (gather ? rows.physical(row) : row) * stride;
                if (vector_loads && k + 8 <= args.dim) value = *reinterpret_cast<const uint4 *>(line + k);
                else for (int i = 0; i < 8; ++i) e[i] = k + i < args.dim ? line[k + i] : __float2bfloat16(0.0f);
            }
            *reinterpret_cast<uint4 *>(tile + r * pitch + k) = value;
        }
    };
    load_tile(hidden_tile, hidden, args.hidden_stride, first_row, rows.count, true);

    int64_t row[2], my_target[2];
    float run_max[2] = {-INFINITY, -INFINITY}, run_sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        row[half] = first_row + warp * 16 + g + 8 * half;
        my_target[half] = row[half] < rows.count ? args.target[rows.physical(row[half])] : -1;
    }
    const bf16 * warp_hidden = hidden_tile + warp * 16 * pitch;
    for (int64_t col0 = first_col; col0 < end_col; col0 += kTensorCols) {
        __syncthreads();
        load_tile(weight_tile, weight, args.dim, col0, end_col, false);
        if (threadIdx.x < kTensorCols) bias_tile[threadIdx.x] = col0 + threadIdx.x < end_col ? __bfloat162float(bias[col0 + threadIdx.x]) : 0.0f;
        __syncthreads();
        float logits[kTensorCols / 8][4];
        warp_product(logits, warp_hidden, weight_tile, pitch, inner_padded, lane);
        // In 32-bit indices within the tile: the columns present and each row's target column (or -1).
        const int columns_here = end_col - col0 < kTensorCols ? int(end_col - col0) : kTensorCols;
        int target_column[2];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int64_t target = my_target[half] - col0;
            target_column[half] = target >= 0 && target < kTensorCols ? int(target) : -1;
        }
        // Each of the lane's two rows: its 16 logits of this tile, their max first, then one rescale of the running
        // sum (no branch a logit); and the target's logit, if this lane holds it. A column past end_col is never the
        // target: a split's tiles end at the next split's first column (per_split is whole tiles) or past the words.
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float tile_max = -INFINITY;
#pragma unroll
            for (int n = 0; n < kTensorCols / 8; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int column = n * 8 + 2 * c + e;
                    const float z = column < columns_here ? logits[n][2 * half + e] + bias_tile[column] : -INFINITY;
                    logits[n][2 * half + e] = z;
                    tile_max = fmaxf(tile_max, z);
                    if (column == target_column[half]) args.workspace[2 * args.rows * splits + row[half]] = z;
                }
            const float new_max = fmaxf(run_max[half], tile_max);
            if (new_max != -INFINITY) {   // else this lane has seen no column yet
                float tile_sum = 0.0f;
#pragma unroll
                for (int n = 0; n < kTensorCols / 8; ++n)
#pragma unroll
                    for (int e = 0; e < 2; ++e) tile_sum += __expf(logits[n][2 * half + e] - new_max);
                run_sum[half] = (run_max[half] == -INFINITY ? 0.0f : run_sum[half] * __expf(run_max[half] - new_max)) + tile_sum;
                run_max[half] = new_max;
            }
        }
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
        for (int offset = 1; offset < 4; offset *= 2) {
            const float other_max = __shfl_xor_sync(0xffffffffu, run_max[half], offset);
            const float other_sum = __shfl_xor_sync(0xffffffffu, run_sum[half], offset);
            join(run_max[half], run_sum[half], other_max, other_sum);
        }
        if (c == 0 && row[half] < rows.count) {
            args.workspace[row[half] * splits + split] = run_max[half];
            args.workspace[args.rows * splits + row[half] * splits + split] = run_sum[half];
        }
    }
}

__global__ void combine_kernel(const TailLogProbKernelArgs args, int64_t splits) {
    const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const Rows rows(args);
    if (row >= rows.count) return;
    float m = -INFINITY, l = 0.0f;
    for (int64_t s = 0; s < splits; ++s) join(m, l, args.workspace[row * splits + s], args.workspace[args.rows * splits + row * splits + s]);
    const float lse = m + logf(l);
    args.out[rows.physical(row)] = args.workspace[2 * args.rows * splits + row] - lse;
    if (args.lse) args.lse[rows.physical(row)] = lse;
}

cudaError_t launch_tensor_cores(const TailLogProbKernelArgs & args, cudaStream_t stream) {
    const int64_t splits = splits_for(args.rows, args.words, kTensorRows, kTensorCols);
    const int inner_padded = int((args.dim + 15) / 16 * 16);
    const size_t smem = size_t(kTensorRows + kTensorCols) * (inner_padded + 8) * sizeof(bf16) + size_t(kTensorCols) * sizeof(float);
    cudaError_t status = cudaFuncSetAttribute(tensor_core_partial_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (status != cudaSuccess) return status;
    const dim3 grid(unsigned((args.rows + kTensorRows - 1) / kTensorRows), unsigned(splits));
    // 16-byte loads where every row starts 16-byte aligned.
    const bool vector_loads = args.dim % 8 == 0 && args.hidden_stride % 8 == 0 && reinterpret_cast<uintptr_t>(args.hidden) % 16 == 0
                              && reinterpret_cast<uintptr_t>(args.weight) % 16 == 0;
    tensor_core_partial_kernel<<<grid, kTensorThreads, smem, stream>>>(args, splits, inner_padded, vector_loads);
    combine_kernel<<<unsigned((args.rows + 255) / 256), 256, 0, stream>>>(args, splits);
    return cudaGetLastError();
}

template <typename Hidden, typename Weight>
cudaError_t launch(const TailLogProbKernelArgs & args, cudaStream_t stream) {
    const int64_t splits = splits_for(args.rows, args.words, kRows, kCols);
    const dim3 grid(unsigned((args.rows + kRows - 1) / kRows), unsigned(splits));
    partial_kernel<Hidden, Weight><<<grid, kThreads, 0, stream>>>(args, splits);
    combine_kernel<<<unsigned((args.rows + 255) / 256), 256, 0, stream>>>(args, splits);
    return cudaGetLastError();
}

} // namespace

bool tail_log_prob_kernel_supports(int64_t dim) { return dim > 0; }

int64_t tail_log_prob_workspace_floats(int64_t rows, int64_t words) { return rows * (2 * max_splits(rows, words) + 1); }

const char * launch_tail_log_prob(const TailLogProbKernelArgs & args, void * stream_handle) {
    if (args.rows == 0) return nullptr;
    if (!tail_log_prob_kernel_supports(args.dim)) return "tail log-prob kernel: dim must be positive";
    auto stream = static_cast<cudaStream_t>(stream_handle);
    cudaError_t status;
    // The tensor-core kernel holds a 64-row tile of the hidden rows in shared memory: up to 1024 wide.
    if (args.hidden_bf16) status = args.weight_bf16 ? (args.dim <= 1024 ? launch_tensor_cores(args, stream) : launch<bf16, bf16>(args, stream))
                                                    : launch<bf16, float>(args, stream);
    else status = args.weight_bf16 ? launch<float, bf16>(args, stream) : launch<float, float>(args, stream);
    return error_text(status);
}

} // namespace studio
