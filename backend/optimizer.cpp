#include "optimizer.h"

#include <torch/torch.h>

namespace studio {

Optimizer::Optimizer(OptimizerConfig config, std::vector<ParamGroup> groups) : config_(std::move(config)), groups_(std::move(groups)) {
    for (const auto & g : groups_) {
        std::vector<torch::Tensor> m, v;
        for (const auto & p : g.params) {
            m.push_back(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
            v.push_back(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
        }
        exp_avg_.push_back(m);
        exp_avg_sq_.push_back(v);
    }
}

void Optimizer::zero_grad() {
    for (auto & g : groups_) {
        for (auto & p : g.params) {
            if (p.mutable_grad().defined()) p.mutable_grad().zero_();
        }
    }
}

void Optimizer::step(double lr) {
    torch::NoGradGuard no_grad;
    ++steps_;
    const double b1 = config_.beta1, b2 = config_.beta2, eps = config_.eps;
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
        auto & g = groups_[gi];
        const double group_lr = lr * g.lr_scale;
        for (size_t i = 0; i < g.params.size(); ++i) {
            auto & p = g.params[i];
            if (!p.grad().defined()) continue;
            auto grad = p.grad();
            auto & m = exp_avg_[gi][i];
            auto & v = exp_avg_sq_[gi][i];
            m.mul_(b1).add_(grad, 1 - b1);
            v.mul_(b2).addcmul_(grad, grad, 1 - b2);
            if (config_.name == "lamb") {
                auto update = m / (v.sqrt() + eps);
                if (g.weight_decay > 0) update.add_(p, g.weight_decay);
                // Trust ratio without a host sync: where either norm is 0 the ratio is 1.
                auto weight_norm = p.norm().clamp(0, 10);
                auto update_norm = update.norm();
                auto trust = torch::where(weight_norm.gt(0).logical_and(update_norm.gt(0)), weight_norm / (update_norm + eps),
                                          torch::ones_like(weight_norm));
                p.sub_(update * (trust * group_lr));
            } else {
                const double c1 = 1 - std::pow(b1, (double) steps_), c2 = 1 - std::pow(b2, (double) steps_);
                if (g.weight_decay > 0) p.mul_(1 - group_lr * g.weight_decay);
                p.addcdiv_(m, (v / c2).sqrt_().add_(eps), -group_lr / c1);
            }
        }
    }
}

TensorMap Optimizer::state() const {
    TensorMap state;
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
        for (size_t i = 0; i < groups_[gi].params.size(); ++i) {
            const std::string key = groups_[gi].name + "." + std::to_string(i);
            state[key + ".exp_avg"] = exp_avg_[gi][i];
            state[key + ".exp_avg_sq"] = exp_avg_sq_[gi][i];
        }
    }
    state["steps"] = torch::full({1}, steps_, torch::kLong);
    return state;
}

void Optimizer::load_state(const TensorMap & state, const std::string & source) {
    torch::NoGradGuard no_grad;
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
        for (size_t i = 0; i < groups_[gi].params.size(); ++i) {
            const std::string key = groups_[gi].name + "." + std::to_string(i);
            for (auto [suffix, target] : {std::make_pair(".exp_avg", &exp_avg_[gi][i]), std::make_pair(".exp_avg_sq", &exp_avg_sq_[gi][i])}) {
                auto it = state.find(key + suffix);
                if (it == state.end()) throw FormatError("checkpoint " + source + ": optimizer state " + key + suffix + " is missing");
                if (it->second.sizes() != target->sizes()) throw FormatError("checkpoint " + source + ": optimizer state " + key + suffix + " has the wrong shape");
                target->copy_(it->second);
            }
        }
    }
    auto it = state.find("steps");
    if (it == state.end()) throw FormatError("checkpoint " + source + ": optimizer step count is missing");
    steps_ = it->second.item<int64_t>();
}

std::vector<ParamGroup> make_param_groups(const torch::nn::Module & model, double weight_decay, double gate_lr_multiplier) {
    ParamGroup decay{"decay", {}, 1.0, weight_decay};
    ParamGroup no_decay{"no_decay", {}, 1.0, 0.0};
    ParamGroup gates{"gates", {}, gate_lr_multiplier, 0.0};
    for (const auto & item : model.named_parameters(true)) {
        const auto & name = item.key();
        if (name.find("gate") != std::string::npos) gates.params.push_back(item.value());
        else if (name.find("norm") != std::string::npos) no_decay.params.push_back(item.value());
        else decay.params.push_back(item.value());
    }
    std::vector<ParamGroup> groups;
    for (auto * g : {&decay, &no_decay, &gates}) if (!g->params.empty()) groups.push_back(*g);
    return groups;
}

double clip_gradients(const std::vector<ParamGroup> & groups, double max_norm) {
    std::vector<torch::Tensor> params;
    for (const auto & g : groups) for (const auto & p : g.params) if (p.grad().defined()) params.push_back(p);
    if (params.empty()) return 0.0;
    if (max_norm <= 0) {
        torch::NoGradGuard no_grad;
        double total = 0;
        for (auto & p : params) total += p.grad().pow(2).sum().item<double>();
        return std::sqrt(total);
    }
    return torch::nn::utils::clip_grad_norm_(params, max_norm);
}

} // namespace studio
