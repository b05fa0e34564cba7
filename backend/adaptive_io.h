// Adaptive input embedding and adaptive softmax with the reference's tying (reference-model.md section 1.5),
// or a plain (optionally tied) embedding + softmax when there are no cutoffs. One module owns both halves so a
// tied tensor is one parameter, counted and saved once.
#pragma once

#include <vector>

#include <torch/types.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include "derived_weight.h"
#include "device.h"

namespace studio {

struct AdaptiveIOOptions {
    AdaptiveIOOptions(int64_t vocab_size, int64_t hidden_dim) : vocab_size_(vocab_size), hidden_dim_(hidden_dim) {}
    TORCH_ARG(int64_t, vocab_size);
    TORCH_ARG(int64_t, hidden_dim);
    TORCH_ARG(std::vector<int64_t>, cutoffs);  ///< empty = plain softmax
    TORCH_ARG(double, div_value) = 4.0;
    TORCH_ARG(bool, tie_weight) = true;
    TORCH_ARG(bool, tie_proj) = true;
};

class AdaptiveIOImpl : public torch::nn::Cloneable<AdaptiveIOImpl> {
public:
    explicit AdaptiveIOImpl(AdaptiveIOOptions options);
    void reset() override;
    void pretty_print(std::ostream & stream) const override;
    /// Also forgets the tables kept for inference (DerivedWeight): training writes parameters unseen.
    void train(bool on = true) override;

    /// ids (B,T) int64 -> (B,T,D), unscaled. word_drop > 0 drops whole vocabulary rows (kept rows scaled 1/(1-p)).
    /// At inference (no gradient, eval mode) with clusters, from every table projected to D once (projected_table).
    torch::Tensor embed(const torch::Tensor & ids, double word_drop);
    /// Every cluster's table projected to D and joined, (V,D), as embed's products would give each row (bf16 products
    /// under autocast, in the tables' dtype); kept between inference forwards. Undefined without clusters, or where
    /// it would pass 1 GiB.
    torch::Tensor projected_table();
    /// Where each target row's word lives. It depends on the targets alone, so LanguageModel::forward routes them
    /// before the layers run, and the loss then reads the row counts on the host without stopping the GPU.
    struct TargetClusters {
        torch::Tensor cluster;  ///< (N,) each row's cluster (0: the shortlist)
        torch::Tensor order;    ///< (N,) the rows, stably sorted by cluster
        torch::Tensor counts;   ///< (C,) rows per cluster
        HostCopy host_counts;   ///< the same on the host, on its way; undefined where the loss needs no host counts
    };
    /// target (N,); `like` stands for the hidden rows the loss will read (device, dtype).
    TargetClusters route_targets(const torch::Tensor & target, const torch::Tensor & like) const;
    /// hidden (N,D), target (N,) -> log p(target) (N,), float32. `clusters`: route_targets(target) made earlier.
    torch::Tensor target_log_prob(const torch::Tensor & hidden, const torch::Tensor & target, const TargetClusters * clusters = nullptr);
    /// Whether target_log_prob of such hidden rows runs with static shapes and no host sync, so a CUDA graph may
    /// capture it: GPU inference with our tail kernel (or a plain softmax).
    bool target_log_prob_graph_safe(const torch::Tensor & hidden) const;

    int64_t num_clusters() const { return (int64_t) bounds.size() - 1; }
    /// Parameters of the input side (embedding tables and their projections), and of the output side not tied to it.
    int64_t input_parameter_count() const;
    int64_t output_parameter_count() const;

    AdaptiveIOOptions options;
    std::vector<int64_t> bounds;                 ///< cluster boundaries: 0, cutoffs..., vocab_size
    std::vector<int64_t> widths;                 ///< embedding width per cluster
    std::vector<torch::Tensor> emb;              ///< (n_i, d_i)
    std::vector<torch::Tensor> in_proj;          ///< (D, d_i): d_i -> D; empty for a plain softmax
    torch::Tensor out_head_proj;                 ///< (D, D), never tied; adaptive only
    std::vector<torch::Tensor> out_weight;       ///< (n_i, d_i); the emb tensor when tied
    std::vector<torch::Tensor> out_bias;         ///< (n_i,)
    std::vector<torch::Tensor> out_tail_proj;    ///< (d_i, D) for tails: D -> d_i; in_proj[i]^T when tied
    torch::Tensor cluster_weight, cluster_bias;  ///< (C, D), (C,): head-softmax logits of the tail clusters

private:
    DerivedWeight projected_tables;              ///< projected_table's
    std::vector<DerivedWeight> tail_words;       ///< each tail's words as our inference kernel reads them
    /// Tail `cluster`'s words laid out for our inference kernel, kept while its weight and bias stay as they are.
    torch::Tensor tail_words_kept(size_t cluster);
    torch::Tensor tail_projection(size_t cluster) const; // (d_i, D) weight for linear(): D -> d_i
    /// target_log_prob of a block of rows, given the head's joined weight and bias (shortlist + cluster logits).
    torch::Tensor target_log_prob_rows(const torch::Tensor & hidden, const torch::Tensor & target, const torch::Tensor & head_weight,
                                       const torch::Tensor & head_bias, const TargetClusters * clusters);
};
TORCH_MODULE(AdaptiveIO);

} // namespace studio
