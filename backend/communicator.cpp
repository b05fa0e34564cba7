#include "communicator.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <stdexcept>

#include <torch/torch.h>
#include <torch/version.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
// The pip LibTorch ships no Gloo headers: CUDA builds reduce through NCCL only.
#ifndef STUDIO_CUDA
#define STUDIO_GLOO 1
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef STUDIO_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace studio {

namespace {

// LibTorch 2 split the process group into a front (ProcessGroup) and per-device backends (ProcessGroupGloo/NCCL).
#if TORCH_VERSION_MAJOR >= 2
using GroupHandle = c10::intrusive_ptr<c10d::Backend>;
#else
using GroupHandle = c10::intrusive_ptr<c10d::ProcessGroup>;
#endif

int64_t env_int(const char * name, int64_t fallback) {
    const char * v = std::getenv(name);
    if (!v || !*v) return fallback;
    char * end = nullptr;
    const long long parsed = std::strtoll(v, &end, 10);
    if (*end != '\0') throw std::runtime_error(std::string("environment: ") + name + "=" + v + " is not an integer");
    return parsed;
}

// Chunks of ~25 MB, as DDP's buckets: few collectives, none too large.
constexpr int64_t kBucketElements = 25 * 1024 * 1024 / 4;

class ProcessGroupCommunicator : public Communicator {
public:
    ProcessGroupCommunicator(c10::intrusive_ptr<c10d::Store> store, GroupHandle group, int64_t rank, int64_t world)
        : store_(std::move(store)), group_(std::move(group)), rank_(rank), world_(world) {}

    int64_t rank() const override { return rank_; }
    int64_t world_size() const override { return world_; }

    void average(const std::vector<torch::Tensor> & tensors) override {
        // All chunks are queued before any is waited on, so NCCL streams them back to back.
        std::vector<c10::intrusive_ptr<c10d::Work>> pending;
        for (const auto & flat : tensors) {
            for (int64_t offset = 0; offset < flat.numel(); offset += kBucketElements) {
                std::vector<torch::Tensor> chunk{flat.narrow(0, offset, std::min(kBucketElements, flat.numel() - offset))};
                pending.push_back(group_->allreduce(chunk));
            }
        }
        for (auto & work : pending) run(work);
        for (const auto & flat : tensors) flat.div_((double) world_);
    }

    void sum(torch::Tensor & tensor) override {
        std::vector<torch::Tensor> v{tensor};
        run(group_->allreduce(v));
    }

    void barrier() override { run(group_->barrier()); }

    // NCCL's watchdog thread polls the store until its group stops; rank 0 serves the store and exits as soon as it
    // is done, so a rank still polling then warns at exit that the store has gone. So every rank stops its group
    // first, and rank 0 keeps the store open until all have. The run's work is done and saved by now: a rank that
    // fails here costs at most that warning, never the run's status.
    void finish() override {
        try {
#if defined(STUDIO_NCCL) && TORCH_VERSION_MAJOR >= 2
            if (auto * nccl = dynamic_cast<c10d::ProcessGroupNCCL *>(group_.get())) nccl->shutdown();
#endif
            const auto finished = [](int64_t rank) { return "studio/finished/" + std::to_string(rank); };
            if (rank_ != 0) {
                store_->set(finished(rank_), std::vector<uint8_t>{});   // the key alone is the signal
                return;
            }
            std::vector<std::string> others;
            for (int64_t rank = 1; rank < world_; ++rank) others.push_back(finished(rank));
            store_->wait(others);   // bounded by the store's timeout
        } catch (const std::exception &) {
        }
    }

    void check_all_ok(bool ok, const std::string & what) override {
        auto flag = torch::full({1}, ok ? 0.0f : 1.0f, torch::TensorOptions().device(device_for_collectives()));
        sum(flag);
        if (flag.item<float>() > 0) throw std::runtime_error(what + " failed on " + std::to_string((int) flag.item<float>()) + " rank(s)");
    }

    torch::Device device_for_collectives() const { return device_; }
    torch::Device device_ = torch::kCPU;

private:
    void run(const c10::intrusive_ptr<c10d::Work> & work) {
        try {
            work->wait();
        } catch (const std::exception & e) {
            std::string message = e.what();
            const auto nl = message.find('\n');
            throw std::runtime_error("distributed: rank " + std::to_string(rank_) + " lost contact with the other ranks (" +
                                     message.substr(0, nl) + "); another rank has probably died — see its log");
        }
    }

    c10::intrusive_ptr<c10d::Store> store_;
    GroupHandle group_;
    int64_t rank_, world_;
};

} // namespace

RankInfo rank_info_from_env() {
    RankInfo info;
    info.rank = env_int("RANK", 0);
    info.world_size = env_int("WORLD_SIZE", 1);
    info.local_rank = env_int("LOCAL_RANK", info.rank);
    if (const char * addr = std::getenv("MASTER_ADDR"); addr && *addr) info.master_addr = addr;
    info.master_port = env_int("MASTER_PORT", 29500);
    if (info.world_size < 1 || info.rank < 0 || info.rank >= info.world_size) {
        throw std::runtime_error("environment: RANK=" + std::to_string(info.rank) + " is not in [0, WORLD_SIZE=" + std::to_string(info.world_size) + ")");
    }
    return info;
}

std::unique_ptr<Communicator> communicator_create(const RankInfo & info, const torch::Device & device, int64_t timeout_s) {
    if (info.world_size == 1) return std::make_unique<Communicator>();
    const auto timeout = std::chrono::milliseconds(timeout_s * 1000);
    c10d::TCPStoreOptions options;
    options.port = (uint16_t) info.master_port;
    options.isServer = info.rank == 0;
    options.numWorkers = (size_t) info.world_size;
    options.waitWorkers = true;
    options.timeout = timeout;
    c10::intrusive_ptr<c10d::Store> store;
    try {
        store = c10::make_intrusive<c10d::TCPStore>(info.master_addr, options);
    } catch (const std::exception & e) {
        throw std::runtime_error("distributed: rank " + std::to_string(info.rank) + " could not meet the others at " + info.master_addr + ":" +
                                 std::to_string(info.master_port) + " within " + std::to_string(timeout_s) + " s (check MASTER_ADDR/MASTER_PORT)");
    }
    GroupHandle group;
    if (device.is_cuda()) {
#ifdef STUDIO_NCCL
        auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
        nccl_options->timeout = timeout;
        group = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, (int) info.rank, (int) info.world_size, nccl_options);
#else
        throw std::runtime_error("distributed: this build has no NCCL; rebuild against a CUDA LibTorch with NCCL (scripts/gpu-check.sh shows how)");
#endif
    } else {
#ifndef STUDIO_GLOO
        throw std::runtime_error("distributed: CPU ranks need Gloo, which this CUDA build lacks; set device \"cuda\"");
#else
        auto gloo_options = c10d::ProcessGroupGloo::Options::create();
        gloo_options->timeout = timeout;
        // Loopback when the ranks share this machine; otherwise the interface that reaches MASTER_ADDR.
        const bool local = info.master_addr == "127.0.0.1" || info.master_addr == "localhost";
        gloo_options->devices.push_back(local ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                              : c10d::ProcessGroupGloo::createDefaultDevice());
        group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, (int) info.rank, (int) info.world_size, gloo_options);
#endif
    }
    auto communicator = std::make_unique<ProcessGroupCommunicator>(store, group, info.rank, info.world_size);
    communicator->device_ = device;
    return communicator;
}

} // namespace studio
