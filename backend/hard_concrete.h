// Hard-concrete (L0) gate, one per attention head (Louizos et al. 2018; reference-model.md section 2).
#pragma once

#include <torch/types.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

namespace studio {

struct HardConcreteGateOptions {
    HardConcreteGateOptions(int64_t num_heads) : num_heads_(num_heads) {}
    TORCH_ARG(int64_t, num_heads);
    TORCH_ARG(double, init_log_alpha) = 2.0; ///< technique 2: start open (P(open) = sigmoid(2) = 0.88)
    TORCH_ARG(double, beta) = 0.333;         ///< temperature
    TORCH_ARG(double, gamma) = -0.1;         ///< stretch interval (gamma, zeta)
    TORCH_ARG(double, zeta) = 1.1;
};

/// What one forward of the gates of a layer gives.
struct GateSample {
    torch::Tensor gate;   ///< (H,): exactly 0 or 1 forward; gradient of the stretched soft value (straight-through)
    torch::Tensor closed; ///< scalar: number of gates that are 0 in this sample
};

class HardConcreteGateImpl : public torch::nn::Cloneable<HardConcreteGateImpl> {
public:
    explicit HardConcreteGateImpl(HardConcreteGateOptions options);
    void reset() override;
    void pretty_print(std::ostream & stream) const override;

    /// Training sample: noise u ~ U(1e-6, 1-1e-6), one per head, from `noise` (H,) drawn by the caller so that
    /// every rank and a resumed run draw the same values. Eval (noise undefined): deterministic.
    GateSample forward(const torch::Tensor & noise = {});
    /// The L0 term: sum over heads of P(gate != 0) = sigmoid(log_alpha - beta * ln(-gamma / zeta)), clamped.
    torch::Tensor l0() const;
    /// P(the hard training gate is open) per head = P(stretched sample >= 0.5). sigmoid(log_alpha) at the defaults.
    torch::Tensor p_open() const;
    /// The eval rule: open iff the stretched deterministic value >= 0.5 (log_alpha >= 0 at the default gamma, zeta).
    torch::Tensor open_mask() const;
    /// Take the constants from `options` (the gate stage's settings); re-initialise log_alpha too when asked (technique 2).
    void configure(const HardConcreteGateOptions & options, bool reinitialise = true);

    HardConcreteGateOptions options;
    torch::Tensor log_alpha; ///< (H,)
};
TORCH_MODULE(HardConcreteGate);

/// The gate sample of HardConcreteGate::forward for log_alpha (...,H): several gates with the same options at once
/// when stacked (G,H), with noise of as many values. closed is then (G,): per gate.
GateSample sample_hard_concrete(const torch::Tensor & log_alpha, const torch::Tensor & noise, const HardConcreteGateOptions & options);

/// HardConcreteGate::l0 (summed over every element) and p_open (per element) for log_alpha of any shape.
torch::Tensor hard_concrete_l0(const torch::Tensor & log_alpha, const HardConcreteGateOptions & options);
torch::Tensor hard_concrete_p_open(const torch::Tensor & log_alpha, const HardConcreteGateOptions & options);

/// Technique 3, output scaling: each sample's gates times clamp(H / (H - closed + 1e-3), 1, H), a constant for the
/// gradient (heads = H, the gates per row).
torch::Tensor output_scaled(const GateSample & sample, int64_t heads);

} // namespace studio
