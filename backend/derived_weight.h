// A tensor formed from parameters (a concatenation of several weights, say), kept from one inference forward to the
// next while those parameters stay as they were: the products it feeds then need no copy of the weights each step.
// A parameter written in place by an ATen operation (a checkpoint's load, copy_) gets a new version and is seen. Our
// optimizer's kernels and its CUDA graphs write parameters without one: they run in training, so a module that keeps
// a DerivedWeight clears it whenever its mode is set (train()).
#pragma once

#include <functional>
#include <vector>

#include <torch/types.h>

namespace studio {

class DerivedWeight {
public:
    /// make() formed from `sources`: the value kept from an earlier call with the same `form` (whatever else the value
    /// depends on: its dtype, say) while every source is the same tensor (same storage) at the same version; else
    /// make() anew, kept for later calls. With a gradient to carry, or while the current CUDA stream is being captured
    /// into a graph (whose kernels only run at replay), make() is returned and nothing is kept.
    torch::Tensor get(const std::vector<torch::Tensor> & sources, int64_t form, const std::function<torch::Tensor()> & make);
    /// Forgets the kept value and the sources it holds.
    void clear();
    /// Whether the last get() returned the kept value (for tests).
    bool last_was_kept() const { return last_was_kept_; }

private:
    bool holds(const std::vector<torch::Tensor> & sources, int64_t form) const;

    /// Detached aliases of the sources: they share the sources' storages and version counters, and keep those
    /// storages alive, so no later tensor can take the same address with other values.
    std::vector<torch::Tensor> sources_;
    std::vector<int64_t> versions_;
    int64_t form_ = 0;
    torch::Tensor value_;
    bool last_was_kept_ = false;
};

} // namespace studio
