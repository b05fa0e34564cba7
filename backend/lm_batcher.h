// Ordered language-model batching as the reference iterator does it: the token stream is cut into `global_batch`
// contiguous rows; rank r of N takes rows [r*B/N, (r+1)*B/N) (so N ranks see exactly the rows one rank would);
// batch k is columns [k*T, k*T+T) with targets shifted by one; the last batch is shorter. Memory is carried between
// consecutive batches by the caller. Optionally every row is rolled by a random offset at each epoch.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/types.h>

namespace studio {

struct LMBatch {
    torch::Tensor input;   ///< (B_rank, T) int64
    torch::Tensor target;  ///< (B_rank, T) int64
};

class LMBatcher {
public:
    LMBatcher(const std::vector<int32_t> & tokens, int64_t global_batch, int64_t tgt_len, int64_t rank = 0, int64_t world_size = 1);

    int64_t num_batches() const { return num_batches_; }
    int64_t row_length() const { return row_length_; }
    int64_t rows() const { return data_.size(0); }
    /// Tokens that carry a prediction in one pass over this rank's rows.
    int64_t tokens_per_pass() const { return rows() * (row_length_ - 1); }
    LMBatch batch(int64_t index, const torch::Device & device) const;
    /// Rolls every row by randint(1, row_length - 1) drawn from (seed, epoch): the same on every rank and on resume.
    void roll_for_epoch(uint64_t seed, int64_t epoch);

private:
    torch::Tensor base_;   ///< this rank's rows, unrolled
    torch::Tensor data_;   ///< this rank's rows for the current epoch
    int64_t global_batch_, tgt_len_, rank_, world_size_;
    int64_t row_length_ = 0, num_batches_ = 0;
};

} // namespace studio
