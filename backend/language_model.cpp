#include "language_model.h"

#include <algorithm>
#include <cmath>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "device.h"
#include "layer_graph.h"
#include "rel_attention.h"

namespace studio {

namespace F = torch::nn::functional;

torch::Tensor sinusoid_positions(int64_t S, int64_t D, const torch::TensorOptions & options) {
    auto pos = torch::arange(S - 1, -1, -1.0, options.dtype(torch::kFloat));                       // (S,)
    auto inv_freq = 1.0 / torch::pow(10000.0, torch::arange(0, D, 2, options.dtype(torch::kFloat)) / (double) D); // (D/2,)
    auto angles = torch::outer(pos, inv_freq);                                                      // (S,D/2)
    return torch::stack({torch::sin(angles), torch::cos(angles)}, -1).view({S, D});                // (S,D) interleaved
}

torch::Tensor attention_keep_mask(int64_t T, int64_t M, bool same_length, const torch::Device & device) {
    auto i = torch::arange(T, torch::TensorOptions().dtype(torch::kLong).device(device)).unsqueeze(1);     // (T,1)
    auto j = torch::arange(T + M, torch::TensorOptions().dtype(torch::kLong).device(device)).unsqueeze(0); // (1,S)
    auto keep = j <= i + M;
    if (same_length) keep = keep.logical_and(j >= i);
    return keep;                                                                                    // (T,S)
}

LanguageModelImpl::LanguageModelImpl(ModelConfig config_) : config(std::move(config_)) {
    reset();
}

void LanguageModelImpl::reset() {
    const auto & c = config;
    TORCH_CHECK(c.vocab_size > 0, "model: vocab_size is not set (it comes from the dataset or model.vocab_size)");
    const int64_t D = c.hidden_dim, dh = c.resolved_head_dim(), L = c.num_layers;
    const bool all_attention = c.type == ModelType::AllAttention;
    const bool shared_bias = c.resolved_share_r_bias();
    io = register_module("io", AdaptiveIO(AdaptiveIOOptions(c.vocab_size, D).cutoffs(c.cutoffs).div_value(c.div_value)
                                              .tie_weight(c.tie_weight).tie_proj(c.tie_proj)));
    layers = register_module("layers", torch::nn::ModuleList());
    layer_list.clear();
    for (int64_t l = 0; l < L; ++l) {
        auto attention = RelativeAttentionOptions(D, c.heads_in_layer(l), dh)
                             .persistent(all_attention ? c.feedforward_dim : 0)
                             .own_r_bias(!shared_bias)
                             .gated(c.head_gates)
                             .attn_drop(c.attn_drop)
                             .same_length(c.same_length);
        auto layer = TransformerLayer(TransformerLayerOptions(attention)
                                          .feedforward_dim(all_attention ? 0 : c.feedforward_dim)
                                          .proj_drop(c.proj_drop)
                                          .ff_drop(c.resolved_ff_drop()));
        layers->push_back(layer);
        layer_list.push_back(layer);
    }
    if (all_attention) pos_emb = register_parameter("pos_emb", torch::empty({c.max_len, D}));
    if (shared_bias) {
        u_bias = register_parameter("u_bias", torch::zeros({c.num_heads * dh}));
        v_bias = register_parameter("v_bias", torch::zeros({c.num_heads * dh}));
    }
    if (!all_attention) out_norm = register_module("out_norm", OffsetLayerNorm(D));

    torch::NoGradGuard no_grad;
    if (all_attention) {
        // reference-model.md 1.7: tables and I/O projections U(-s1, s1); q/k/v/r, the cluster logits and the
        // persistent vectors U(-s2, s2); biases 0, gains 1.
        const double s1 = std::sqrt(1.0 / (double) D), s2 = std::sqrt(1.0 / (double) (D * L));
        for (auto & p : io->parameters()) if (p.dim() == 2) p.uniform_(-s1, s1);
        if (io->cluster_weight.defined()) io->cluster_weight.uniform_(-s2, s2);
        pos_emb.uniform_(-s1, s1);
        for (auto & layer : layer_list) {
            auto & a = *layer->attention;
            for (auto * w : {&a.q_weight, &a.k_weight, &a.v_weight, &a.r_weight, &a.mem_k, &a.mem_v}) {
                if (w->defined() && w->numel() > 0) w->uniform_(-s2, s2);
            }
            if (a.o_weight.numel() > 0) a.o_weight.uniform_(-s1, s1);
        }
    } else {
        // Huang et al. 2020 (T-Fixup), as the reference library initialises its Transformer-XL.
        const double s_ff = 0.67 * std::pow((double) L, -0.25), s_v = s_ff * std::sqrt(2.0);
        for (auto & e : io->emb) e.normal_(0.0, std::pow((double) D, -0.5));
        for (auto & p : io->in_proj) torch::nn::init::xavier_uniform_(p);
        if (io->out_head_proj.defined()) torch::nn::init::xavier_uniform_(io->out_head_proj);
        for (auto & p : io->out_tail_proj) if (p.defined()) torch::nn::init::xavier_uniform_(p);
        if (io->cluster_weight.defined()) torch::nn::init::xavier_uniform_(io->cluster_weight);
        for (auto & layer : layer_list) {
            auto & a = *layer->attention;
            torch::nn::init::xavier_uniform_(layer->ff1_weight, s_ff);
            torch::nn::init::xavier_uniform_(layer->ff2_weight, s_ff);
            if (a.q_weight.numel() == 0) continue;
            torch::nn::init::xavier_uniform_(a.q_weight);
            torch::nn::init::xavier_uniform_(a.k_weight);
            torch::nn::init::xavier_uniform_(a.r_weight);
            torch::nn::init::xavier_uniform_(a.v_weight, s_v);
            torch::nn::init::xavier_uniform_(a.o_weight, s_ff);
        }
    }
}

void LanguageModelImpl::pretty_print(std::ostream & stream) const {
    stream << "studio::LanguageModel(" << (config.type == ModelType::AllAttention ? "all_attention" : "transformer_xl")
           << ", layers=" << config.num_layers << ", hidden=" << config.hidden_dim << ")";
}

void LanguageModelImpl::train(bool on) {
    stacked_position_weight.clear();
    torch::nn::Module::train(on);
}

std::shared_ptr<torch::nn::Module> LanguageModelImpl::clone(const c10::optional<torch::Device> & device) const {
    auto copy = torch::nn::Cloneable<LanguageModelImpl>::clone(device);
    auto & model = dynamic_cast<LanguageModelImpl &>(*copy);
    model.layer_list.clear();
    for (const auto & layer : *model.layers) model.layer_list.emplace_back(std::dynamic_pointer_cast<TransformerLayerImpl>(layer));
    return copy;
}

std::vector<torch::Tensor> LanguageModelImpl::position_keys(const torch::Tensor & pos) {
    std::vector<torch::Tensor> weights;                                                   // (H*dh,D) per layer with heads
    for (const auto & layer : layer_list)
        if (layer->attention->r_weight.size(0) > 0) weights.push_back(layer->attention->r_weight);
    std::vector<torch::Tensor> keys(layer_list.size());
    if (weights.empty() || !stacked_products_enabled()) return keys;                     // each layer projects pos itself
    // In the dtype the layers' own products would give (bf16 under autocast), cast once with the concatenation.
    const auto dtype = pos.is_cuda() ? cuda_compute_dtype(pos) : pos.scalar_type();
    auto stacked = stacked_position_weight.get(weights, (int64_t) dtype, [&] { return torch::cat(weights, 0).to(dtype); }); // (sum H*dh,D)
    auto all = torch::mm(pos.to(dtype), stacked.t());                                    // (S,sum H*dh)
    int64_t offset = 0;
    for (size_t l = 0; l < layer_list.size(); ++l) {
        const int64_t width = layer_list[l]->attention->r_weight.size(0);
        if (width > 0) keys[l] = all.narrow(1, offset, width);                           // (S,H*dh) view
        offset += width;
    }
    return keys;
}

std::vector<torch::Tensor> LanguageModelImpl::initial_memory(int64_t batch, const torch::TensorOptions & options) const {
    std::vector<torch::Tensor> memory;
    for (int64_t l = 0; l < config.num_layers; ++l) memory.push_back(torch::zeros({batch, config.mem_len, config.hidden_dim}, options));
    return memory;
}

LMOutput LanguageModelImpl::forward(const torch::Tensor & input, const torch::Tensor & target,
                                    const std::vector<torch::Tensor> & memory_in, const GateSettings & gates, LayerGraph * graph,
                                    const std::vector<torch::Tensor> * memory_into) {
    const int64_t B = input.size(0), T = input.size(1), D = config.hidden_dim;
    const bool all_attention = config.type == ModelType::AllAttention;
    const auto float_options = pos_emb.defined() ? pos_emb.options() : io->emb[0].options();
    const auto memory = memory_in.empty() ? initial_memory(B, float_options) : memory_in;
    TORCH_CHECK((int64_t) memory.size() == config.num_layers, "model: memory has ", memory.size(), " layers, the model ", config.num_layers);
    TORCH_CHECK(!memory_into || (int64_t) memory_into->size() == config.num_layers, "model: memory_into has ", memory_into ? memory_into->size() : 0,
                " layers, the model ", config.num_layers);
    auto input_drop = F::DropoutFuncOptions().p(config.input_drop).training(is_training());

    auto h = io->embed(input, config.word_drop);                                          // (B,T,D)
    h = all_attention ? F::dropout(h, input_drop) * std::sqrt((double) D)                 // scaled after dropout
                      : F::dropout(h * std::sqrt((double) D), input_drop);

    // On the GPU, the loss's clusters from the targets alone, their row counts on their way to the host while the
    // layers run. (On the CPU nothing would overlap, and CPU inference routes each block of rows itself.)
    AdaptiveIOImpl::TargetClusters clusters;
    const bool routed = target.defined() && target.is_cuda() && !io->in_proj.empty();
    if (routed) clusters = io->route_targets(target.reshape({B * T}), h);
    const auto noise = gate_noise(gates, input.device());                                // (total heads,)
    auto layers = graph && graph->takes(*this, h) ? graph->run(*this, h, memory, gates, noise)
                                                  : run_layers(h, memory, gates, noise, memory_into);
    LMOutput out;
    out.memory = std::move(layers.memory);
    out.closed = layers.closed;
    out.l0 = layers.l0;
    h = layers.hidden;
    if (all_attention) {
        // The last layer's projection dropout and the output's: two independent masks, whose product is one mask that
        // keeps (1-p1)(1-p2) of the entries, scaled by its inverse. One pass each way, the same distribution.
        const double keep = (1 - config.proj_drop) * (1 - config.output_drop);
        h = F::dropout(h, F::DropoutFuncOptions().p(1 - keep).training(is_training()));
    } else {
        h = F::dropout(out_norm->forward(h), F::DropoutFuncOptions().p(config.output_drop).training(is_training()));
    }
    if (!target.defined()) {
        out.hidden = h;   // no softmax asked for (the benchmark's loss-free workload)
        return out;
    }
    out.target_log_prob = io->target_log_prob(h.reshape({B * T, D}), target.reshape({B * T}), routed ? &clusters : nullptr).view({B, T});
    return out;
}

torch::Tensor LanguageModelImpl::gate_noise(const GateSettings & gates, const torch::Device & device) const {
    if (!gates.enabled || !is_training() || !has_gates()) return {};
    // One CPU generator seeded per step and one asynchronous copy, not one blocking copy per layer.
    auto generator = at::make_generator<at::CPUGeneratorImpl>(gates.noise_seed);
    int64_t heads = 0;
    for (const auto & layer : layer_list) if (layer->attention->gate) heads += layer->attention->options.num_heads();
    auto noise = torch::rand({heads}, generator);                                         // (total heads,)
    return device.is_cuda() ? noise.pin_memory().to(device, /*non_blocking=*/true) : noise;
}

LayerStackOutput LanguageModelImpl::run_layers(const torch::Tensor & h_in, const std::vector<torch::Tensor> & memory,
                                               const GateSettings & gates, const torch::Tensor & noise,
                                               const std::vector<torch::Tensor> * memory_into) {
    const int64_t T = h_in.size(1), D = config.hidden_dim, M = memory[0].size(1), S = T + M;
    const bool all_attention = config.type == ModelType::AllAttention;
    auto input_drop = F::DropoutFuncOptions().p(config.input_drop).training(is_training());
    torch::Tensor pos;                                                                    // (S,D)
    if (all_attention) {
        TORCH_CHECK(S <= config.max_len, "model: ", S, " keys exceed the position table's ", config.max_len, " rows");
        pos = F::dropout(pos_emb, input_drop).narrow(0, config.max_len - S, S);
    } else {
        pos = F::dropout(sinusoid_positions(S, D, h_in.options()).to(h_in.dtype()), input_drop);
    }
    auto keep = attention_keep_mask(T, M, config.same_length, h_in.device());
    // One product for all layers: sixteen of 384 rows each cost ~7 us apiece on an H200, mostly latency.
    const auto layer_position_keys = position_keys(pos);                                  // (S,H*dh) per layer
    LayerStackOutput out;
    // When every layer's gate is alike (one head count, one set of constants: the gating stage's dense model), all
    // are sampled in one pass: a few kernels a step instead of some twenty a layer.
    std::vector<torch::Tensor> gate_weights;                                              // (H,) per layer
    if (gates.enabled && gates_alike()) {
        const auto & gate_options = layer_list.front()->attention->gate->options;
        auto sample = sample_hard_concrete(stacked_log_alpha(), noise, gate_options);    // (L,H)
        gate_weights = (gates.output_scaling ? output_scaled(sample, gate_options.num_heads()) : sample.gate).unbind(0);
        out.closed = sample.closed.sum();
    }
    if (noise.defined()) out.l0 = l0();
    auto h = h_in;
    // Each All-attention layer leaves its residual add to the next one's norm (TransformerLayer::forward): at
    // inference our norm kernel adds it as it reads the hidden state; in training too, and its backward adds the
    // gradients and casts them (a pass over the hidden state and a launch fewer a layer, each way). Elsewhere the
    // layer adds it itself. STUDIO_RESIDUAL_IN_NORM=0: a separate add each layer.
    static const bool residual_in_norm_wanted = !environment_is("STUDIO_RESIDUAL_IN_NORM", "0");
    const bool training = torch::GradMode::is_enabled() && is_training();
    const bool defer_residual = residual_in_norm_wanted && !torch::GradMode::is_enabled() && !is_training();
    torch::Tensor pending;                                                                // (B,T,D) still to add to h
    int64_t noise_offset = 0;
    // The memory of layer l is its own input, carried to the next segment: its last M positions, which lie in this
    // segment's input alone when M <= T (the reference shapes: 192 and 192), with no copy.
    auto memory_of = [&](const torch::Tensor & input, int64_t l) {
        return M <= T ? input.narrow(1, T - M, M).detach() : torch::cat({memory[l], input}, 1).narrow(1, T, M).detach();   // (B,M,D)
    };
    for (int64_t l = 0; l < config.num_layers; ++l) {
        auto & layer = layer_list[(size_t) l];
        // In training an All-attention layer hands back its input, the pending output added: its memory is taken
        // from that, after the layer.
        const bool input_returned = residual_in_norm_wanted && training && layer->options.feedforward_dim() == 0;
        // Else a memory of hidden states is this layer's whole input: the add cannot wait.
        if (pending.defined() && memory[l].dim() != 4 && M > 0 && !input_returned) {
            h = h + pending;
            pending = torch::Tensor();
        }
        // At inference with the key/value cache, the layer's keys and values of the memory's positions take its place
        // (below).
        torch::Tensor next_memory;
        if (M == 0) next_memory = memory[l];
        else if (memory[l].dim() == 4) next_memory = torch::Tensor();                                 // the layer's own
        else if (!input_returned) next_memory = memory_of(h, l);                                      // (B,M,D)
        LayerContext context;
        context.u = u_bias;
        context.v = v_bias;
        context.gates.enabled = gates.enabled;
        context.gates.output_scaling = gates.output_scaling;
        if (!gate_weights.empty()) {
            context.gates.weight = gate_weights[(size_t) l];
        } else if (noise.defined() && layer->attention->gate) {
            context.gates.noise = noise.narrow(0, noise_offset, layer->attention->options.num_heads());
            noise_offset += layer->attention->options.num_heads();
        }
        const torch::Tensor into = memory_into ? (*memory_into)[(size_t) l] : torch::Tensor();
        context.key_values_into = into;
        context.position_keys = layer_position_keys[(size_t) l];
        context.pending = pending;
        context.defer_residual = defer_residual || input_returned;
        LayerOutputs layer_out;
        h = layer->forward(h, memory[l], pos, keep, context, &layer_out);
        pending = layer_out.pending;
        if (input_returned && M > 0 && memory[l].dim() != 4) next_memory = memory_of(h, l);          // (B,M,D)
        if (layer_out.closed.defined()) out.closed = out.closed.defined() ? out.closed + layer_out.closed : layer_out.closed;
        next_memory = layer_out.key_values.defined() ? layer_out.key_values : next_memory;            // (B,M,2,H*dh) | (B,M,D)
        if (into.defined() && !next_memory.is_same(into)) {
            TORCH_CHECK(into.sizes() == next_memory.sizes(), "model: memory_into[", l, "] is ", into.sizes(), ", the memory ", next_memory.sizes());
            into.copy_(next_memory);
            next_memory = into;
        }
        out.memory.push_back(next_memory);
    }
    out.hidden = pending.defined() ? h + pending : h;
    return out;
}

ParameterCounts LanguageModelImpl::parameter_counts() const {
    ParameterCounts counts;
    for (const auto & p : parameters()) counts.total += p.numel();
    counts.embedding = io->input_parameter_count();
    counts.softmax = io->output_parameter_count();
    for (const auto & layer : layer_list) {
        int64_t n = 0;
        for (const auto & p : layer->parameters()) n += p.numel();
        counts.per_layer.push_back(n);
        counts.layers += n;
        counts.heads.push_back(layer->attention->options.num_heads());
        counts.per_head.push_back(layer->attention->parameters_per_head());
        if (layer->attention->gate) counts.gates += layer->attention->gate->log_alpha.numel();
    }
    counts.other = counts.total - counts.layers - counts.embedding - counts.softmax;
    return counts;
}

bool LanguageModelImpl::has_gates() const {
    for (const auto & layer : layer_list) if (layer->attention->gate) return true;
    return false;
}

bool LanguageModelImpl::gates_alike() const {
    if (layer_list.empty()) return false;
    for (const auto & layer : layer_list) {
        const auto & gate = layer->attention->gate;
        if (!gate) return false;
        const auto & a = gate->options, & b = layer_list.front()->attention->gate->options;
        if (a.num_heads() != b.num_heads() || a.beta() != b.beta() || a.gamma() != b.gamma() || a.zeta() != b.zeta()) return false;
    }
    return true;
}

void LanguageModelImpl::configure_gates(const HardConcreteGateOptions & options) {
    for (auto & layer : layer_list) {
        if (!layer->attention->gate) continue;
        auto o = options;
        o.num_heads(layer->attention->options.num_heads());
        layer->attention->gate->configure(o);
    }
}

void LanguageModelImpl::configure_gates_constants_only(const GateConfig & gate) {
    for (auto & layer : layer_list) {
        if (!layer->attention->gate) continue;
        auto o = HardConcreteGateOptions(layer->attention->options.num_heads()).beta(gate.beta).gamma(gate.gamma).zeta(gate.zeta);
        layer->attention->gate->configure(o, /*reinitialise=*/false);
    }
}

torch::Tensor LanguageModelImpl::stacked_log_alpha() const {
    std::vector<torch::Tensor> log_alphas;
    for (const auto & layer : layer_list) log_alphas.push_back(layer->attention->gate->log_alpha);
    return torch::stack(log_alphas);                                                      // (L,H)
}

torch::Tensor LanguageModelImpl::l0() const {
    if (gates_alike()) return hard_concrete_l0(stacked_log_alpha(), layer_list.front()->attention->gate->options);
    torch::Tensor total;
    for (const auto & layer : layer_list) {
        if (!layer->attention->gate) continue;
        auto term = layer->attention->gate->l0();
        total = total.defined() ? total + term : term;
    }
    return total.defined() ? total : torch::zeros({});
}

torch::Tensor LanguageModelImpl::expected_sparsity() const {
    if (gates_alike()) return 1.0 - hard_concrete_p_open(stacked_log_alpha(), layer_list.front()->attention->gate->options).mean();
    torch::Tensor open;
    int64_t heads = 0;
    for (const auto & layer : layer_list) {
        if (!layer->attention->gate) continue;
        auto p = layer->attention->gate->p_open().sum();
        open = open.defined() ? open + p : p;
        heads += layer->attention->options.num_heads();
    }
    if (!open.defined()) return torch::zeros({});
    return 1.0 - open / (double) heads;
}

namespace {
template <typename T, typename Fn>
std::vector<std::vector<T>> per_head(const std::vector<TransformerLayer> & layers, Fn value) {
    std::vector<std::vector<T>> result;
    for (const auto & layer : layers) {
        std::vector<T> row;
        if (layer->attention->gate) {
            auto t = value(*layer->attention->gate).detach().to(torch::kCPU).to(torch::kFloat).contiguous();
            for (int64_t h = 0; h < t.numel(); ++h) row.push_back((T) (t.template data_ptr<float>()[h]));
        }
        result.push_back(row);
    }
    return result;
}
} // namespace

std::vector<std::vector<float>> LanguageModelImpl::gate_log_alpha() const {
    return per_head<float>(layer_list, [](const HardConcreteGateImpl & g) { return g.log_alpha; });
}
std::vector<std::vector<float>> LanguageModelImpl::gate_p_open() const {
    return per_head<float>(layer_list, [](const HardConcreteGateImpl & g) { return g.p_open(); });
}
std::vector<std::vector<bool>> LanguageModelImpl::gate_open() const {
    auto rows = per_head<float>(layer_list, [](const HardConcreteGateImpl & g) { return g.open_mask(); });
    std::vector<std::vector<bool>> open;
    for (auto & row : rows) open.emplace_back(row.begin(), row.end());
    return open;
}

double LanguageModelImpl::hard_sparsity() const {
    int64_t closed = 0, total = 0;
    for (const auto & row : gate_open()) {
        for (bool o : row) closed += o ? 0 : 1;
        total += (int64_t) row.size();
    }
    return total ? (double) closed / (double) total : 0.0;
}

int64_t LanguageModelImpl::set_closed_heads(int64_t closed) {
    struct Head { float log_alpha; size_t layer; int64_t head; };
    std::vector<Head> heads;
    const auto values = gate_log_alpha();
    for (size_t l = 0; l < values.size(); ++l) for (size_t h = 0; h < values[l].size(); ++h) heads.push_back({values[l][h], l, (int64_t) h});
    std::stable_sort(heads.begin(), heads.end(), [](const Head & a, const Head & b) { return a.log_alpha < b.log_alpha; });
    torch::NoGradGuard no_grad;
    int64_t moved = 0;
    for (size_t i = 0; i < heads.size(); ++i) {
        auto & gate = layer_list[heads[i].layer]->attention->gate;
        const auto & o = gate->options;
        // The eval rule opens a gate iff log_alpha >= logit((0.5 - gamma) / (zeta - gamma)) (0 at the defaults).
        const double t = (0.5 - o.gamma()) / (o.zeta() - o.gamma());
        const double threshold = std::log(t / (1 - t));
        const bool close = (int64_t) i < closed;
        const bool is_open = heads[i].log_alpha >= threshold;
        if (close == is_open) {
            gate->log_alpha[heads[i].head].fill_(threshold + (close ? -1e-3 : 1e-3));
            ++moved;
        }
    }
    return moved;
}

std::vector<torch::Tensor> LanguageModelImpl::gate_parameters() const {
    std::vector<torch::Tensor> result;
    for (const auto & layer : layer_list) if (layer->attention->gate) result.push_back(layer->attention->gate->log_alpha);
    return result;
}

} // namespace studio
