// LAMB as the reference's HappyLamb computes it (no bias correction; trust ratio ||p||.clamp(0,10) / ||update||,
// 1 when either norm is 0) and Adam (decoupled weight decay), with parameter groups for weight decay and the
// gates' own learning rate. State is a named tensor map, so it checkpoints through safetensors.
//
// Each group keeps its parameters, gradients and moments in one flat buffer, and the parameters become views of it:
// an update is a dozen kernels over the whole group instead of a dozen per tensor (the reference's per-tensor loop
// is a third of its step on a GPU), and zeroing, clipping and the data-parallel all-reduce are one call each.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "config.h"
#include "tensor_io.h"

namespace studio {

struct ParamGroup {
    std::string name;                 ///< e.g. "decay", "no_decay", "gates"; names the state in checkpoints
    std::vector<torch::Tensor> params;
    double lr_scale = 1.0;            ///< this group's lr = schedule lr x lr_scale
    double weight_decay = 0.0;
};

class Optimizer {
public:
    /// Moves every parameter into its group's flat buffer (same values, same device): build the optimizer after
    /// the model is on its device and do not move the model afterwards (step() checks).
    Optimizer(OptimizerConfig config, std::vector<ParamGroup> groups);
    ~Optimizer();
    Optimizer(const Optimizer &) = delete;
    Optimizer & operator=(const Optimizer &) = delete;

    /// Where LAMB runs by our CUDA kernels (all groups on a CUDA device): after one eager call each, clip_gradients
    /// and step are captured as CUDA graphs and replayed, a launch each for what the host issued as some sixty (the
    /// learning rate reaches the graph through a device scalar). Off by default.
    void use_cuda_graphs(bool enabled);

    /// One update of every parameter at learning rate `lr` (before each group's scale). A parameter whose gradient
    /// autograd never touched counts as having a zero gradient, so a resumed run updates exactly the parameters an
    /// uninterrupted one does (momentum keeps moving a parameter once it has had a gradient).
    void step(double lr);
    void zero_grad();
    const std::vector<ParamGroup> & groups() const { return groups_; }

    /// The flat gradient buffer of each group (the parameters' .grad() are views of these).
    std::vector<torch::Tensor> flat_gradients();
    /// Scales the gradients so that their global norm is at most `max_norm` (no-op for max_norm <= 0), as
    /// torch.nn.utils.clip_grad_norm_ does; returns the norm before clipping as a 0-dim tensor on the device,
    /// so no step waits for the host (from a graph: its buffer, valid until the next call). The next step() applies
    /// the coefficient as it reads the gradients (a pass over them less), so the buffers hold the unclipped gradients
    /// until then; zero_grad() drops it. Where the norm is not finite, that step() changes nothing (no moment, no
    /// parameter, no step count on LibTorch's path): our kernels skip on the device, so the host need not look first.
    torch::Tensor clip_gradients(double max_norm);
    /// Makes the next step() change nothing, as a non-finite gradient norm does, where `value` (a tensor on the device,
    /// such as the step's loss) holds a non-finite element: on the device, so that no step waits for the host. After
    /// clip_gradients (else as if clipped with no maximum).
    void skip_step_unless_finite(const torch::Tensor & value);

    TensorMap state() const;
    /// Restores state(); `source` names the checkpoint in errors.
    void load_state(const TensorMap & state, const std::string & source);

private:
    struct FlatGroup {
        torch::Tensor param, grad, exp_avg, exp_avg_sq;  // (numel,) each
        torch::Tensor segment;                           // (numel,) each element's tensor: LibTorch's path, made when first used
        torch::Tensor starts;                            // (tensors,) int64 on the device: offsets, for our kernels
        torch::Tensor update;                            // (numel,) LAMB's update, reused every step
        std::vector<torch::Tensor> param_slices, update_slices;   // per-tensor views, made once (not twice a step)
        std::vector<int64_t> offsets, numels;
        std::vector<int64_t> spans;                      // elements from one tensor's start to the next's (padding included)
        std::vector<const void *> param_ptrs, grad_ptrs;   // where each parameter and its gradient live in the buffers
        // Our LAMB kernels' chunks (lamb_kernel.h), made when first used: bounds (chunks + 1) int64, each tensor's
        // first chunk (tensors + 1) int32, and two sums of squares a chunk.
        torch::Tensor chunk_bounds, first_chunk, partial_squares;
    };
    struct Graphs;
    torch::Tensor clip_eagerly(double max_norm);
    void step_eagerly(double lr, bool fill_lr);
    /// Whether the graphs apply: enabled, and every group updated by our kernels.
    bool graphs_apply() const;
    /// Re-links gradients that someone replaced (tests assign .grad() directly) into the flat buffer.
    void adopt_gradients(size_t group);
    std::vector<torch::Tensor> slices(const torch::Tensor & flat, size_t group) const;
    static std::vector<torch::Tensor> slices_of(const FlatGroup & f, const torch::Tensor & flat);
    /// Each element's tensor (padding counts as the tensor before it), made on first use.
    static const torch::Tensor & element_tensors(FlatGroup & f);
    /// Cuts the group into our kernels' chunks on first use (lamb_kernel.h): none crosses a tensor's start.
    static void make_chunks(FlatGroup & f);
    /// LAMB's per-tensor lr multipliers ||p||.clamp(0,10) / (||update|| + eps), 1 where either norm is 0: (tensors,).
    torch::Tensor trust_ratios(const FlatGroup & f) const;
    /// Whether our CUDA kernels (lamb_kernel.h) update this group: two passes over its buffers instead of a dozen.
    bool lamb_kernels_take(const FlatGroup & f) const;
    /// lr: (1,) on the device, the schedule's rate (before the group's scale).
    /// grad_scale: the pending clip's coefficient, (1,) on the device (NaN: skip the step), or undefined.
    void lamb_step_by_kernels(FlatGroup & f, const torch::Tensor & lr, double lr_scale, double weight_decay, const torch::Tensor & grad_scale);

    OptimizerConfig config_;
    std::vector<ParamGroup> groups_;
    std::vector<FlatGroup> flat_;
    int64_t steps_ = 0;
    torch::Tensor clip_coefficient_;     // (1,) on the device: the last clip's coefficient, NaN for a non-finite norm
    std::optional<double> pending_clip_; // the max norm of the clip the next step applies (or skips on, where NaN)
    std::unique_ptr<Graphs> graphs_;
};

/// The reference's groups: no weight decay for norms and gates; gates at lr x gate_lr_multiplier.
std::vector<ParamGroup> make_param_groups(const torch::nn::Module & model, double weight_decay, double gate_lr_multiplier);

} // namespace studio
