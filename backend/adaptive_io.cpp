#include "adaptive_io.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <torch/torch.h>

#include "device.h"

namespace studio {

namespace F = torch::nn::functional;

AdaptiveIOImpl::AdaptiveIOImpl(AdaptiveIOOptions options_) : options(std::move(options_)) {
    reset();
}

void AdaptiveIOImpl::reset() {
    const int64_t D = options.hidden_dim();
    bounds = {0};
    for (auto c : options.cutoffs()) bounds.push_back(c);
    bounds.push_back(options.vocab_size());
    const bool adaptive = !options.cutoffs().empty();
    emb.clear(); in_proj.clear(); out_weight.clear(); out_bias.clear(); out_tail_proj.clear(); widths.clear();
    for (size_t i = 0; i + 1 < bounds.size(); ++i) {
        const int64_t n = bounds[i + 1] - bounds[i];
        const int64_t d = adaptive ? (int64_t) (D / std::pow(options.div_value(), (double) i)) : D;
        widths.push_back(d);
        const std::string s = std::to_string(i);
        emb.push_back(register_parameter("emb_" + s, torch::empty({n, d})));
        if (adaptive) in_proj.push_back(register_parameter("in_proj_" + s, torch::empty({D, d})));
        out_weight.push_back(options.tie_weight() ? emb.back() : register_parameter("out_weight_" + s, torch::empty({n, d})));
        out_bias.push_back(register_parameter("out_bias_" + s, torch::zeros({n})));
        if (adaptive && i > 0) {
            out_tail_proj.push_back(options.tie_proj() ? torch::Tensor() : register_parameter("out_tail_proj_" + s, torch::empty({d, D})));
        }
    }
    if (adaptive) {
        out_head_proj = register_parameter("out_head_proj", torch::empty({D, D}));
        cluster_weight = register_parameter("cluster_weight", torch::empty({num_clusters() - 1, D}));
        cluster_bias = register_parameter("cluster_bias", torch::zeros({num_clusters() - 1}));
    }
    // Default init: the language model re-initialises with its own scheme.
    torch::NoGradGuard no_grad;
    for (auto & p : parameters()) if (p.dim() == 2) p.uniform_(-0.05, 0.05);
}

void AdaptiveIOImpl::pretty_print(std::ostream & stream) const {
    stream << "studio::AdaptiveIO(vocab=" << options.vocab_size() << ", hidden=" << options.hidden_dim() << ", clusters=[";
    for (size_t i = 0; i < widths.size(); ++i) stream << (i ? ", " : "") << (bounds[i + 1] - bounds[i]) << "x" << widths[i];
    stream << "], tie_weight=" << options.tie_weight() << ", tie_proj=" << options.tie_proj() << ")";
}

torch::Tensor AdaptiveIOImpl::tail_projection(size_t cluster) const {
    const auto & own = out_tail_proj[cluster - 1];
    return own.defined() ? own : in_proj[cluster].t();
}

torch::Tensor AdaptiveIOImpl::embed(const torch::Tensor & ids, double word_drop) {
    const int64_t D = options.hidden_dim();
    const bool drop = is_training() && word_drop > 0;
    auto flat = ids.reshape({-1});                                          // (N,)
    auto row_scale = [&](int64_t rows, const torch::Tensor & local) {
        // One keep/drop decision per vocabulary row of this table, looked up per token.
        auto keep = torch::bernoulli(torch::full({rows}, 1.0 - word_drop, flat.options().dtype(torch::kFloat))) / (1.0 - word_drop);
        return keep.index_select(0, local).unsqueeze(1);                    // (n,1)
    };
    if (in_proj.empty()) {
        auto out = F::embedding(flat, emb[0]);                              // (N,D)
        if (drop) out = out * row_scale(emb[0].size(0), flat).to(out.dtype());
        return out.view({ids.size(0), ids.size(1), D});
    }
    if (flat.is_cuda()) {
        // On a GPU every cluster embeds every token (clamped ids) and a mask keeps the right one: a few wasted small
        // products, but no nonzero() that stops the host, so the step can be queued ahead and captured in a graph.
        torch::Tensor out;
        for (size_t i = 0; i < emb.size(); ++i) {
            auto in_cluster = (flat >= bounds[i]).logical_and(flat < bounds[i + 1]);                 // (N,)
            auto local = (flat - bounds[i]).clamp(0, bounds[i + 1] - bounds[i] - 1);
            auto e = F::embedding(local, emb[i]);                                                    // (N,d_i)
            if (drop) e = e * row_scale(emb[i].size(0), local).to(e.dtype());
            auto projected = F::linear(e, in_proj[i]) * in_cluster.unsqueeze(1).to(e.dtype());      // (N,D)
            out = out.defined() ? out + projected : projected;
        }
        return out.view({ids.size(0), ids.size(1), D});
    }
    auto out = torch::zeros({flat.size(0), D}, emb[0].options());
    for (size_t i = 0; i < emb.size(); ++i) {
        auto in_cluster = (flat >= bounds[i]).logical_and(flat < bounds[i + 1]);
        auto index = in_cluster.nonzero().squeeze(1);                       // (n,)
        if (index.numel() == 0) continue;
        auto local = flat.index_select(0, index) - bounds[i];
        auto e = F::embedding(local, emb[i]);                               // (n,d_i)
        if (drop) e = e * row_scale(emb[i].size(0), local).to(e.dtype());
        out.index_copy_(0, index, F::linear(e, in_proj[i]).to(out.dtype())); // (n,D)
    }
    return out.view({ids.size(0), ids.size(1), D});
}

namespace {
/// log_softmax(logits) at one column per row, as logit - logsumexp: the whole (n,V) log-softmax, the size of the
/// logits (2.4 GB in fp32 for the 160k-word cluster at batch 32 with random targets), is never written.
torch::Tensor log_prob_at(const torch::Tensor & logits, const torch::Tensor & column) {   // (n,V), (n,) -> (n,)
    return logits.gather(1, column.unsqueeze(1)).squeeze(1) - torch::logsumexp(logits, 1);
}
} // namespace

torch::Tensor AdaptiveIOImpl::target_log_prob(const torch::Tensor & hidden, const torch::Tensor & target) {
    torch::Tensor head_weight = out_weight[0], head_bias = out_bias[0];
    if (!in_proj.empty()) {
        head_weight = torch::cat({out_weight[0], cluster_weight}, 0);                  // (shortlist + C-1, D)
        head_bias = torch::cat({out_bias[0], cluster_bias}, 0);
    }
    // Rows in blocks at CPU inference: one (N,V) fp32 logit tensor is 300 MB for the 160k-word cluster at batch 4
    // with random targets.
    const int64_t rows = hidden.size(0);
    int64_t widest = head_weight.size(0);
    for (size_t i = 1; i < out_weight.size(); ++i) widest = std::max(widest, out_weight[i].size(0));
    const int64_t block = cpu_inference_block(hidden, rows, widest * (int64_t) sizeof(float));
    if (block >= rows) return target_log_prob_rows(hidden, target, head_weight, head_bias);
    std::vector<torch::Tensor> parts;
    for (int64_t r = 0; r < rows; r += block) {
        const int64_t n = std::min(block, rows - r);
        parts.push_back(target_log_prob_rows(hidden.narrow(0, r, n), target.narrow(0, r, n), head_weight, head_bias));
    }
    return torch::cat(parts);                                                          // (N,)
}

torch::Tensor AdaptiveIOImpl::target_log_prob_rows(const torch::Tensor & hidden, const torch::Tensor & target,
                                                   const torch::Tensor & head_weight, const torch::Tensor & head_bias) {
    if (in_proj.empty()) {
        auto logits = F::linear(hidden, head_weight, head_bias).to(torch::kFloat);     // (N,V)
        return log_prob_at(logits, target);
    }
    const int64_t shortlist = bounds[1];
    auto head_hidden = F::linear(hidden, out_head_proj);                               // (N,D)
    auto head_logits = F::linear(head_hidden, head_weight, head_bias).to(torch::kFloat); // (N, shortlist + C-1)
    auto head_lse = torch::logsumexp(head_logits, 1);                                  // (N,)
    // Shortlist words read their log-prob from the head; tail words get head[cluster] + their tail log-prob.
    auto head_index = torch::where(target < shortlist, target, torch::zeros_like(target));
    auto result = head_logits.gather(1, head_index.unsqueeze(1)).squeeze(1) - head_lse; // (N,)
    for (size_t i = 1; i < emb.size(); ++i) {
        auto in_cluster = (target >= bounds[i]).logical_and(target < bounds[i + 1]);
        auto index = in_cluster.nonzero().squeeze(1);                                  // (n,)
        if (index.numel() == 0) continue;
        auto h = hidden.index_select(0, index);
        auto tail_logits = F::linear(F::linear(h, tail_projection(i)), out_weight[i], out_bias[i]).to(torch::kFloat); // (n, n_i)
        auto tail_lp = log_prob_at(tail_logits, target.index_select(0, index) - bounds[i]);
        auto cluster_lp = head_logits.index_select(0, index).select(1, shortlist + (int64_t) i - 1) - head_lse.index_select(0, index);
        result = result.index_copy(0, index, cluster_lp + tail_lp);
    }
    return result;
}

int64_t AdaptiveIOImpl::input_parameter_count() const {
    int64_t n = 0;
    for (auto & t : emb) n += t.numel();
    for (auto & t : in_proj) n += t.numel();
    return n;
}

int64_t AdaptiveIOImpl::output_parameter_count() const {
    int64_t n = 0;
    for (const auto & p : parameters()) n += p.numel();
    return n - input_parameter_count();
}

} // namespace studio
