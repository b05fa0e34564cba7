// Collectives between data-parallel ranks. One process per device, configured as torchrun does (RANK, WORLD_SIZE,
// LOCAL_RANK, MASTER_ADDR, MASTER_PORT). The ranks meet through LibTorch's c10d TCPStore; gradients travel through
// NCCL on CUDA and Gloo on CPU. A single process uses the trivial communicator.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

namespace studio {

struct RankInfo {
    int64_t rank = 0;
    int64_t world_size = 1;
    int64_t local_rank = 0;
    std::string master_addr = "127.0.0.1";
    int64_t master_port = 29500;
};

/// RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from the environment (defaults: one rank).
RankInfo rank_info_from_env();

class Communicator {
public:
    virtual ~Communicator() = default;
    virtual int64_t rank() const { return 0; }
    virtual int64_t world_size() const { return 1; }
    /// Averages flat contiguous tensors (the optimizer's gradient buffers) over ranks, in place.
    virtual void average(const std::vector<torch::Tensor> & tensors) { (void) tensors; }
    /// Sums a small tensor over ranks in place.
    virtual void sum(torch::Tensor & tensor) { (void) tensor; }
    virtual void barrier() {}
    /// Leaves the group at a run's normal end, after the ranks' last barrier: each rank stops its backend, and rank 0
    /// (the store's server) returns once all have. Never throws.
    virtual void finish() {}
    /// Raises an error on every rank if any rank reported a failure (collective).
    virtual void check_all_ok(bool ok, const std::string & what) { (void) ok; (void) what; }
};

/// The communicator for this process: trivial for world_size 1, else Gloo (CPU) or NCCL (CUDA) over a TCPStore.
/// `timeout_s` bounds every collective, so a dead rank stops the others instead of hanging them.
std::unique_ptr<Communicator> communicator_create(const RankInfo & info, const torch::Device & device, int64_t timeout_s = 60);

} // namespace studio
