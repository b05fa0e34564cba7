// The language model: All-attention (persistent vectors, learned position table, per-layer u/v) or Transformer-XL
// (ReLU feed-forward, sinusoidal positions, shared u/v, final LayerNorm), both with segment memory and adaptive
// input/softmax (reference-model.md sections 1 and 1b).
#pragma once

#include <vector>

#include <torch/types.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/nn/modules/container/modulelist.h>

#include "adaptive_io.h"
#include "config.h"
#include "derived_weight.h"
#include "transformer_layer.h"

namespace studio {

class LayerGraph;

/// Parameter counts, tied tensors counted once.
struct ParameterCounts {
    int64_t total = 0;
    int64_t layers = 0;                 ///< all transformer layers (gates included when the model has them)
    int64_t embedding = 0;              ///< input embedding tables and their projections
    int64_t softmax = 0;                ///< output side not tied to the input
    int64_t other = 0;                  ///< position table, shared u/v, final norm
    int64_t gates = 0;
    std::vector<int64_t> per_layer;
    std::vector<int64_t> per_head;      ///< parameters one head of each layer carries
    std::vector<int64_t> heads;         ///< heads per layer
};

/// How the head gates act in a forward pass.
struct GateSettings {
    bool enabled = false;               ///< multiply head outputs by their gates
    bool output_scaling = false;        ///< technique 3
    uint64_t noise_seed = 0;            ///< training samples draw their uniform noise from this seed (same on every rank)
};

struct LMOutput {
    torch::Tensor target_log_prob;      ///< (B,T) float32 log p(target)
    /// Per layer, detached: the next segment's memory. (B,M,D) hidden states, or at inference with the key/value
    /// cache (rel_attention.h) the layer's keys and values of those positions, (B,M,2,H*dh), for a layer with heads.
    std::vector<torch::Tensor> memory;
    torch::Tensor closed;               ///< scalar: closed gates in this forward (undefined when gates are off)
    torch::Tensor l0;                   ///< the L0 term (l0()) of a gated training forward, else undefined
    torch::Tensor hidden;               ///< (B,T,D) final hidden state, set only when no target was given
};

/// What the layer stack of one forward produces.
struct LayerStackOutput {
    torch::Tensor hidden;               ///< (B,T,D) the last layer's output
    std::vector<torch::Tensor> memory;  ///< per layer (B,M,D) or cached keys and values (B,M,2,H*dh), detached (LMOutput)
    torch::Tensor closed;               ///< closed gates sampled inside the layers (undefined when none were)
    torch::Tensor l0;                   ///< l0() when the layers sampled gates for training
};

class LanguageModelImpl : public torch::nn::Cloneable<LanguageModelImpl> {
public:
    explicit LanguageModelImpl(ModelConfig config);
    void reset() override;
    void pretty_print(std::ostream & stream) const override;
    /// Also forgets the weights kept for inference (DerivedWeight): training writes parameters unseen.
    void train(bool on = true) override;
    /// Cloneable's deep copy, with layer_list pointing at the copy's own layers (Cloneable fills `layers` with clones
    /// of this model's after reset() built layer_list from fresh ones).
    std::shared_ptr<torch::nn::Module> clone(const c10::optional<torch::Device> & device = c10::nullopt) const override;

    /// input, target (B,T) int64 (target undefined: stop before the softmax); memory from the previous segment, or empty for zeros (the first segment).
    /// With `graph`, a CUDA training forward runs its layers from that graph once it has captured them (layer_graph.h).
    /// With `memory_into` (a tensor per layer shaped as the memory this forward returns), the next memory is written
    /// there and returned as those tensors: where a layer's cached keys and values fit, by the products themselves,
    /// else by a copy (for a CUDA graph, which must find the memory in the same buffers every replay).
    LMOutput forward(const torch::Tensor & input, const torch::Tensor & target, const std::vector<torch::Tensor> & memory,
                     const GateSettings & gates = {}, LayerGraph * graph = nullptr, const std::vector<torch::Tensor> * memory_into = nullptr);
    /// The layers' part of a forward, what a training graph captures: the positions with their dropout, the keep mask,
    /// the gates' samples and L0 term, and every layer. h (B,T,D) is the embedded, dropped-out input; memory has a
    /// (B,M,D) tensor per layer; noise (total heads,) the uniform noise of a training forward's gates (undefined
    /// without gates, and in eval, where the gates are deterministic).
    LayerStackOutput run_layers(const torch::Tensor & h, const std::vector<torch::Tensor> & memory, const GateSettings & gates,
                                const torch::Tensor & noise, const std::vector<torch::Tensor> * memory_into = nullptr);
    /// The uniform noise of a gated training forward's gates, one per head of every gated layer, drawn on the CPU from
    /// gates.noise_seed (the same on every rank and device) and sent to `device` without waiting; undefined when the
    /// forward samples no gates.
    torch::Tensor gate_noise(const GateSettings & gates, const torch::Device & device) const;

    /// Zero memory for a batch of B rows (what the first segment attends to).
    std::vector<torch::Tensor> initial_memory(int64_t batch, const torch::TensorOptions & options) const;
    ParameterCounts parameter_counts() const;

    bool has_gates() const;
    /// Every layer has a gate, all with one head count and one set of constants (then sampled in one pass).
    bool gates_alike() const;
    /// Every layer's log_alpha stacked (L,H), when gates_alike().
    torch::Tensor stacked_log_alpha() const;
    /// Set the gate constants and re-initialise every log_alpha (the start of a gating stage).
    void configure_gates(const HardConcreteGateOptions & options);
    /// Only the constants (beta, gamma, zeta) of the config's gate section: a loaded model's eval rule then matches.
    void configure_gates_constants_only(const GateConfig & gate);
    /// Sum over all gates of P(gate != 0): the L0 term.
    torch::Tensor l0() const;
    /// Expected fraction of closed heads under the training distribution (differentiable).
    torch::Tensor expected_sparsity() const;
    /// log_alpha, P(open) and the eval open/closed decision per layer, per head (plain data for events).
    std::vector<std::vector<float>> gate_log_alpha() const;
    std::vector<std::vector<float>> gate_p_open() const;
    std::vector<std::vector<bool>> gate_open() const;
    /// Fraction of heads closed by the deterministic eval rule.
    double hard_sparsity() const;
    /// Closes exactly `closed` heads: those with the lowest log_alpha (the gates the training was least sure to keep),
    /// moving only the log_alpha values that sit on the wrong side of the eval threshold. Returns how many moved.
    int64_t set_closed_heads(int64_t closed);
    /// The gate tensors and every other parameter, for separate optimizer groups.
    std::vector<torch::Tensor> gate_parameters() const;

    ModelConfig config;
    AdaptiveIO io{nullptr};
    torch::nn::ModuleList layers{nullptr};
    std::vector<TransformerLayer> layer_list;
    torch::Tensor pos_emb;              ///< (max_len, D), All-attention
    torch::Tensor u_bias, v_bias;       ///< (H*dh,) shared by all layers when share_r_bias
    OffsetLayerNorm out_norm{nullptr};  ///< Transformer-XL

private:
    /// Every layer's position keys, pos (S,D) projected by its r_weight, formed by one product (the layers share pos):
    /// (S,H*dh) per layer, undefined for a layer without heads.
    std::vector<torch::Tensor> position_keys(const torch::Tensor & pos);
    DerivedWeight stacked_position_weight;   ///< position_keys' stacked r_weights, kept at inference
};
TORCH_MODULE(LanguageModel);

/// Sinusoidal embeddings of the distances S-1 .. 0, sin and cos interleaved: (S, D).
torch::Tensor sinusoid_positions(int64_t S, int64_t D, const torch::TensorOptions & options);
/// keep (T, S): query i sees key j iff j <= i + M, and with same_length also j >= i.
torch::Tensor attention_keep_mask(int64_t T, int64_t M, bool same_length, const torch::Device & device);

} // namespace studio
