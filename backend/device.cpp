#include "device.h"

#include <torch/torch.h>
#include <torch/version.h>
#include <ATen/autocast_mode.h>

#include "config.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include <torch/version.h>
#if TORCH_VERSION_MAJOR < 2
#include <torch/csrc/autograd/profiler_legacy.h>
#else
#include <torch/csrc/autograd/profiler_kineto.h>
#endif
#ifdef STUDIO_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace studio {

int64_t cuda_device_count() {
    return torch::cuda::is_available() ? (int64_t) torch::cuda::device_count() : 0;
}

torch::Device device_resolve(const std::string & name, int64_t local_rank) {
    const int64_t gpus = cuda_device_count();
    if (name == "cpu" || (name == "auto" && gpus == 0)) return torch::Device(torch::kCPU);
    if (gpus == 0) throw ConfigError("config error: device: \"cuda\" was asked for but this build or machine has no CUDA GPU; use \"cpu\" or \"auto\"");
    if (local_rank >= gpus) throw ConfigError("config error: gpus: rank " + std::to_string(local_rank) + " needs GPU " + std::to_string(local_rank) + ", this machine has " + std::to_string(gpus));
    return torch::Device(torch::kCUDA, (c10::DeviceIndex) local_rank);
}

void device_synchronize(const torch::Device & device) {
    if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

int64_t device_peak_memory(const torch::Device & device) {
#ifdef STUDIO_CUDA
    if (device.is_cuda()) {
        auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
        return stats.allocated_bytes[0].peak; // StatType::AGGREGATE
    }
#endif
    (void) device;
    return 0;
}

int64_t cpu_inference_block(const torch::Tensor & like, int64_t units, int64_t bytes_per_unit) {
    if (like.is_cuda() || torch::GradMode::is_enabled()) return units;
    return std::max<int64_t>(1, (int64_t(16) << 20) / std::max<int64_t>(1, bytes_per_unit));
}

void device_reset_peak_memory(const torch::Device & device) {
#ifdef STUDIO_CUDA
    if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
    (void) device;
}

AutocastGuard::AutocastGuard(const torch::Device & device, bool bf16) {
    if (!bf16 || !device.is_cuda()) return;
    active_ = true;
#if TORCH_VERSION_MAJOR >= 2
    previous_ = at::autocast::is_autocast_enabled(at::kCUDA);
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
#else
    previous_ = at::autocast::is_enabled();
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
    at::autocast::set_enabled(true);
#endif
}

AutocastGuard::~AutocastGuard() {
    if (!active_) return;
#if TORCH_VERSION_MAJOR >= 2
    at::autocast::set_autocast_enabled(at::kCUDA, previous_);
#else
    at::autocast::set_enabled(previous_);
#endif
    at::autocast::clear_cache();
}

torch::ScalarType cuda_compute_dtype(const torch::Tensor & x) {
#if TORCH_VERSION_MAJOR >= 2
    if (at::autocast::is_autocast_enabled(at::kCUDA)) return at::autocast::get_autocast_dtype(at::kCUDA);
#else
    if (at::autocast::is_enabled()) return at::autocast::get_autocast_gpu_dtype();
#endif
    return x.scalar_type();
}

bool rows_16_byte_aligned(const torch::Tensor & t) {
    if (t.dim() == 0 || t.stride(-1) != 1 || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
    for (int64_t d = 0; d + 1 < t.dim(); ++d)
        if ((t.stride(d) * (int64_t) t.element_size()) % 16 != 0) return false;
    return true;
}

void * current_cuda_stream(const torch::Device & device) {
#ifdef STUDIO_CUDA
    return c10::cuda::getCurrentCUDAStream(device.index()).stream();
#else
    TORCH_CHECK(false, "no CUDA stream on ", device.str(), ": this LibTorch has no CUDA");
#endif
}

void check_kernel_launch(const char * error, const char * kernel) {
    TORCH_CHECK(error == nullptr, kernel, " kernel: ", error, " (STUDIO_ATTENTION=sdpa runs LibTorch's kernels instead)");
}

HostCopy::HostCopy(const torch::Tensor & tensor) {
#ifdef STUDIO_CUDA
    if (tensor.is_cuda()) {
        host_ = torch::empty(tensor.sizes(), tensor.options().device(torch::kCPU).pinned_memory(true));
        host_.copy_(tensor, /*non_blocking=*/true);
        auto event = std::make_shared<at::cuda::CUDAEvent>();
        event->record(c10::cuda::getCurrentCUDAStream(tensor.device().index()));
        ready_ = std::move(event);
        return;
    }
#endif
    host_ = tensor;
}

const torch::Tensor & HostCopy::get() {
#ifdef STUDIO_CUDA
    if (ready_) {
        static_cast<at::cuda::CUDAEvent *>(ready_.get())->synchronize();
        ready_.reset();
    }
#endif
    return host_;
}

namespace {
double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
#ifdef STUDIO_CUDA
struct EventPair { at::cuda::CUDAEvent begin{cudaEventDefault}, end{cudaEventDefault}; };
#endif
} // namespace

DeviceTimer::DeviceTimer(const torch::Device & device) : device_(device) {
#ifdef STUDIO_CUDA
    if (device_.is_cuda()) events_ = new EventPair();
#endif
}

DeviceTimer::~DeviceTimer() {
#ifdef STUDIO_CUDA
    delete static_cast<EventPair *>(events_);
#endif
}

void DeviceTimer::start() {
#ifdef STUDIO_CUDA
    if (events_) { static_cast<EventPair *>(events_)->begin.record(); return; }
#endif
    device_synchronize(device_);
    start_s_ = now_s();
}

double DeviceTimer::stop_ms() {
#ifdef STUDIO_CUDA
    if (events_) {
        auto * e = static_cast<EventPair *>(events_);
        e->end.record();
        e->end.synchronize();
        return (double) e->begin.elapsed_time(e->end);
    }
#endif
    device_synchronize(device_);
    return (now_s() - start_s_) * 1000.0;
}

bool environment_is(const char * name, const char * value) {
    const char * set = std::getenv(name);
    return set && std::strcmp(set, value) == 0;
}

uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c) {
    // splitmix64 over the three words
    uint64_t x = a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull) * 0xBF58476D1CE4E5B9ull ^ (c + 0x85157AF5ull) * 0x94D049BB133111EBull;
    x ^= x >> 30; x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27; x *= 0x94D049BB133111EBull;
    x ^= x >> 31;
    return x;
}

TraceRecorder::TraceRecorder() = default;
TraceRecorder::~TraceRecorder() { stop(); }

void TraceRecorder::start(const std::string & path) {
    stop();
    path_ = path;
#if TORCH_VERSION_MAJOR < 2
    legacy_ = new torch::autograd::profiler::RecordProfile(path);
#else
    namespace impl = torch::profiler::impl;
    const impl::ProfilerConfig config(impl::ProfilerState::KINETO, false, false, false, false);
    std::set<impl::ActivityType> activities{impl::ActivityType::CPU};
    if (cuda_device_count() > 0) activities.insert(impl::ActivityType::CUDA);
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
#endif
}

void TraceRecorder::stop() {
    if (path_.empty()) return;
#if TORCH_VERSION_MAJOR < 2
    delete static_cast<torch::autograd::profiler::RecordProfile *>(legacy_);
    legacy_ = nullptr;
#else
    torch::autograd::profiler::disableProfiler()->save(path_);
#endif
    path_.clear();
}

void seed_step(uint64_t seed, uint64_t stream, uint64_t step) {
    torch::manual_seed(mix_seed(seed, stream, step) >> 1);
}

} // namespace studio
