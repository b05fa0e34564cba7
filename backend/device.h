// Device and precision helpers: everything that differs between Debian's CPU LibTorch 1.13 and the CUDA LibTorch
// of PyTorch 2.x is guarded here, once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <torch/types.h>

namespace studio {

int64_t cuda_device_count();
/// "cpu", "cuda" or "auto" (+ local rank) -> a device; throws ConfigError if CUDA is asked for and absent.
torch::Device device_resolve(const std::string & name, int64_t local_rank = 0);
/// Waits for queued GPU work (for timing); no-op on CPU.
void device_synchronize(const torch::Device & device);
/// Peak bytes allocated on a CUDA device since the last reset; 0 on CPU.
int64_t device_peak_memory(const torch::Device & device);
void device_reset_peak_memory(const torch::Device & device);

/// How many of `units` (heads, rows) to compute at a time so that a temporary of `bytes_per_unit` each stays under
/// ~16 MB: on the CPU without a gradient; all at once otherwise. Temporaries that small come back from glibc's free
/// lists step after step, where one large tensor would be fresh pages from the kernel every time (docs/benchmarks.md,
/// "CPU").
int64_t cpu_inference_block(const torch::Tensor & like, int64_t units, int64_t bytes_per_unit);

/// bf16 autocast on CUDA for the guard's lifetime (weights stay fp32); does nothing when disabled or on CPU.
class AutocastGuard {
public:
    AutocastGuard(const torch::Device & device, bool bf16);
    ~AutocastGuard();
    AutocastGuard(const AutocastGuard &) = delete;
    AutocastGuard & operator=(const AutocastGuard &) = delete;

private:
    bool active_ = false;
    bool previous_ = false;
};

/// The dtype CUDA work on x computes in: the autocast dtype while CUDA autocast is on, else x's own.
torch::ScalarType cuda_compute_dtype(const torch::Tensor & x);
inline bool is_bf16_or_fp32(torch::ScalarType t) { return t == torch::kBFloat16 || t == torch::kFloat; }

// Calling our CUDA kernels (backend/*_kernel.h, plain C++ interfaces).
/// Whether t's rows can be read 16 bytes at a time: unit last stride, a 16-byte aligned start and every other
/// stride a multiple of 16 bytes.
bool rows_16_byte_aligned(const torch::Tensor & t);
/// The current CUDA stream of device, as the void * our kernels' launchers take (CUDA builds; throws elsewhere).
void * current_cuda_stream(const torch::Device & device);
/// Throws a launcher's error (null: none), naming the kernel and the way back to LibTorch's kernels.
void check_kernel_launch(const char * error, const char * kernel);

/// A small device tensor copied to the host in the background: the copy queues behind the GPU work so far and get()
/// waits for the copy alone, so work queued after it keeps the GPU busy while the host waits. On the CPU, the tensor.
class HostCopy {
public:
    HostCopy() = default;
    explicit HostCopy(const torch::Tensor & tensor);
    bool defined() const { return host_.defined(); }
    /// The host tensor, once the copy has landed.
    const torch::Tensor & get();

private:
    torch::Tensor host_;
    std::shared_ptr<void> ready_; // CUDA event (CUDA builds)
};

/// Wall time of GPU work: CUDA events on CUDA, a steady clock after synchronising on the CPU.
class DeviceTimer {
public:
    explicit DeviceTimer(const torch::Device & device);
    ~DeviceTimer();
    DeviceTimer(const DeviceTimer &) = delete;
    DeviceTimer & operator=(const DeviceTimer &) = delete;
    void start();
    double stop_ms();

private:
    torch::Device device_;
    double start_s_ = 0;
    void * events_ = nullptr; // CUDA event pair (CUDA builds)
};

/// Records a Chrome trace (chrome://tracing, Perfetto) of everything between start() and stop(): LibTorch 1.x's
/// legacy profiler, or Kineto with the CUDA kernels on LibTorch 2.x. scripts/trace_summary.py sums it by kernel.
class TraceRecorder {
public:
    TraceRecorder();
    ~TraceRecorder();
    void start(const std::string & path);
    void stop();
    bool active() const { return !path_.empty(); }

private:
    std::string path_;
    void * legacy_ = nullptr;
};

/// Whether the environment variable `name` is set to exactly `value` (the STUDIO_*=ops timing switches).
bool environment_is(const char * name, const char * value);

/// Seeds the default generators (CPU and the current CUDA device) for one training step, from (seed, stream, step):
/// dropout masks are then a function of the step, so a resumed run draws exactly what an uninterrupted one did.
void seed_step(uint64_t seed, uint64_t stream, uint64_t step);
uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c);

} // namespace studio
