// CUDA kernels for LAMB's update over an optimizer group's flat buffers (optimizer.h). The update is bound by memory:
// as a dozen LibTorch operations it moved some 104 bytes per parameter a step, 2.5 ms of a 35 ms step for the reference
// model's 92M parameters on an H200. Here two passes move 44: one forms the moments and the update from the clipped
// gradient (the clip's coefficient applied as it is read, not in a pass of its own), one applies the update with
// each tensor's trust ratio, finding each element's tensor from the tensors' starts rather than reading a per-element
// index (the ratios come from LibTorch's multi-tensor norms in between). Plain C++ interface.
#pragma once

#include <cstdint>

namespace studio {

/// m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  update = m / (sqrt(v) + eps) + weight_decay p. fp32, n elements.
/// 1 - b1 and 1 - b2 come from the host, rounded once from double as LibTorch rounds its scalar arguments.
/// g = grad x grad_scale[0] where grad_scale is given (the clip's coefficient), else grad. A grad_scale that is not
/// finite leaves everything as it is (the step is skipped).
struct LambMomentsKernelArgs {
    const float * grad = nullptr;
    const float * grad_scale = nullptr;
    const float * param = nullptr;
    float * exp_avg = nullptr;
    float * exp_avg_sq = nullptr;
    float * update = nullptr;
    int64_t n = 0;
    float one_minus_beta1 = 0.1f, beta2 = 0.999f, one_minus_beta2 = 0.001f, eps = 1e-8f, weight_decay = 0.0f;
};

/// p -= step[t] x update[i] for element i of tensor t: step holds each tensor's lr x trust ratio; tensor t owns the
/// elements from starts[t] (ascending, starts[0] = 0, each a multiple of 4) to the next start.
struct LambApplyKernelArgs {
    float * param = nullptr;
    const float * update = nullptr;
    const float * step = nullptr;
    const int64_t * starts = nullptr;
    int tensors = 0;
    int64_t n = 0;
    const float * skip_unless_finite = nullptr;   ///< the moments' grad_scale: not finite, and nothing changes
};

/// Launch on the given cudaStream_t; nullptr on success, else CUDA's error text.
const char * launch_lamb_moments(const LambMomentsKernelArgs & args, void * stream);
const char * launch_lamb_apply(const LambApplyKernelArgs & args, void * stream);

} // namespace studio
