// Two launches. The first, for fp32 operands: grid (row tiles of 32, column splits), 256 threads; each thread forms a 4 x 4 block of
// logits per 128-column tile from fp32 copies of the hidden rows and weight columns in shared memory (stored
// k-major, so a thread's four rows are one 16-byte read), folds them into a running max and sum for its four rows,
// and notes its row's target logit when it meets that column. A warp then joins its 32 threads' partial sums per row.
// (bf16 operands take the tensor-core kernel below instead, and leave the target's logit to the second launch.) The
// second launch joins the splits and subtracts: log p = target logit - log-sum-exp.
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
// same bf16 operands; mma.sync m16n8k16). 4 warps, 16 rows each, 64 columns a tile. In shared memory each row is one
// column wider than its values, a one beside the hidden rows and the bias beside each word's weights, then zeros to a
// multiple of 16: the tensor cores form the logits with their biases. The logits stay in the accumulators: lane
// 4g + c holds rows g and g+8 of the warp's 16 at columns 2c and 2c+1 of every 8, keeps a running max and sum for each
// of its two rows (log2 units: a multiply-add and an exp2 a logit), and the four lanes of a row join theirs at the
// end. The target's logit is left to the combining launch. Two forms: widths up to 128 read the words as the host laid
// them out (tail_laid_out_columns), the next tile arriving by cp.async while this one is used; wider rows are laid out
// here, a tile at a time.
constexpr int kTensorRows = 64, kTensorCols = 64, kTensorThreads = 128;

/// The general kernel's inner dimension: dim and the bias's column, rounded up to the mma's 16.
int tensor_inner(int64_t dim) { return int((dim + 1 + 15) / 16 * 16); }

/// A lane's 16 logits of each of its two rows in one tile folded into the rows' running max and sum: the max first,
/// then one rescale of the sum (no branch a logit). Columns from columns_here on (a partial tile's zero rows past the
/// words) count for nothing.
__device__ inline void fold_tile(float (&logits)[kTensorCols / 8][4], int columns_here, int c, float (&run_max)[2], float (&run_sum)[2]) {
    if (columns_here < kTensorCols) {
#pragma unroll
        for (int n = 0; n < kTensorCols / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (n * 8 + 2 * c + e % 2 >= columns_here) logits[n][e] = -INFINITY;
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        float tile_max = -INFINITY;
#pragma unroll
        for (int n = 0; n < kTensorCols / 8; ++n) tile_max = fmaxf(tile_max, fmaxf(logits[n][2 * half], logits[n][2 * half + 1]));
        const float new_max = fmaxf(run_max[half], tile_max);
        if (new_max == -INFINITY) continue;   // this lane has seen no column yet
        const float shift = new_max * kLog2e;
        float tile_sum = 0.0f;
#pragma unroll
        for (int n = 0; n < kTensorCols / 8; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) tile_sum += fast_exp2(fmaf(logits[n][2 * half + e], kLog2e, -shift));
        run_sum[half] = run_sum[half] * fast_exp2(run_max[half] * kLog2e - shift) + tile_sum;   // exp2(-inf) = 0
        run_max[half] = new_max;
    }
}

/// The four lanes of each of a lane's two rows joined; lane c = 0 writes the rows' (max, sum) of this split.
__device__ inline void write_partials(const TailLogProbKernelArgs & args, int64_t splits, int64_t split, const int64_t (&row)[2], int64_t count,
                                      int c, float (&run_max)[2], float (&run_sum)[2]) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
#pragma unroll
        for (int offset = 1; offset < 4; offset *= 2) {
            const float other_max = __shfl_xor_sync(0xffffffffu, run_max[half], offset);
            const float other_sum = __shfl_xor_sync(0xffffffffu, run_sum[half], offset);
            join(run_max[half], run_sum[half], other_max, other_sum);
        }
        if (c == 0 && row[half] < count) {
            args.workspace[row[half] * splits + split] = run_max[half];
            args.workspace[args.rows * splits + row[half] * splits + split] = run_sum[half];
        }
    }
}

/// The hidden rows first_row .. first_row+63 of this call into a tile of `inner` columns (pitch `pitch`): gathered
/// through the row index where there is one, 8 bf16 at a time where rows allow, zero past the rows; column
/// `one_column` holds a one, the columns past dim other than it zeros.
__device__ inline void load_hidden_rows(bf16 * tile, const TailLogProbKernelArgs & args, const Rows & rows, int64_t first_row, int inner, int pitch,
                                        int one_column, bool vector_loads) {
    const bf16 * hidden = static_cast<const bf16 *>(args.hidden);
    for (int idx = threadIdx.x; idx < kTensorRows * (inner / 8); idx += kTensorThreads) {
        const int r = idx / (inner / 8), k = (idx % (inner / 8)) * 8;
        uint4 value = make_uint4(0, 0, 0, 0);
        bf16 * e = reinterpret_cast<bf16 *>(&value);
        if (first_row + r < rows.count) {
            const bf16 * line = hidden + rows.physical(first_row + r) * args.hidden_stride;
            if (vector_loads && k + 8 <= args.dim) value = *reinterpret_cast<const uint4 *>(line + k);
            else
                for (int i = 0; i < 8; ++i)
                    e[i] = k + i < args.dim ? line[k + i] : __float2bfloat16(k + i == one_column ? 1.0f : 0.0f);
        }
        *reinterpret_cast<uint4 *>(tile + r * pitch + k) = value;
    }
}

/// The grid's ranges: this block's first row, and its split's columns [first_col, end_col).
struct TensorSplit {
    int64_t first_row, split, first_col, end_col;
    __device__ TensorSplit(const TailLogProbKernelArgs & args, int64_t splits) {
        first_row = int64_t(blockIdx.x) * kTensorRows;
        split = blockIdx.y;
        const int64_t col_tiles = (args.words + kTensorCols - 1) / kTensorCols, per_split = (col_tiles + splits - 1) / splits * kTensorCols;
        first_col = split * per_split;
        end_col = first_col + per_split < args.words ? first_col + per_split : args.words;
    }
};

/// Widths up to 128 (kDim 16, 32, 64, 128): the words laid out by the host, tiles by cp.async, double-buffered.
template <int kDim>
__global__ void __launch_bounds__(kTensorThreads) laid_out_partial_kernel(const TailLogProbKernelArgs args, int64_t splits, bool vector_loads) {
    constexpr int kColumns = int(tail_laid_out_columns(kDim)), kPitch = kColumns + 8;   // bf16 elements, 16-byte multiple
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 * hidden_tile = reinterpret_cast<bf16 *>(smem);                          // (64, kPitch)
    bf16 * word_tiles = hidden_tile + kTensorRows * kPitch;                       // [2] (64, kPitch)
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const TensorSplit at(args, splits);
    const Rows rows(args);
    if (at.first_row >= rows.count) return;
    const bf16 * words = static_cast<const bf16 *>(args.laid_out_weight);
    auto issue_words = [&](bf16 * tile, int64_t first) {
        for (int idx = threadIdx.x; idx < kTensorCols * (kColumns / 8); idx += kTensorThreads) {
            const int r = idx / (kColumns / 8), k = (idx % (kColumns / 8)) * 8;
            const bool present = first + r < at.end_col;
            copy_16_async(tile + r * kPitch + k, present ? words + (first + r) * kColumns + k : words, present ? 16 : 0);
        }
    };
    issue_words(word_tiles, at.first_col);
    commit_async();
    load_hidden_rows(hidden_tile, args, rows, at.first_row, kColumns, kPitch, kDim, vector_loads);

    const int64_t row[2] = {at.first_row + warp * 16 + g, at.first_row + warp * 16 + g + 8};
    float run_max[2] = {-INFINITY, -INFINITY}, run_sum[2] = {0.0f, 0.0f};
    int buffer = 0;
    for (int64_t col0 = at.first_col; col0 < at.end_col; col0 += kTensorCols, buffer ^= 1) {
        if (col0 + kTensorCols < at.end_col) {
            issue_words(word_tiles + (buffer ^ 1) * kTensorCols * kPitch, col0 + kTensorCols);
            commit_async();
            wait_async<1>();
        } else {
            wait_async<0>();
        }
        __syncthreads();
        float logits[kTensorCols / 8][4];
        warp_product(logits, hidden_tile + warp * 16 * kPitch, word_tiles + buffer * kTensorCols * kPitch, kPitch, kColumns, lane);
        fold_tile(logits, at.end_col - col0 < kTensorCols ? int(at.end_col - col0) : kTensorCols, c, run_max, run_sum);
        __syncthreads();   // the next copies overwrite this buffer
    }
    write_partials(args, splits, at.split, row, rows.count, c, run_max, run_sum);
}

/// Wider rows: the words' tiles laid out here, one at a time.
__global__ void __launch_bounds__(kTensorThreads) tensor_core_partial_kernel(const TailLogProbKernelArgs args, int64_t splits,
                                                                             int inner_padded, bool vector_loads) {
    extern __shared__ __align__(128) unsigned char smem[];
    const int pitch = inner_padded + 8;                                           // bf16 elements, 16-byte multiple
    bf16 * hidden_tile = reinterpret_cast<bf16 *>(smem);                          // (64, inner_padded)
    bf16 * weight_tile = hidden_tile + kTensorRows * pitch;                       // (64, inner_padded)
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const TensorSplit at(args, splits);
    const Rows rows(args);
    if (at.first_row >= rows.count) return;
    const bf16 * weight = static_cast<const bf16 *>(args.weight);
    const bf16 * bias = static_cast<const bf16 *>(args.bias);
    load_hidden_rows(hidden_tile, args, rows, at.first_row, inner_padded, pitch, int(args.dim), vector_loads);

    const int64_t row[2] = {at.first_row + warp * 16 + g, at.first_row + warp * 16 + g + 8};
    float run_max[2] = {-INFINITY, -INFINITY}, run_sum[2] = {0.0f, 0.0f};
    for (int64_t col0 = at.first_col; col0 < at.end_col; col0 += kTensorCols) {
        __syncthreads();
        // The words' rows (zero past the split's end), the bias at column dim.
        for (int idx = threadIdx.x; idx < kTensorCols * (inner_padded / 8); idx += kTensorThreads) {
            const int r = idx / (inner_padded / 8), k = (idx % (inner_padded / 8)) * 8;
            const int64_t word = col0 + r;
            uint4 value = make_uint4(0, 0, 0, 0);
            bf16 * e = reinterpret_cast<bf16 *>(&value);
            if (word < at.end_col) {
                const bf16 * line = weight + word * args.dim;
                if (vector_loads && k + 8 <= args.dim) value = *reinterpret_cast<const uint4 *>(line + k);
                else if (k <= args.dim)
                    for (int i = 0; i < 8; ++i) e[i] = k + i < args.dim ? line[k + i] : k + i == args.dim ? bias[word] : __float2bfloat16(0.0f);
            }
            *reinterpret_cast<uint4 *>(weight_tile + r * pitch + k) = value;
        }
        __syncthreads();
        float logits[kTensorCols / 8][4];
        warp_product(logits, hidden_tile + warp * 16 * pitch, weight_tile, pitch, inner_padded, lane);
        fold_tile(logits, at.end_col - col0 < kTensorCols ? int(at.end_col - col0) : kTensorCols, c, run_max, run_sum);
    }
    write_partials(args, splits, at.split, row, rows.count, c, run_max, run_sum);
}

/// After either kernel: each row's splits joined, log p = target logit - log-sum-exp. target_logit_here: the row's
/// target logit is formed here in fp32 from the bf16 operands (the tensor-core kernel's case), else read from the
/// workspace where the partial kernel left it.
__global__ void combine_kernel(const TailLogProbKernelArgs args, int64_t splits, bool target_logit_here) {
    const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const Rows rows(args);
    if (row >= rows.count) return;
    float m = -INFINITY, l = 0.0f;
    for (int64_t s = 0; s < splits; ++s) join(m, l, args.workspace[row * splits + s], args.workspace[args.rows * splits + row * splits + s]);
    const float lse = m + logf(l);
    const int64_t physical = rows.physical(row);
    float target_logit;
    if (target_logit_here) {
        const int64_t target = args.target[physical];
        target_logit = NAN;
        if (target >= 0 && target < args.words) {
            const bf16 * h = static_cast<const bf16 *>(args.hidden) + physical * args.hidden_stride;
            const bf16 * w;
            if (args.laid_out_weight) {   // the word's weights and, at column tail_width(dim), its bias
                w = static_cast<const bf16 *>(args.laid_out_weight) + target * tail_laid_out_columns(args.dim);
                target_logit = __bfloat162float(w[tail_width(args.dim)]);
            } else {
                w = static_cast<const bf16 *>(args.weight) + target * args.dim;
                target_logit = __bfloat162float(static_cast<const bf16 *>(args.bias)[target]);
            }
            for (int64_t k = 0; k < args.dim; ++k) target_logit = fmaf(__bfloat162float(h[k]), __bfloat162float(w[k]), target_logit);
        }
    } else {
        target_logit = args.workspace[2 * args.rows * splits + row];
    }
    args.out[physical] = target_logit - lse;
    if (args.lse) args.lse[physical] = lse;
}

template <int kDim>
cudaError_t launch_laid_out(const TailLogProbKernelArgs & args, int64_t splits, bool vector_loads, cudaStream_t stream) {
    constexpr int smem = 3 * kTensorRows * (int(tail_laid_out_columns(kDim)) + 8) * int(sizeof(bf16));
    const cudaError_t status = cudaFuncSetAttribute(laid_out_partial_kernel<kDim>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (status != cudaSuccess) return status;
    laid_out_partial_kernel<kDim><<<dim3(unsigned((args.rows + kTensorRows - 1) / kTensorRows), unsigned(splits)), kTensorThreads, smem, stream>>>(
        args, splits, vector_loads);
    return cudaGetLastError();
}

cudaError_t launch_tensor_cores(const TailLogProbKernelArgs & args, cudaStream_t stream) {
    const int64_t splits = splits_for(args.rows, args.words, kTensorRows, kTensorCols);
    // 16-byte loads where every row starts 16-byte aligned.
    const bool vector_loads = args.dim % 8 == 0 && args.hidden_stride % 8 == 0 && reinterpret_cast<uintptr_t>(args.hidden) % 16 == 0
                              && (args.laid_out_weight || reinterpret_cast<uintptr_t>(args.weight) % 16 == 0);
    cudaError_t status;
    if (args.laid_out_weight) {
        const int64_t width = tail_width(args.dim);
        status = width == 16 ? launch_laid_out<16>(args, splits, vector_loads, stream) : width == 32 ? launch_laid_out<32>(args, splits, vector_loads, stream)
                 : width == 64 ? launch_laid_out<64>(args, splits, vector_loads, stream) : launch_laid_out<128>(args, splits, vector_loads, stream);
    } else {
        const int inner_padded = tensor_inner(args.dim);
        const size_t smem = size_t(kTensorRows + kTensorCols) * (inner_padded + 8) * sizeof(bf16);
        status = cudaFuncSetAttribute(tensor_core_partial_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
        if (status == cudaSuccess) {
            const dim3 grid(unsigned((args.rows + kTensorRows - 1) / kTensorRows), unsigned(splits));
            tensor_core_partial_kernel<<<grid, kTensorThreads, smem, stream>>>(args, splits, inner_padded, vector_loads);
        }
    }
    if (status != cudaSuccess) return status;
    combine_kernel<<<unsigned((args.rows + 255) / 256), 256, 0, stream>>>(args, splits, true);
    return cudaGetLastError();
}

template <typename Hidden, typename Weight>
cudaError_t launch(const TailLogProbKernelArgs & args, cudaStream_t stream) {
    const int64_t splits = splits_for(args.rows, args.words, kRows, kCols);
    const dim3 grid(unsigned((args.rows + kRows - 1) / kRows), unsigned(splits));
    partial_kernel<Hidden, Weight><<<grid, kThreads, 0, stream>>>(args, splits);
    combine_kernel<<<unsigned((args.rows + 255) / 256), 256, 0, stream>>>(args, splits, false);
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
    if (args.laid_out_weight && (!args.hidden_bf16 || args.dim > 128)) return "tail log-prob kernel: laid-out words want bf16 rows up to 128 wide";
    // The general tensor-core kernel holds a 64-row tile of each side in shared memory, (64 + 64) x (inner + 8) bf16
    // of an H200's 227 KB: up to 895 wide.
    if (args.hidden_bf16) status = args.laid_out_weight || (args.weight_bf16 && tensor_inner(args.dim) <= 896) ? launch_tensor_cores(args, stream)
                                   : args.weight_bf16 ? launch<bf16, bf16>(args, stream) : launch<bf16, float>(args, stream);
    else status = args.weight_bf16 ? launch<float, bf16>(args, stream) : launch<float, float>(args, stream);
    return error_text(status);
}

} // namespace studio
