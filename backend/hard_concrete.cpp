#include "hard_concrete.h"

#include <cmath>

#include <torch/torch.h>

namespace studio {

namespace {
constexpr double kClampLow = 1e-6;
constexpr double kThreshold = 0.5;

torch::Tensor stretch(const torch::Tensor & s, const HardConcreteGateOptions & o) {
    return (s * (o.zeta() - o.gamma()) + o.gamma()).clamp(kClampLow, 1.0);
}
} // namespace

HardConcreteGateImpl::HardConcreteGateImpl(HardConcreteGateOptions options_) : options(std::move(options_)) {
    reset();
}

void HardConcreteGateImpl::reset() {
    log_alpha = register_parameter("log_alpha", torch::full({options.num_heads()}, options.init_log_alpha()));
}

void HardConcreteGateImpl::configure(const HardConcreteGateOptions & new_options, bool reinitialise) {
    TORCH_CHECK(new_options.num_heads() == options.num_heads(), "gate: head count cannot change");
    options = new_options;
    if (!reinitialise) return;
    torch::NoGradGuard no_grad;
    log_alpha.fill_(options.init_log_alpha());
}

void HardConcreteGateImpl::pretty_print(std::ostream & stream) const {
    stream << "studio::HardConcreteGate(heads=" << options.num_heads() << ", beta=" << options.beta()
           << ", gamma=" << options.gamma() << ", zeta=" << options.zeta() << ")";
}

GateSample HardConcreteGateImpl::forward(const torch::Tensor & noise) {
    TORCH_CHECK(!noise.defined() || noise.numel() == options.num_heads(), "gate: noise has ", noise.numel(), " values for ",
                options.num_heads(), " heads");
    return sample_hard_concrete(log_alpha, noise, options);
}

GateSample sample_hard_concrete(const torch::Tensor & log_alpha, const torch::Tensor & noise, const HardConcreteGateOptions & options) {
    torch::Tensor soft;
    if (noise.defined()) {
        auto u = noise.to(log_alpha.device(), log_alpha.scalar_type()).view(log_alpha.sizes()).clamp(1e-6, 1 - 1e-6);
        soft = torch::sigmoid((torch::log(u) - torch::log1p(-u) + log_alpha) / options.beta());
    } else {
        soft = torch::sigmoid(log_alpha);
    }
    auto stretched = stretch(soft, options);                       // (...,H)
    auto hard = (stretched >= kThreshold).to(stretched.scalar_type());
    GateSample sample;
    sample.gate = stretched + (hard - stretched).detach();         // forward: hard; backward: d stretched
    sample.closed = (hard == 0).sum(-1);
    return sample;
}

torch::Tensor output_scaled(const GateSample & sample, int64_t heads) {
    // Technique 3: open heads scaled by clamp(H / (H - closed + 1e-3), 1, H), a constant for the gradient.
    auto factor = ((double) heads / ((double) heads - sample.closed.to(torch::kDouble) + 1e-3)).clamp(1.0, (double) heads);
    return sample.gate * factor.unsqueeze(-1).to(sample.gate.dtype()).detach();
}

torch::Tensor HardConcreteGateImpl::l0() const { return hard_concrete_l0(log_alpha, options); }

torch::Tensor HardConcreteGateImpl::p_open() const { return hard_concrete_p_open(log_alpha, options); }

torch::Tensor hard_concrete_l0(const torch::Tensor & log_alpha, const HardConcreteGateOptions & options) {
    const double shift = options.beta() * std::log(-options.gamma() / options.zeta());
    return torch::sigmoid(log_alpha - shift).clamp(kClampLow, 1 - kClampLow).sum();
}

torch::Tensor hard_concrete_p_open(const torch::Tensor & log_alpha, const HardConcreteGateOptions & options) {
    // stretched >= 0.5  <=>  s >= t with t = (0.5 - gamma) / (zeta - gamma);  P(s >= t) = sigmoid(log_alpha - beta * logit(t)).
    const double t = (kThreshold - options.gamma()) / (options.zeta() - options.gamma());
    return torch::sigmoid(log_alpha - options.beta() * std::log(t / (1 - t)));
}

torch::Tensor HardConcreteGateImpl::open_mask() const {
    return stretch(torch::sigmoid(log_alpha.detach()), options) >= kThreshold;
}

} // namespace studio
