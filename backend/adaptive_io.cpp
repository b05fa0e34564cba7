#include "adaptive_io.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "biased_product.h"
#include "device.h"
#include "log_softmax_at.h"
#include "tail_log_prob.h"

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

void AdaptiveIOImpl::train(bool on) {
    projected_tables.clear();
    for (auto & kept : tail_words) kept.clear();
    torch::nn::Module::train(on);
}

torch::Tensor AdaptiveIOImpl::tail_words_kept(size_t cluster) {
    if (!tail_kernel_applies(out_weight[cluster], out_weight[cluster], out_bias[cluster])) return {};   // training, the CPU
    if (tail_words.size() < out_weight.size()) tail_words.resize(out_weight.size());
    return tail_words[cluster].get({out_weight[cluster], out_bias[cluster]}, 0,
                                   [&] { return tail_words_for_kernels(out_weight[cluster], out_bias[cluster]); });
}

torch::Tensor AdaptiveIOImpl::projected_table() {
    if (in_proj.empty()) return {};
    const int64_t D = options.hidden_dim(), V = bounds.back();
    if (V * D * (int64_t) emb[0].element_size() > (int64_t(1) << 30)) return {};
    std::vector<torch::Tensor> sources(emb.begin(), emb.end());
    sources.insert(sources.end(), in_proj.begin(), in_proj.end());
    const bool autocast = emb[0].is_cuda() && cuda_compute_dtype(emb[0]) != emb[0].scalar_type();
    return projected_tables.get(sources, autocast ? 1 : 0, [&] {
        std::vector<torch::Tensor> parts;
        for (size_t i = 0; i < emb.size(); ++i) parts.push_back(F::linear(emb[i], in_proj[i]).to(emb[0].scalar_type())); // (n_i,D)
        return torch::cat(parts, 0);                                                                                     // (V,D)
    });
}

torch::Tensor AdaptiveIOImpl::embed(const torch::Tensor & ids, double word_drop) {
    const int64_t D = options.hidden_dim();
    const bool drop = is_training() && word_drop > 0;
    auto flat = ids.reshape({-1});                                          // (N,)
    // STUDIO_PROJECTED_TABLE=0: each cluster's lookup and product at inference too (side-by-side timing).
    static const bool projected_table_wanted = !environment_is("STUDIO_PROJECTED_TABLE", "0");
    if (projected_table_wanted && !is_training() && !torch::GradMode::is_enabled()) {
        // One gather, where each cluster's lookup, product and mask were some forty small kernels at the head of every
        // segment on the GPU (a tenth of a millisecond on an H200), and a nonzero() and a product each on the CPU.
        auto table = projected_table();                                     // (V,D)
        if (table.defined()) return table.index_select(0, flat).view({ids.size(0), ids.size(1), D});
    }
    auto row_scale = [&](int64_t rows, const torch::Tensor & local) {
        // One keep/drop decision per vocabulary row of this table, looked up per token.
        auto keep = torch::bernoulli(torch::full({rows}, 1.0 - word_drop, flat.options().dtype(torch::kFloat))) / (1.0 - word_drop);
        return keep.index_select(0, local).unsqueeze(1);                    // (n,1)
    };
    // On the GPU, rows gathered by index_select: its backward adds them back (index_add) without the host sync of
    // embedding's sorted backward, which reads its segment count on the host once per table (four syncs a step).
    auto lookup = [](const torch::Tensor & table, const torch::Tensor & ids) {
        return ids.is_cuda() ? table.index_select(0, ids) : F::embedding(ids, table);
    };
    if (in_proj.empty()) {
        auto out = lookup(emb[0], flat);                                    // (N,D)
        if (drop) out = out * row_scale(emb[0].size(0), flat).to(out.dtype());
        return out.view({ids.size(0), ids.size(1), D});
    }
    if (flat.is_cuda()) {
        // On a GPU every cluster gathers every token, so that no nonzero() stops the host and the step can be queued
        // ahead and captured in a graph. A token outside a cluster takes the row of its id modulo the cluster's size,
        // zeroed by its factor: clamped to the cluster's first or last row, those tokens' zero gradients crowded onto
        // two rows and the backward's atomic adds queued there. The clusters' rows side by side then go through one
        // product with the projections side by side, each row's own cluster alone nonzero, where four products, four
        // masks and three adds each passed over (N,D).
        std::vector<torch::Tensor> rows, projections;
        for (size_t i = 0; i < emb.size(); ++i) {
            const int64_t n = bounds[i + 1] - bounds[i];
            auto local = (flat - bounds[i]).remainder(n);                                              // (N,)
            auto factor = (flat >= bounds[i]).logical_and(flat < bounds[i + 1]).to(emb[i].scalar_type()).unsqueeze(1);   // (N,1)
            if (drop) factor = factor * row_scale(n, local).to(factor.dtype());
            rows.push_back(lookup(emb[i], local) * factor);                                             // (N,d_i)
            projections.push_back(in_proj[i]);                                                          // (D,d_i)
        }
        // In the tables' dtype, as the reference's embedding (and so the residual stream) is: fp32 under autocast.
        auto out = F::linear(torch::cat(rows, 1), torch::cat(projections, 1)).to(emb[0].scalar_type());   // (N,sum d_i) -> (N,D)
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
/// On the GPU, a product's output rows padded to a multiple of 8 with zero weights and -inf bias, which the softmax
/// ignores: cuBLAS takes a slow unaligned kernel for an odd count (the head's 20,000 words + 3 clusters, the 67,735
/// words of WikiText-103's last cluster; 1.5 ms of a batch-32 segment for the head alone). Returns (words + padding, d)
/// and (words + padding).
std::pair<torch::Tensor, torch::Tensor> padded_for_gemm(const torch::Tensor & weight, const torch::Tensor & bias) {
    const int64_t padding = weight.is_cuda() ? (8 - weight.size(0) % 8) % 8 : 0;
    if (!padding) return {weight, bias};
    return {torch::cat({weight, torch::zeros({padding, weight.size(1)}, weight.options())}),
            torch::cat({bias, torch::full({padding}, -std::numeric_limits<float>::infinity(), bias.options())})};
}

// STUDIO_LOSS_BIAS=ops: the logits' bias gradients by addmm's own backward (side-by-side timing).
const bool loss_bias_by_product_wanted = !environment_is("STUDIO_LOSS_BIAS", "ops");

/// hidden (n,d) x weight^T + bias: the logits. With a gradient on the GPU the bias's gradient rides in the weight's
/// gradient product, where addmm's backward read the (n, words) logits' gradient once more to sum its columns.
torch::Tensor logits(const torch::Tensor & hidden, const torch::Tensor & weight, const torch::Tensor & bias) {
    if (hidden.is_cuda() && torch::GradMode::is_enabled() && loss_bias_by_product_wanted)
        return biased_product(hidden, weight, bias, BiasGradient::ones_column);                      // (n, words)
    return F::linear(hidden, weight, bias);                                                           // (n, words)
}

/// A tail cluster's logits. On the GPU from fp32 operands: the product has a small inner dimension (a tail's width:
/// 128, 32 or 8 at div_value 4) and is bound by writing its output, so it writes fp32 once instead of bf16 that is
/// then copied to fp32 (under autocast the product stays bf16 as before). On the CPU, where the loss runs in row
/// blocks, converting or padding the weight for every block would cost more than it saves. Returns (n, words + padding).
torch::Tensor tail_logits(const torch::Tensor & hidden, const torch::Tensor & weight, const torch::Tensor & bias) {
    if (!hidden.is_cuda()) return F::linear(hidden, weight, bias);                    // (n, words)
    auto [w, b] = padded_for_gemm(weight.to(torch::kFloat), bias.to(torch::kFloat));
    return logits(hidden.to(torch::kFloat), w, b);                                    // (n, words + padding)
}

} // namespace

AdaptiveIOImpl::TargetClusters AdaptiveIOImpl::route_targets(const torch::Tensor & target, const torch::Tensor & like) const {
    TargetClusters routed;
    const int64_t C = num_clusters();
    routed.cluster = torch::zeros_like(target);
    for (int64_t i = 1; i < C; ++i) routed.cluster += (target >= bounds[i]).to(torch::kLong);     // (N,)
    routed.order = std::get<1>(torch::sort(routed.cluster, /*stable=*/true, 0, false));           // (N,)
    // Counted by scatter_add: CUDA's bincount reads the largest id on the host first, a sync of its own.
    routed.counts = torch::zeros({C}, routed.cluster.options()).scatter_add_(0, routed.cluster, torch::ones_like(routed.cluster)); // (C,)
    if (!target_log_prob_graph_safe(like)) routed.host_counts = HostCopy(routed.counts);
    return routed;
}

torch::Tensor AdaptiveIOImpl::target_log_prob(const torch::Tensor & hidden, const torch::Tensor & target, const TargetClusters * clusters) {
    torch::Tensor head_weight = out_weight[0], head_bias = out_bias[0];
    if (!in_proj.empty()) {
        head_weight = torch::cat({out_weight[0], cluster_weight}, 0);                  // (shortlist + C-1, D)
        head_bias = torch::cat({out_bias[0], cluster_bias}, 0);
    }
    std::tie(head_weight, head_bias) = padded_for_gemm(head_weight, head_bias);      // (shortlist + C-1 + padding, D)
    // Rows in blocks at CPU inference: one (N,V) fp32 logit tensor is 300 MB for the 160k-word cluster at batch 4
    // with random targets.
    const int64_t rows = hidden.size(0);
    int64_t widest = head_weight.size(0);
    for (size_t i = 1; i < out_weight.size(); ++i) widest = std::max(widest, out_weight[i].size(0));
    const int64_t block = cpu_inference_block(hidden, rows, widest * (int64_t) sizeof(float));
    if (block >= rows) return target_log_prob_rows(hidden, target, head_weight, head_bias, clusters);
    std::vector<torch::Tensor> parts;
    for (int64_t r = 0; r < rows; r += block) {
        const int64_t n = std::min(block, rows - r);
        parts.push_back(target_log_prob_rows(hidden.narrow(0, r, n), target.narrow(0, r, n), head_weight, head_bias, nullptr));
    }
    return torch::cat(parts);                                                          // (N,)
}

torch::Tensor AdaptiveIOImpl::target_log_prob_rows(const torch::Tensor & hidden, const torch::Tensor & target,
                                                   const torch::Tensor & head_weight, const torch::Tensor & head_bias,
                                                   const TargetClusters * clusters) {
    // The logits in the product's own dtype (bf16 under autocast): log_softmax_at reads them as they are on the GPU.
    if (in_proj.empty()) return log_softmax_at(logits(hidden, head_weight, head_bias), target);      // (N,V) -> (N,)
    const int64_t shortlist = bounds[1];
    const int64_t C = num_clusters();
    TargetClusters routed_here;
    if (!clusters) routed_here = route_targets(target, hidden);
    const TargetClusters & routed = clusters ? *clusters : routed_here;
    const auto & cluster = routed.cluster;                                             // (N,)
    const auto & order = routed.order;                                                 // (N,) rows, by cluster
    // One head column per row: a shortlist word's own, or its cluster's (column shortlist + i - 1) for a tail word,
    // which then adds its tail log-prob. One pass over the head's logits; no (N, shortlist + C-1) log-softmax.
    auto head_column = torch::where(cluster == 0, target, cluster + (shortlist - 1));  // (N,)
    auto head_hidden = F::linear(hidden, out_head_proj);                               // (N,D)
    auto head_logits = logits(head_hidden, head_weight, head_bias);                    // (N, shortlist + C-1 + padding)
    auto result = log_softmax_at(head_logits, head_column);                            // (N,)
    if (target_log_prob_graph_safe(hidden)) {
        // Our tail kernel finds each cluster's rows on the device (counts and starts never cross to the host), so
        // this path has static shapes and no sync: a CUDA graph can capture the whole segment, loss included.
        const auto & counts = routed.counts;                                                                   // (C,)
        auto ranges = torch::stack({counts.cumsum(0) - counts, counts}, 1).contiguous();                    // (C,2)
        for (int64_t i = 1; i < C; ++i) {
            auto projected = F::linear(hidden, tail_projection(i));                    // (N, d_i): only cluster i's rows are read
            auto tail_lp = tail_log_prob_by_kernel(projected, out_weight[i], out_bias[i], target - bounds[i], order, ranges[i], tail_words_kept(i));
            result = torch::where(cluster == i, result + tail_lp, result);            // tail_lp is written at cluster i's rows
        }
        return result;
    }
    // Every cluster's row count in one host transfer, started when the targets were routed: by now the GPU has long
    // passed it, so the host reads it without draining the queue (a bincount here stopped the GPU once a step).
    auto counts = routed.host_counts.defined() ? routed.host_counts : HostCopy(routed.counts);
    const auto * count = counts.get().data_ptr<int64_t>();                             // (C,)
    int64_t first = count[0];
    for (int64_t i = 1; i < C; ++i) {
        const int64_t n = count[i];
        if (n == 0) continue;
        auto index = order.narrow(0, first, n);                                        // (n,)
        first += n;
        auto h = hidden.index_select(0, index);
        auto projected = F::linear(h, tail_projection(i));                             // (n, d_i)
        auto column = target.index_select(0, index) - bounds[i];                       // (n,)
        auto tail_lp = tail_log_prob_by_kernel(projected, out_weight[i], out_bias[i], column, {}, {}, tail_words_kept(i));
        // Training in bf16 on the GPU: the logits are formed again in the gradient's kernels instead of being kept.
        if (!tail_lp.defined()) tail_lp = trainable_tail_log_prob(projected, out_weight[i], out_bias[i], column);
        if (!tail_lp.defined()) tail_lp = log_softmax_at(tail_logits(projected, out_weight[i], out_bias[i]), column); // (n,)
        result = result.index_copy(0, index, result.index_select(0, index) + tail_lp);  // head[cluster] + tail
    }
    return result;
}

bool AdaptiveIOImpl::target_log_prob_graph_safe(const torch::Tensor & hidden) const {
    if (!hidden.is_cuda() || torch::GradMode::is_enabled()) return false;
    for (size_t i = 1; i < out_weight.size(); ++i)
        if (!tail_kernel_applies(hidden, out_weight[i], out_bias[i])) return false;
    return true;
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
