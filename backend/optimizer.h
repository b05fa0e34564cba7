// LAMB as the reference's HappyLamb computes it (no bias correction; trust ratio ||p||.clamp(0,10) / ||update||,
// 1 when either norm is 0) and Adam (decoupled weight decay), with parameter groups for weight decay and the
// gates' own learning rate. State is a named tensor map, so it checkpoints through safetensors.
#pragma once

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
    Optimizer(OptimizerConfig config, std::vector<ParamGroup> groups);

    /// One update of every parameter that has a gradient, at learning rate `lr` (before each group's scale).
    void step(double lr);
    void zero_grad();
    const std::vector<ParamGroup> & groups() const { return groups_; }

    TensorMap state() const;
    /// Restores state(); `source` names the checkpoint in errors.
    void load_state(const TensorMap & state, const std::string & source);

private:
    OptimizerConfig config_;
    std::vector<ParamGroup> groups_;
    std::vector<std::vector<torch::Tensor>> exp_avg_, exp_avg_sq_;
    int64_t steps_ = 0;
};

/// The reference's groups: no weight decay for norms and gates; gates at lr x gate_lr_multiplier.
std::vector<ParamGroup> make_param_groups(const torch::nn::Module & model, double weight_decay, double gate_lr_multiplier);

/// Clips the global gradient norm; returns the norm before clipping.
double clip_gradients(const std::vector<ParamGroup> & groups, double max_norm);

} // namespace studio
