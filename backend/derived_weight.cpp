#include "derived_weight.h"

#include <torch/torch.h>

#ifdef STUDIO_CUDA
#include <c10/cuda/CUDAGraphsC10Utils.h>
#endif

namespace studio {

namespace {
bool capturing(const std::vector<torch::Tensor> & sources) {
#ifdef STUDIO_CUDA
    for (const auto & s : sources)
        if (s.is_cuda()) return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
#else
    (void) sources;
#endif
    return false;
}
} // namespace

bool DerivedWeight::holds(const std::vector<torch::Tensor> & sources, int64_t form) const {
    if (!value_.defined() || form != form_ || sources.size() != sources_.size()) return false;
    for (size_t i = 0; i < sources.size(); ++i) {
        const auto & now = sources[i], & then = sources_[i];
        if (now.defined() != then.defined()) return false;
        if (!now.defined()) continue;
        if (!now.is_alias_of(then) || now.data_ptr() != then.data_ptr() || now.sizes() != then.sizes()
            || now.scalar_type() != then.scalar_type() || now._version() != versions_[i])
            return false;
    }
    return true;
}

torch::Tensor DerivedWeight::get(const std::vector<torch::Tensor> & sources, int64_t form, const std::function<torch::Tensor()> & make) {
    last_was_kept_ = false;
    bool needs_grad = false;
    for (const auto & s : sources) needs_grad = needs_grad || (s.defined() && s.requires_grad());
    if (needs_grad && torch::GradMode::is_enabled()) return make();
    if (holds(sources, form)) {
        last_was_kept_ = true;
        return value_;
    }
    clear();
    auto value = make();
    if (capturing(sources)) return value;
    for (const auto & s : sources) {
        sources_.push_back(s.defined() ? s.detach() : s);
        versions_.push_back(s.defined() ? s._version() : 0);
    }
    form_ = form;
    value_ = value.detach();
    return value_;
}

void DerivedWeight::clear() {
    sources_.clear();
    versions_.clear();
    value_ = torch::Tensor();
}

} // namespace studio
