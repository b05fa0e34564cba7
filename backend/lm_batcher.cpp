#include "lm_batcher.h"

#include <random>
#include <stdexcept>
#include <string>

#include <torch/torch.h>

namespace studio {

LMBatcher::LMBatcher(const std::vector<int32_t> & tokens, int64_t global_batch, int64_t tgt_len, int64_t rank, int64_t world_size)
    : global_batch_(global_batch), tgt_len_(tgt_len), rank_(rank), world_size_(world_size) {
    if (global_batch % world_size != 0) throw std::invalid_argument("batch " + std::to_string(global_batch) + " is not divisible by " + std::to_string(world_size) + " ranks");
    row_length_ = (int64_t) tokens.size() / global_batch;
    if (row_length_ < 2) {
        throw std::invalid_argument("the split has " + std::to_string(tokens.size()) + " tokens, too few for batch " + std::to_string(global_batch));
    }
    const int64_t rows = global_batch / world_size;
    auto all = torch::from_blob(const_cast<int32_t *>(tokens.data()), {(int64_t) tokens.size()}, torch::kInt)
                   .narrow(0, 0, global_batch * row_length_)
                   .view({global_batch, row_length_});                   // (B, L)
    base_ = all.narrow(0, rank * rows, rows).to(torch::kLong).contiguous(); // (B/N, L)
    data_ = base_;
    num_batches_ = (row_length_ - 1 + tgt_len - 1) / tgt_len;
}

LMBatch LMBatcher::batch(int64_t index, const torch::Device & device) const {
    if (index < 0 || index >= num_batches_) throw std::out_of_range("batch index " + std::to_string(index) + " of " + std::to_string(num_batches_));
    const int64_t start = index * tgt_len_;
    const int64_t length = std::min(tgt_len_, row_length_ - 1 - start);
    LMBatch b;
    b.input = data_.narrow(1, start, length).to(device, /*non_blocking=*/true);
    b.target = data_.narrow(1, start + 1, length).to(device, /*non_blocking=*/true);
    return b;
}

void LMBatcher::roll_for_epoch(uint64_t seed, int64_t epoch) {
    std::mt19937_64 rng(seed * 1000003ull + (uint64_t) epoch * 7919ull + 17ull);
    std::uniform_int_distribution<int64_t> shift(1, std::max<int64_t>(1, row_length_ - 2));
    std::vector<int64_t> shifts;
    for (int64_t b = 0; b < global_batch_; ++b) shifts.push_back(shift(rng)); // drawn for all rows: ranks agree
    const int64_t rows = global_batch_ / world_size_;
    data_ = torch::empty_like(base_);
    for (int64_t r = 0; r < rows; ++r) data_[r].copy_(torch::roll(base_[r], shifts[(size_t) (rank_ * rows + r)], 0));
}

} // namespace studio
