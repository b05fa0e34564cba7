// CUDA kernels for LAMB's update over an optimizer group's flat buffers (optimizer.h). The update is bound by memory:
// as a dozen LibTorch operations it moved some 104 bytes per parameter a step, 2.5 ms of a 35 ms step for the reference
// model's 92M parameters on an H200. Here two passes move 36: one forms the moments and the update from the clipped
// gradient (the clip's coefficient applied as it is read, not in a pass of its own) and each chunk's sums of squares
// for the trust ratios, one applies the update with each tensor's trust ratio, finding each element's tensor from
// the tensors' starts rather than reading a per-element index. Plain C++ interface.
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
    /// Where given (with 16-byte aligned buffers): the group cut into chunks that never cross a tensor's start, chunk
    /// c the elements [chunk_bounds[c], chunk_bounds[c+1]), each a multiple of 4 but the group's end. One block takes
    /// a chunk and writes the sums of p^2 and update^2 over it to partial_squares[2c] and [2c+1], so that the trust
    /// ratios need no pass of their own over p and the update (lamb_trust below).
    const int64_t * chunk_bounds = nullptr;
    int64_t chunks = 0;
    float * partial_squares = nullptr;
};

/// Each tensor's step size from the chunks' sums, summed by a warp in a fixed order: step[t] = lr[0] x lr_scale x r where
/// r = min(||p||, 10) / (||update|| + eps), or 1 where either norm is 0 (LAMB's trust ratio, as the LibTorch path
/// forms it). Tensor t owns chunks first_chunk[t] .. first_chunk[t+1]-1.
struct LambTrustKernelArgs {
    const float * partial_squares = nullptr;
    const int32_t * first_chunk = nullptr;   ///< (tensors + 1)
    int tensors = 0;
    const float * lr = nullptr;              ///< (1,) on the device
    float lr_scale = 1.0f, eps = 1e-8f;
    float * step = nullptr;                  ///< (tensors,)
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
const char * launch_lamb_trust(const LambTrustKernelArgs & args, void * stream);

} // namespace studio
