#include "optimizer.h"

#include <algorithm>
#include <cmath>

#include <torch/torch.h>

#include "device.h"
#include "rel_attention.h"   // own_kernels_enabled

#ifdef STUDIO_CUDA_KERNELS
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "lamb_kernel.h"
#endif

namespace studio {

struct Optimizer::Graphs {
    bool enabled = false;
    torch::Tensor lr;                    // (1,) float on the device: the schedule's rate, filled before each step
#ifdef STUDIO_CUDA_KERNELS
    int64_t clip_calls = 0, step_calls = 0;
    double clip_max_norm = 0;
    bool step_clips = false;             // the captured step applies a clip's coefficient
    std::unique_ptr<at::cuda::CUDAGraph> clip, step;
    torch::Tensor clip_norm;             // the captured clip's result, rewritten by every replay

    /// Captures `body` on a side stream (a capture does not run it), then replays it once.
    template <typename Body>
    static std::unique_ptr<at::cuda::CUDAGraph> capture(const torch::Device & device, Body body) {
        auto graph = std::make_unique<at::cuda::CUDAGraph>();
        auto side = c10::cuda::getStreamFromPool(false, device.index());
        {
            c10::cuda::CUDAStreamGuard on_side(side);
            graph->capture_begin();
            body();
            graph->capture_end();
        }
        graph->replay();
        return graph;
    }
#endif
};

Optimizer::~Optimizer() = default;

void Optimizer::use_cuda_graphs(bool enabled) { graphs_->enabled = enabled; }

bool Optimizer::graphs_apply() const {
    if (!graphs_->enabled || flat_.empty()) return false;
    for (const auto & f : flat_) if (!lamb_kernels_take(f)) return false;
    return true;
}

Optimizer::Optimizer(OptimizerConfig config, std::vector<ParamGroup> groups)
    : config_(std::move(config)), groups_(std::move(groups)), graphs_(std::make_unique<Graphs>()) {
    torch::NoGradGuard no_grad;
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
        auto & g = groups_[gi];
        FlatGroup f;
        int64_t total = 0;
        // Every tensor starts 16-byte aligned, so kernels that read rows 16 bytes at a time take the parameters as
        // they are. The few elements between tensors stay zero: no gradient, no moment, no update, no norm.
        const int64_t align = g.params.empty() ? 1 : std::max<int64_t>(1, 16 / (int64_t) g.params[0].element_size());
        auto & spans = f.spans;
        for (const auto & p : g.params) {
            TORCH_CHECK(p.scalar_type() == g.params[0].scalar_type() && p.device() == g.params[0].device(),
                        "optimizer: group ", g.name, " mixes dtypes or devices");
            const int64_t start = (total + align - 1) / align * align;
            if (!spans.empty()) spans.back() += start - total;
            f.offsets.push_back(start);
            f.numels.push_back(p.numel());
            spans.push_back(p.numel());
            total = start + p.numel();
        }
        const auto options = g.params.empty() ? torch::TensorOptions() : g.params[0].options();
        f.param = torch::zeros({total}, options);
        f.grad = torch::zeros({total}, options);
        f.exp_avg = torch::zeros({total}, options);
        f.exp_avg_sq = torch::zeros({total}, options);
        f.starts = torch::tensor(f.offsets, torch::kLong).to(options.device());
        for (size_t i = 0; i < g.params.size(); ++i) {
            auto & p = g.params[i];
            auto view = f.param.narrow(0, f.offsets[i], f.numels[i]).view(p.sizes());
            view.copy_(p);
            p.set_data(view);   // the module's parameter now lives in the flat buffer
            p.mutable_grad() = f.grad.narrow(0, f.offsets[i], f.numels[i]).view(p.sizes());
            f.param_ptrs.push_back(p.data_ptr());
            f.grad_ptrs.push_back(p.grad().data_ptr());
        }
        if (config_.name == "lamb") {
            f.update = torch::empty({total}, options);
            f.param_slices = slices_of(f, f.param);
            f.update_slices = slices_of(f, f.update);
        }
        flat_.push_back(std::move(f));
    }
}

std::vector<torch::Tensor> Optimizer::slices_of(const FlatGroup & f, const torch::Tensor & flat) {
    std::vector<torch::Tensor> result;
    for (size_t i = 0; i < f.numels.size(); ++i) result.push_back(flat.narrow(0, f.offsets[i], f.numels[i]));
    return result;
}

std::vector<torch::Tensor> Optimizer::slices(const torch::Tensor & flat, size_t group) const { return slices_of(flat_[group], flat); }

void Optimizer::adopt_gradients(size_t group) {
    auto & g = groups_[group];
    auto & f = flat_[group];
    for (size_t i = 0; i < g.params.size(); ++i) {
        auto & p = g.params[i];
        TORCH_CHECK(p.data_ptr() == f.param_ptrs[i], "optimizer: parameter ", i, " of group ", g.name,
                    " moved after the optimizer was built (build the optimizer after model->to(device))");
        const auto & grad = p.grad();
        if (grad.defined() && grad.numel() > 0 && grad.data_ptr() == f.grad_ptrs[i]) continue;   // still its slot
        auto slot = f.grad.narrow(0, f.offsets[i], f.numels[i]);
        if (grad.defined()) slot.copy_(grad.reshape({-1}));
        else slot.zero_();
        p.mutable_grad() = slot.view(p.sizes());
    }
}

void Optimizer::zero_grad() {
    pending_clip_.reset();
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
        adopt_gradients(gi);
        flat_[gi].grad.zero_();
    }
}

std::vector<torch::Tensor> Optimizer::flat_gradients() {
    std::vector<torch::Tensor> grads;
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
        adopt_gradients(gi);
        grads.push_back(flat_[gi].grad);
    }
    return grads;
}

torch::Tensor Optimizer::clip_gradients(double max_norm) {
#ifdef STUDIO_CUDA_KERNELS
    if (graphs_apply()) {
        auto & g = *graphs_;
        flat_gradients();   // re-links replaced gradients into the buffers the graph reads
        if (g.clip && g.clip_max_norm == max_norm) {
            g.clip->replay();
            pending_clip_ = max_norm;
            return g.clip_norm;
        }
        if (g.clip_calls++ > 0) {   // the first call ran eagerly, so its kernels are loaded
            g.clip_max_norm = max_norm;
            g.clip = Graphs::capture(flat_.front().grad.device(), [&] { g.clip_norm = clip_eagerly(max_norm); });
            return g.clip_norm;
        }
    }
#endif
    return clip_eagerly(max_norm);
}

torch::Tensor Optimizer::clip_eagerly(double max_norm) {
    torch::NoGradGuard no_grad;
    auto grads = flat_gradients();
    if (grads.empty()) return torch::zeros({});
    std::vector<torch::Tensor> norms;
    for (auto & g : grads) norms.push_back(g.norm(2).to(torch::kFloat));
    auto total = torch::stack(norms).norm(2);                                 // 0-dim
    // Left for the step, which applies it as it reads the gradients; NaN where the norm is not finite, which makes
    // the step skip (on the device with our kernels), so a non-finite gradient never reaches the parameters.
    auto coefficient = max_norm > 0 ? (max_norm / (total + 1e-6)).clamp_max(1.0) : torch::ones_like(total);
    if (!clip_coefficient_.defined()) clip_coefficient_ = torch::empty({1}, total.options());
    clip_coefficient_.copy_(torch::where(torch::isfinite(total), coefficient, torch::full_like(coefficient, NAN)).reshape({1}));
    pending_clip_ = max_norm;
    return total;
}

void Optimizer::skip_step_unless_finite(const torch::Tensor & value) {
    torch::NoGradGuard no_grad;
    if (!pending_clip_ || !clip_coefficient_.defined()) {
        clip_coefficient_ = torch::ones({1}, value.options().dtype(torch::kFloat));
        pending_clip_ = 0.0;
    }
    // coefficient + 0 x value: NaN exactly where value is not (0 x inf is NaN), in one kernel a step.
    const auto one = value.numel() == 1 ? value.reshape({1}) : value.sum().reshape({1});
    clip_coefficient_.add_(one.to(clip_coefficient_.device(), clip_coefficient_.scalar_type()), /*alpha=*/0.0);
}

bool Optimizer::lamb_kernels_take(const FlatGroup & f) const {
#ifdef STUDIO_CUDA_KERNELS
    return config_.name == "lamb" && f.param.is_cuda() && f.param.scalar_type() == torch::kFloat
           && own_kernels_enabled();
#else
    (void) f;
    return false;
#endif
}

namespace {
// STUDIO_LAMB_NORMS=ops: the trust ratios' norms by LibTorch's multi-tensor norms, a pass of their own (timing).
const bool norms_in_moments_wanted = !environment_is("STUDIO_LAMB_NORMS", "ops");
// Elements a block of the moments kernel (a multiple of 4). 2048 rather than 8192: 0.91-0.93 ms an optimizer step at
// batch 24 on an H200 against 0.96-0.98 (the moments kernel's blocks spread more evenly over the SMs).
constexpr int64_t kLambChunk = 2048;
} // namespace

void Optimizer::make_chunks(FlatGroup & f) {
    if (f.chunk_bounds.defined()) return;
    std::vector<int64_t> bounds;
    std::vector<int32_t> first;
    const int64_t n = f.param.numel();
    for (size_t t = 0; t < f.offsets.size(); ++t) {
        first.push_back((int32_t) bounds.size());
        const int64_t end = t + 1 < f.offsets.size() ? f.offsets[t + 1] : n;
        for (int64_t b = f.offsets[t]; b < end; b += kLambChunk) bounds.push_back(b);
    }
    first.push_back((int32_t) bounds.size());
    bounds.push_back(n);
    const auto device = f.param.device();
    f.chunk_bounds = torch::tensor(bounds, torch::kLong).to(device);
    f.first_chunk = torch::tensor(first, torch::kInt).to(device);
    f.partial_squares = torch::empty({2 * (int64_t) (bounds.size() - 1)}, f.param.options());
}

void Optimizer::lamb_step_by_kernels(FlatGroup & f, const torch::Tensor & lr, double lr_scale, double weight_decay,
                                     const torch::Tensor & grad_scale) {
#ifdef STUDIO_CUDA_KERNELS
    c10::cuda::CUDAGuard device_guard(f.param.device());
    void * stream = current_cuda_stream(f.param.device());
    LambMomentsKernelArgs moments;
    moments.grad = f.grad.data_ptr<float>();
    moments.grad_scale = grad_scale.defined() ? grad_scale.data_ptr<float>() : nullptr;
    moments.param = f.param.data_ptr<float>();
    moments.exp_avg = f.exp_avg.data_ptr<float>();
    moments.exp_avg_sq = f.exp_avg_sq.data_ptr<float>();
    moments.update = f.update.data_ptr<float>();
    moments.n = f.param.numel();
    moments.one_minus_beta1 = (float) (1 - config_.beta1);
    moments.beta2 = (float) config_.beta2;
    moments.one_minus_beta2 = (float) (1 - config_.beta2);
    moments.eps = (float) config_.eps;
    moments.weight_decay = (float) weight_decay;
    if (norms_in_moments_wanted) {
        // The chunks' sums of squares come with the moments; a small kernel turns them into the step sizes.
        make_chunks(f);
        moments.chunk_bounds = f.chunk_bounds.data_ptr<int64_t>();
        moments.chunks = f.chunk_bounds.numel() - 1;
        moments.partial_squares = f.partial_squares.data_ptr<float>();
    }
    check_kernel_launch(launch_lamb_moments(moments, stream), "LAMB moments");
    torch::Tensor step_sizes;                                                            // (tensors,)
    if (norms_in_moments_wanted) {
        step_sizes = torch::empty({(int64_t) f.offsets.size()}, f.param.options());
        LambTrustKernelArgs trust;
        trust.partial_squares = f.partial_squares.data_ptr<float>();
        trust.first_chunk = f.first_chunk.data_ptr<int32_t>();
        trust.tensors = (int) f.offsets.size();
        trust.lr = lr.data_ptr<float>();
        trust.lr_scale = (float) lr_scale;
        trust.eps = (float) config_.eps;
        trust.step = step_sizes.data_ptr<float>();
        check_kernel_launch(launch_lamb_trust(trust, stream), "LAMB trust ratios");
    } else {
        step_sizes = trust_ratios(f).mul_(lr).mul_(lr_scale);
    }
    LambApplyKernelArgs apply;
    apply.param = f.param.data_ptr<float>();
    apply.update = f.update.data_ptr<float>();
    apply.step = step_sizes.data_ptr<float>();
    apply.starts = f.starts.data_ptr<int64_t>();
    apply.tensors = (int) f.offsets.size();
    apply.n = f.param.numel();
    apply.skip_unless_finite = moments.grad_scale;
    check_kernel_launch(launch_lamb_apply(apply, stream), "LAMB apply");
#else
    (void) f, (void) lr, (void) lr_scale, (void) weight_decay, (void) grad_scale;
#endif
}

const torch::Tensor & Optimizer::element_tensors(FlatGroup & f) {
    // Once: a per-step repeat_interleave costs more than the whole update.
    if (!f.segment.defined()) {
        const auto index_type = f.param.numel() < (int64_t(1) << 31) ? torch::kInt : torch::kLong;
        f.segment = torch::repeat_interleave(torch::arange((int64_t) f.spans.size(), torch::kLong), torch::tensor(f.spans, torch::kLong))
                        .to(f.param.device(), index_type);
    }
    return f.segment;
}

torch::Tensor Optimizer::trust_ratios(const FlatGroup & f) const {
    // Per-tensor trust ratios from the segment norms, without a host sync: 1 where either norm is 0.
    auto weight_norm = torch::stack(torch::_foreach_norm(f.param_slices)).clamp(0, 10);         // (tensors,)
    auto update_norm = torch::stack(torch::_foreach_norm(f.update_slices));                     // (tensors,)
    return torch::where(weight_norm.gt(0).logical_and(update_norm.gt(0)), weight_norm / (update_norm + config_.eps),
                        torch::ones_like(weight_norm));
}

void Optimizer::step(double lr) {
#ifdef STUDIO_CUDA_KERNELS
    if (graphs_apply()) {
        auto & g = *graphs_;
        if (g.step || g.step_calls++ > 0) {
            for (size_t gi = 0; gi < groups_.size(); ++gi) adopt_gradients(gi);
            if (!g.lr.defined()) g.lr = torch::empty({1}, flat_.front().param.options());
            g.lr.fill_(lr);   // outside the graph, which reads it
            if (g.step && g.step_clips == pending_clip_.has_value()) {
                ++steps_;
                g.step->replay();
                pending_clip_.reset();
                return;
            }
            if (!g.step) {
                g.step_clips = pending_clip_.has_value();
                g.step = Graphs::capture(flat_.front().param.device(), [&] { step_eagerly(lr, /*fill_lr=*/false); });
                return;
            }
            // A step the captured graph does not match (clipped or not, against the capture): eagerly.
        }
    }
#endif
    step_eagerly(lr, true);
}

void Optimizer::step_eagerly(double lr, bool fill_lr) {
    torch::NoGradGuard no_grad;
    // Our kernels skip a step whose clip coefficient is NaN on the device; LibTorch's path asks the host, once.
    bool operations = false;
    for (const auto & f : flat_) operations = operations || (!lamb_kernels_take(f) && f.param.numel() > 0);
    if (operations && pending_clip_ && !clip_coefficient_.isfinite().item<bool>()) {
        pending_clip_.reset();
        return;
    }
    ++steps_;
    const double b1 = config_.beta1, b2 = config_.beta2, eps = config_.eps;
    bool lr_ready = !fill_lr;   // else step() filled it before this capture: a capture runs nothing
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
        auto & g = groups_[gi];
        auto & f = flat_[gi];
        if (f.numels.empty() || f.param.numel() == 0) continue;
        adopt_gradients(gi);
        const double group_lr = lr * g.lr_scale;
        if (lamb_kernels_take(f)) {
            if (!lr_ready) {   // once a step, for every group
                if (!graphs_->lr.defined()) graphs_->lr = torch::empty({1}, f.param.options());
                graphs_->lr.fill_(lr);
                lr_ready = true;
            }
            lamb_step_by_kernels(f, graphs_->lr, g.lr_scale, g.weight_decay, pending_clip_ ? clip_coefficient_ : torch::Tensor());
            continue;
        }
        if (pending_clip_ && *pending_clip_ > 0) f.grad.mul_(clip_coefficient_);   // with no maximum, 1 or NaN
        f.exp_avg.lerp_(f.grad, 1 - b1);                                      // m = b1 m + (1 - b1) g
        f.exp_avg_sq.mul_(b2).addcmul_(f.grad, f.grad, 1 - b2);               // v = b2 v + (1 - b2) g^2
        if (config_.name == "lamb") {
            // In the group's own buffer, whose per-tensor views exist already: at small batches the host's cost of
            // making two views per tensor (hundreds) every step showed in the step time.
            auto & update = f.update;                                          // (numel,)
            torch::sqrt_out(update, f.exp_avg_sq).add_(eps);
            torch::div_out(update, f.exp_avg, update);
            if (g.weight_decay > 0) update.add_(f.param, g.weight_decay);
            auto per_element = (trust_ratios(f) * group_lr).index_select(0, element_tensors(f));       // (numel,)
            f.param.addcmul_(update, per_element, -1.0);
        } else {
            const double c1 = 1 - std::pow(b1, (double) steps_), c2 = 1 - std::pow(b2, (double) steps_);
            if (g.weight_decay > 0) f.param.mul_(1 - group_lr * g.weight_decay);
            f.param.addcdiv_(f.exp_avg, (f.exp_avg_sq / c2).sqrt_().add_(eps), -group_lr / c1);
        }
    }
    pending_clip_.reset();
}

TensorMap Optimizer::state() const {
    TensorMap state;
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
        const auto m = slices(flat_[gi].exp_avg, gi), v = slices(flat_[gi].exp_avg_sq, gi);
        for (size_t i = 0; i < groups_[gi].params.size(); ++i) {
            const std::string key = groups_[gi].name + "." + std::to_string(i);
            const auto sizes = groups_[gi].params[i].sizes();
            state[key + ".exp_avg"] = m[i].view(sizes);
            state[key + ".exp_avg_sq"] = v[i].view(sizes);
        }
    }
    state["steps"] = torch::full({1}, steps_, torch::kLong);
    return state;
}

void Optimizer::load_state(const TensorMap & state, const std::string & source) {
    torch::NoGradGuard no_grad;
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
        const auto m = slices(flat_[gi].exp_avg, gi), v = slices(flat_[gi].exp_avg_sq, gi);
        for (size_t i = 0; i < groups_[gi].params.size(); ++i) {
            const std::string key = groups_[gi].name + "." + std::to_string(i);
            const auto sizes = groups_[gi].params[i].sizes();
            for (auto [suffix, target] : {std::make_pair(".exp_avg", m[i]), std::make_pair(".exp_avg_sq", v[i])}) {
                auto it = state.find(key + suffix);
                if (it == state.end()) throw FormatError("checkpoint " + source + ": optimizer state " + key + suffix + " is missing");
                if (it->second.sizes() != sizes) throw FormatError("checkpoint " + source + ": optimizer state " + key + suffix + " has the wrong shape");
                target.copy_(it->second.reshape({-1}));
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

} // namespace studio
