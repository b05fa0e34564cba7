// `studio selftest`: the training step's own machinery on the device: layers replayed from CUDA graphs (layer_graph.h)
// against eager steps; LAMB, the content bias, the gated output weight, the attention parts' merge and the segment norm
// by our kernels against LibTorch's operations; the products whose bias gradient rides in a matrix product.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <utility>

#include <torch/torch.h>

#include "apart_attention.h"
#include "biased_product.h"
#include "content_bias.h"
#include "device.h"
#include "gated_weight.h"
#include "language_model.h"
#include "layer_graph.h"
#include "optimizer.h"
#include "rel_attention.h"
#include "selftest_checks.h"
#include "transformer_layer.h"

namespace studio {

ModelConfig small_training_config() {
    ModelConfig m;
    m.num_layers = 4;
    m.num_heads = 4;
    m.hidden_dim = 128;
    m.feedforward_dim = 128;
    m.vocab_size = 1000;
    m.cutoffs = {200, 500};
    m.max_len = 128;
    m.tgt_len = 64;
    m.mem_len = 64;
    m.attn_drop = m.proj_drop = m.input_drop = m.output_drop = m.word_drop = 0.0;
    return m;
}

namespace {

struct TrainedSteps {
    std::vector<double> losses;
    std::vector<torch::Tensor> parameters;
    std::vector<std::string> names;
    int64_t replays = 0;
};

/// Six training steps of a small gated all-attention model with every dropout on, from one initialisation, in bf16
/// autocast; the layers eagerly or through a LayerGraph. `seed` seeds each step's generators as the trainer does.
TrainedSteps train_steps(const torch::Device & device, bool graphed, uint64_t seed) {
    ModelConfig m = small_training_config();
    m.attn_drop = m.proj_drop = m.input_drop = m.output_drop = 0.1;
    m.head_gates = true;
    torch::manual_seed(1234);
    LanguageModel model(m);
    model->to(device);
    model->train();
    model->configure_gates(HardConcreteGateOptions(1).init_log_alpha(2.0));
    OptimizerConfig oc;
    oc.lr = 1e-3;
    Optimizer optimizer(oc, make_param_groups(*model, 0.0, 10.0));
    optimizer.use_cuda_graphs(graphed);
    auto tokens = torch::randint(0, m.vocab_size, {8, m.tgt_len + 1}, torch::TensorOptions().dtype(torch::kLong).device(device));
    auto input = tokens.narrow(1, 0, m.tgt_len), target = tokens.narrow(1, 1, m.tgt_len);
    GateSettings gates;
    gates.enabled = true;
    gates.output_scaling = true;
    LayerGraph layer_graph;
    std::vector<torch::Tensor> memory;
    TrainedSteps result;
    for (uint64_t step = 0; step < 6; ++step) {
        seed_step(seed, 2, step);
        gates.noise_seed = mix_seed(seed, 2, step);
        torch::Tensor loss;
        {
            AutocastGuard autocast(device, true);
            auto out = model->forward(input, target, memory, gates, graphed ? &layer_graph : nullptr);
            memory = out.memory;
            loss = -out.target_log_prob.mean() + 0.01 * out.l0;
        }
        optimizer.zero_grad();
        loss.backward();
        optimizer.clip_gradients(0.5);
        optimizer.step(1e-3);
        result.losses.push_back(loss.item<double>());
    }
    for (const auto & p : model->named_parameters()) {
        result.parameters.push_back(p.value().detach().to(torch::kFloat).clone());
        result.names.push_back(p.key());
    }
    result.replays = layer_graph.replays();
    return result;
}

double loss_difference(const TrainedSteps & a, const TrainedSteps & b) {
    double worst = 0;
    for (size_t i = 0; i < a.losses.size(); ++i) worst = std::max(worst, std::abs(a.losses[i] - b.losses[i]));
    return worst;
}

/// The largest parameter difference, and the parameter it is in.
std::pair<double, std::string> parameter_difference(const TrainedSteps & a, const TrainedSteps & b) {
    std::pair<double, std::string> worst{0.0, "none"};
    for (size_t i = 0; i < a.parameters.size(); ++i) {
        const double difference = (a.parameters[i] - b.parameters[i]).abs().max().item<double>();
        if (difference > worst.first) worst = {difference, a.names[i]};
    }
    return worst;
}

} // namespace

bool check_layer_graph(const torch::Device & device) {
    if (!LayerGraph::available() || !device.is_cuda()) {
        std::printf("selftest: training layers from CUDA graphs are not built here (CUDA and LibTorch 2 only)\n");
        return true;
    }
    const auto eager = train_steps(device, false, 1), eager_again = train_steps(device, false, 1);
    const auto graphed = train_steps(device, true, 1), reseeded = train_steps(device, false, 2);
    // Eager steps are not bit-reproducible (atomic additions in some backward kernels): the graph may differ from
    // eager by what eager differs from itself, and must differ far less than another dropout stream does.
    const double floor_loss = loss_difference(eager, eager_again), graph_loss = loss_difference(eager, graphed);
    const auto [floor_params, floor_where] = parameter_difference(eager, eager_again);
    const auto [graph_params, graph_where] = parameter_difference(eager, graphed);
    const double other_stream = loss_difference(eager, reseeded), other_params = parameter_difference(eager, reseeded).first;
    // One pair of eager runs can miss a rare flip of those additions (seen: 4.96e-5 in one gate's log_alpha, in eager
    // against eager too), so the parameters may also differ by a hundredth of what another dropout stream moves them.
    const bool pass = graphed.replays == 6 - LayerGraph::kWarmupSteps && graph_loss <= 4 * floor_loss + 1e-5
                      && graph_params <= 4 * floor_params + std::max(1e-5, other_params / 100) && other_stream > 100 * (graph_loss + 1e-7);
    std::printf("selftest: 6 gated training steps with dropout, layers replayed from CUDA graphs (%lld replays) vs eager: loss max "
                "difference %.2e, parameters %.2e in %s (eager vs eager %.2e, %.2e in %s; another seed's differ by %.2e, %.2e) %s\n",
                (long long) graphed.replays, graph_loss, graph_params, graph_where.c_str(), floor_loss, floor_params, floor_where.c_str(),
                other_stream, other_params, pass ? "ok" : "FAIL");
    return pass;
}

bool check_lamb_kernels(const torch::Device & device) {
    // Four clipped steps at four learning rates of two groups (with and without weight decay) of odd-sized tensors,
    // from identical states; with graphs, the last two are replays. 20001 elements span three of the moments kernel's
    // chunks of 8192; the first group ends 1 element past a multiple of 4.
    auto run = [&](bool kernels, bool graphs) {
        set_fused_attention(kernels);
        torch::manual_seed(11);
        std::vector<torch::Tensor> decay, no_decay;
        for (int64_t n : {1003, 20001, 4096, 37, 1}) decay.push_back(torch::randn({n}, torch::TensorOptions().device(device)).requires_grad_(true));
        for (int64_t n : {255, 64}) no_decay.push_back(torch::randn({n}, torch::TensorOptions().device(device)).requires_grad_(true));
        no_decay.push_back(torch::zeros({16}, torch::TensorOptions().device(device)).requires_grad_(true));   // trust ratio 1
        OptimizerConfig oc;
        Optimizer optimizer(oc, {ParamGroup{"decay", decay, 1.0, 0.01}, ParamGroup{"no_decay", no_decay, 1.0, 0.0}});
        optimizer.use_cuda_graphs(graphs);
        Outputs state;
        for (int step = 0; step < 4; ++step) {
            optimizer.zero_grad();
            for (auto * group : {&decay, &no_decay})
                for (auto & p : *group) p.grad().copy_(torch::randn(p.sizes(), p.options()) * (step + 1));
            state.values.push_back(optimizer.clip_gradients(20.0).reshape({1}).clone());
            optimizer.step(1e-2 * (step + 1));
        }
        for (auto * group : {&decay, &no_decay}) for (auto & p : *group) state.values.push_back(p.detach().clone());
        for (auto & [name, t] : optimizer.state()) if (t.is_floating_point()) state.values.push_back(t.detach().clone());
        return state;
    };
    KernelSwitchesGuard restore;
    const auto reference = run(false, false), fused = run(true, false), graphed = run(true, true);
    const double fused_error = worst_error(fused, reference), graphed_error = worst_error(graphed, reference);
    const bool pass = fused_error < 1e-5 && graphed_error < 1e-5;
    std::printf("selftest: LAMB, 4 clipped steps of 8 tensors in 2 groups, our kernels vs LibTorch's operations: max rel. error %.2e, "
                "replayed from CUDA graphs %.2e (< 1e-5) %s\n", fused_error, graphed_error, pass ? "ok" : "FAIL");
    return pass;
}

bool check_content_bias(const torch::Device & device) {
    // first: the position scores' columns left out (the model leaves out T-1 rounded down to 8 with same_length).
    struct Shape { int64_t H, B, T, M; bool same_length, key_bias; int64_t first; };
    bool ok = true;
    for (const Shape & shape : {Shape{4, 3, 64, 64, true, true, 0}, Shape{2, 2, 37, 50, false, true, 0}, Shape{4, 3, 64, 64, true, false, 56},
                                Shape{2, 3, 37, 50, true, true, 36}}) {
        const int64_t S = shape.T + shape.M;
        auto keep = attention_keep_mask(shape.T, shape.M, shape.same_length, device);
        auto position_in = torch::randn({shape.H, shape.B, shape.T, S - shape.first}, torch::TensorOptions().device(device));
        auto key_bias_in = torch::randn({shape.H, shape.B, S}, torch::TensorOptions().device(device));
        auto upstream = torch::randn({shape.H, shape.B, shape.T, S}, torch::TensorOptions().device(device));
        for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
            const double scale = 0.125;
            // One computation: the bias over the kept entries, then the gradients of <bias, upstream> over them.
            auto run = [&](torch::ScalarType as, bool kernels) {
                KernelSwitchesGuard restore;
                set_own_kernels(kernels);
                auto position = position_in.to(dtype).to(as).clone().requires_grad_(true);
                auto key_bias = shape.key_bias ? key_bias_in.to(dtype).to(as).clone().requires_grad_(true) : torch::Tensor();
                const bool fused = content_bias_kernel_takes(position, key_bias, keep);
                auto bias = content_bias(position, key_bias, keep, scale);
                auto kept = bias.masked_fill(keep.logical_not(), 0);
                (kept * upstream.to(as)).sum().backward();
                const bool masked_right = (bias.masked_select(keep.logical_not()) == -INFINITY).all().item<bool>();
                Outputs outputs{{kept.to(torch::kDouble), position.grad().to(torch::kDouble)}};
                if (shape.key_bias) outputs.values.push_back(key_bias.grad().to(torch::kDouble));
                return std::make_tuple(outputs, fused, masked_right);
            };
            auto [reference, reference_fused, reference_masked] = run(torch::kDouble, false);
            auto [kernels, kernels_fused, kernels_masked] = run(dtype, true);
            const double error = worst_error(kernels, reference), bound = dtype == torch::kFloat ? 1e-5 : 1e-2;
            const bool pass = kernels_fused && !reference_fused && kernels_masked && reference_masked && error < bound;
            std::printf("selftest: content bias (H %ld, B %ld, T %ld, M %ld%s%s, position from column %ld), our kernels %s vs float64 "
                        "operations: bias and %s max rel. error %.2e (< %.0e), masked entries -inf %s %s\n",
                        (long) shape.H, (long) shape.B, (long) shape.T, (long) shape.M, shape.same_length ? "" : ", causal",
                        shape.key_bias ? "" : ", no key bias", (long) shape.first, dtype == torch::kFloat ? "fp32" : "bf16",
                        shape.key_bias ? "2 gradients" : "its gradient", error, bound, kernels_masked ? "yes" : "no", pass ? "ok" : "FAIL");
            ok = pass && ok;
        }
    }
    return ok;
}

bool check_gated_weight(const torch::Device & device) {
    struct Shape { int64_t D, H, dh; };
    bool ok = true;
    for (const Shape & shape : {Shape{1024, 8, 64}, Shape{48, 3, 24}}) {
        auto weight_in = torch::randn({shape.D, shape.H * shape.dh}, torch::TensorOptions().device(device));
        auto gate_in = torch::rand({shape.H}, torch::TensorOptions().device(device)) * 2;
        auto upstream = torch::randn({shape.D, shape.H * shape.dh}, torch::TensorOptions().device(device));
        // The weight, then the gradients of <gated weight, upstream> w.r.t. the weight and the gates.
        auto run = [&](bool kernels) {
            KernelSwitchesGuard restore;
            set_own_kernels(kernels);
            auto weight = (kernels ? weight_in : weight_in.to(torch::kDouble)).clone().requires_grad_(true);
            auto gate = (kernels ? gate_in : gate_in.to(torch::kDouble)).clone().requires_grad_(true);
            torch::Tensor gated;
            bool fused = false;
            {
                AutocastGuard autocast(device, kernels);   // where the kernels serve: fp32 weights, bf16 products
                fused = gated_weight_kernel_takes(weight, gate, shape.dh);
                gated = gated_weight(weight, gate, shape.dh);
            }
            (gated.to(torch::kDouble) * upstream.to(torch::kDouble)).sum().backward();
            return std::make_tuple(Outputs{{gated.to(torch::kDouble), weight.grad().to(torch::kDouble), gate.grad().to(torch::kDouble)}}, fused,
                                   gated.scalar_type());
        };
        auto [reference, reference_fused, reference_dtype] = run(false);
        auto [kernels, kernels_fused, kernels_dtype] = run(true);
        // bf16 rounding of the weight and of the upstream gradient, as autocast's cast makes it: ~2^-9 relative.
        const double error = worst_error(kernels, reference), bound = 1e-2;
        const bool pass = kernels_fused && !reference_fused && kernels_dtype == torch::kBFloat16 && error < bound;
        std::printf("selftest: gated output weight (D %ld, H %ld, dh %ld), our kernels under bf16 autocast vs float64 operations: weight and 2 "
                    "gradients max rel. error %.2e (< %.0e) %s\n",
                    (long) shape.D, (long) shape.H, (long) shape.dh, error, bound, pass ? "ok" : "FAIL");
        ok = pass && ok;
    }
    return ok;
}

bool check_biased_product(const torch::Device & device) {
    const int64_t M = 1000, K = 32, D = 20008;
    auto options = torch::TensorOptions().device(device);
    auto rows_in = torch::randn({M, K}, options), weight_in = torch::randn({D, K}, options) * 0.2, bias_in = torch::randn({D}, options);
    auto upstream = torch::randn({M, D}, options);
    auto run = [&](std::optional<BiasGradient> how) {
        const auto dtype = how ? torch::kFloat : torch::kDouble;
        // Fresh leaves each run (to() of a tensor already in dtype returns the tensor itself, gradients and all).
        auto rows = rows_in.to(dtype).clone().requires_grad_(true), weight = weight_in.to(dtype).clone().requires_grad_(true);
        auto bias = bias_in.to(dtype).clone().requires_grad_(true);
        torch::Tensor out;
        {
            AutocastGuard autocast(device, how.has_value());   // the loss's products: bf16 under autocast, fp32 parameters
            out = how ? biased_product(rows, weight, bias, *how) : torch::addmm(bias, rows, weight.t());
        }
        (out.to(torch::kDouble) * upstream.to(torch::kDouble)).sum().backward();
        return Outputs{{out.to(torch::kDouble), rows.grad().to(torch::kDouble), weight.grad().to(torch::kDouble), bias.grad().to(torch::kDouble)}};
    };
    const auto reference = run(std::nullopt);
    bool ok = true;
    for (const auto how : {BiasGradient::ones_row, BiasGradient::ones_column}) {
        // bf16 operands and a bf16 upstream gradient (2^-9 relative each) before sums of 32 and 1000 terms.
        const double error = worst_error(run(how), reference), bound = 1e-2;
        const bool pass = error < bound;
        std::printf("selftest: biased product (M %ld, K %ld, D %ld), bias gradient by a %s of ones, under bf16 autocast vs float64 addmm: "
                    "output and 3 gradients max rel. error %.2e (< %.0e) %s\n", (long) M, (long) K, (long) D,
                    how == BiasGradient::ones_row ? "row" : "column", error, bound, pass ? "ok" : "FAIL");
        ok = pass && ok;
    }
    return ok;
}

bool check_plus_head_bias(const torch::Device & device) {
    const int64_t H = 4, B = 3, T = 37, dh = 24;
    auto options = torch::TensorOptions().device(device);
    auto values = torch::randn({H, B, T, dh}, options), bias_in = torch::randn({H, 1, 1, dh}, options);
    auto upstream = torch::randn({H, B, T, dh}, options).to(torch::kDouble);
    struct Layout { const char * name; std::function<torch::Tensor(const torch::Tensor &)> lay_out; };
    const Layout layouts[] = {
        {"batch-major", [&](const torch::Tensor & t) { return t.permute({1, 2, 0, 3}).contiguous().permute({2, 0, 1, 3}); }},
        {"batch-major, rows padded", [&](const torch::Tensor & t) {
             auto padded = torch::zeros({B, T, H * dh + 8}, t.options());
             padded.narrow(2, 0, H * dh).copy_(t.permute({1, 2, 0, 3}).reshape({B, T, H * dh}));
             return padded.narrow(2, 0, H * dh).view({B, T, H, dh}).permute({2, 0, 1, 3});
         }},
        {"head-major", [&](const torch::Tensor & t) { return t.contiguous(); }}};
    auto run = [&](const Layout & layout, torch::ScalarType dtype) {
        auto x = layout.lay_out(values.to(dtype)).detach().requires_grad_(true);
        auto bias = bias_in.to(dtype).detach().requires_grad_(true);
        auto out = dtype == torch::kDouble ? x + bias : plus_head_bias(x, bias);
        (out.to(torch::kDouble) * upstream).sum().backward();
        return Outputs{{out.to(torch::kDouble), x.grad().to(torch::kDouble), bias.grad().to(torch::kDouble)}};
    };
    const auto reference = run(layouts[2], torch::kDouble);
    KernelSwitchesGuard restore;
    set_own_kernels(true);
    bool ok = true;
    for (const auto & layout : layouts) {
        for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
            // The sum rounded once to the dtype; the bias's gradient a sum of B*T = 111 upstream terms.
            const double error = worst_error(run(layout, dtype), reference), bound = dtype == torch::kFloat ? 1e-5 : 1e-2;
            const bool pass = error < bound;
            std::printf("selftest: plus_head_bias (H %ld, B %ld, T %ld, dh %ld, %s) %s vs float64 operations: output and 2 gradients max rel. "
                        "error %.2e (< %.0e) %s\n", (long) H, (long) B, (long) T, (long) dh, layout.name,
                        dtype == torch::kFloat ? "fp32" : "bf16", error, bound, pass ? "ok" : "FAIL");
            ok = pass && ok;
        }
    }
    return ok;
}

bool check_attention_merge(const torch::Device & device) {
    const int64_t X = 4, Y = 3, L = 37, D = 64;
    auto options = torch::TensorOptions().device(device);
    // Part a laid out as the memory-efficient kernel writes it, (X,L,Y,D) storage; part b as the flash kernel's
    // rows, (Y*L,X,D) storage; the log-sum-exps a padded (X,Y,L') slice and a (X,Y*L) view.
    auto out_a = torch::randn({X, L, Y, D}, options).to(torch::kBFloat16).permute({0, 2, 1, 3});                   // (X,Y,L,D)
    auto out_b = torch::randn({Y * L, X, D}, options).to(torch::kBFloat16).view({Y, L, X, D}).permute({2, 0, 1, 3}); // (X,Y,L,D)
    auto lse_a = (torch::randn({X, Y, L + 27}, options) * 3).narrow(-1, 0, L);                                     // (X,Y,L)
    auto lse_b = (torch::randn({X, Y * L}, options) * 3).view({X, Y, L});                                          // (X,Y,L)
    KernelSwitchesGuard restore;
    set_own_kernels(true);
    const bool fused = attention_merge_kernel_takes(out_a, lse_a, out_b, lse_b);
    auto merged = merge_attention_parts(out_a, lse_a, out_b, lse_b);
    // Written out in float64: each part's output times its share of the joined softmax mass.
    auto share = torch::sigmoid(lse_a.to(torch::kDouble) - lse_b.to(torch::kDouble)).unsqueeze(-1);
    auto reference = out_a.to(torch::kDouble) * share + out_b.to(torch::kDouble) * (1 - share);
    const double error = relative_error(merged.to(torch::kDouble), reference), bound = 1e-2;   // the bf16 output's rounding
    const bool pass = fused && merged.scalar_type() == torch::kBFloat16 && merged.strides() == out_a.strides() && error < bound;
    std::printf("selftest: attention parts merged (X %ld, Y %ld, L %ld, D %ld, both kernels' layouts), our kernel vs float64 operations: "
                "max rel. error %.2e (< %.0e), part a's layout kept %s %s\n",
                (long) X, (long) Y, (long) L, (long) D, error, bound, merged.strides() == out_a.strides() ? "yes" : "no", pass ? "ok" : "FAIL");
    return pass;
}

bool check_segment_norm_training(const torch::Device & device) {
    struct Shape { int64_t B, T, M, D; };
    bool ok = true;
    for (const Shape & shape : {Shape{3, 64, 48, 512}, Shape{2, 17, 0, 40}, Shape{2, 5, 7, 2048}})
        for (const bool with_pending : {false, true}) {
            auto options = torch::TensorOptions().device(device);
            // The memory as the model carries it: the last M rows of the previous input, a strided view.
            auto memory = torch::randn({shape.B, shape.M + 5, shape.D}, options).narrow(1, 5, shape.M) * 3 + 1;
            auto x_in = torch::randn({shape.B, shape.T, shape.D}, options) * 2 - 0.5;
            // The previous layer's output still to add (bf16, as its product and dropout leave it), and the residual
            // stream's own gradient (fp32, from the layers above).
            auto pending_in = (torch::randn({shape.B, shape.T, shape.D}, options) * 1.5).to(torch::kBFloat16);
            auto grad_sum = torch::randn({shape.B, shape.T, shape.D}, options);
            OffsetLayerNorm norm(shape.D);
            norm->to(device);
            {
                torch::NoGradGuard no_grad;
                norm->weight.normal_(0, 0.3);
                norm->bias.normal_(0, 0.3);
            }
            // The upstream gradients as autocast's products hand them back: bf16.
            auto grad_keys = torch::randn({shape.B, shape.M + shape.T, shape.D}, options).to(torch::kBFloat16);
            auto grad_queries = torch::randn({shape.B, shape.T, shape.D}, options).to(torch::kBFloat16);
            auto x = x_in.clone().requires_grad_(true);
            auto pending = pending_in.clone().requires_grad_(true);
            TrainingNorm normed;
            {
                KernelSwitchesGuard restore;
                set_own_kernels(true);
                AutocastGuard autocast(device, true);
                normed = normalize_segment_for_training(memory, x, norm, with_pending ? pending : torch::Tensor());
            }
            const auto & keys = normed.keys, & queries = normed.queries;
            const bool fused = keys.defined() && keys.scalar_type() == torch::kBFloat16 && queries.scalar_type() == torch::kBFloat16
                               && normed.sum.defined() == with_pending;
            // Judged apart: the outputs and the gradients.
            Outputs kernel_outputs, kernel_gradients;
            if (fused) {
                if (with_pending) torch::autograd::backward({keys, queries, normed.sum}, {grad_keys, grad_queries, grad_sum});
                else torch::autograd::backward({keys, queries}, {grad_keys, grad_queries});
                kernel_outputs.values = {keys.to(torch::kDouble), queries.to(torch::kDouble)};
                kernel_gradients.values = {x.grad().to(torch::kDouble), norm->weight.grad().to(torch::kDouble), norm->bias.grad().to(torch::kDouble)};
                if (with_pending) {   // pending's gradient (bf16) is judged with the outputs, at bf16's rounding
                    kernel_outputs.values.push_back(normed.sum.to(torch::kDouble));
                    kernel_outputs.values.push_back(pending.grad().to(torch::kDouble));
                }
            }
            // float64 operations: the layer norm of memory and segment (plus pending) joined, and of the segment alone.
            auto x64 = x_in.to(torch::kDouble).requires_grad_(true);
            auto pending64 = pending_in.to(torch::kDouble).requires_grad_(true);
            auto weight64 = norm->weight.detach().to(torch::kDouble).requires_grad_(true);
            auto bias64 = norm->bias.detach().to(torch::kDouble).requires_grad_(true);
            auto layer_norm = [&](const torch::Tensor & t) { return torch::layer_norm(t, {shape.D}, weight64 + 1.0, bias64, norm->eps); };
            auto sum64 = with_pending ? x64 + pending64 : x64;
            auto keys64 = layer_norm(torch::cat({memory.to(torch::kDouble), sum64}, 1)), queries64 = layer_norm(sum64);
            Outputs exact_outputs{{keys64, queries64}};
            if (with_pending) {
                torch::autograd::backward({keys64, queries64, sum64}, {grad_keys.to(torch::kDouble), grad_queries.to(torch::kDouble), grad_sum.to(torch::kDouble)});
                exact_outputs.values.push_back(sum64);
            } else {
                torch::autograd::backward({keys64, queries64}, {grad_keys.to(torch::kDouble), grad_queries.to(torch::kDouble)});
            }
            Outputs exact_gradients{{x64.grad(), weight64.grad(), bias64.grad()}};
            if (with_pending) exact_outputs.values.push_back(pending64.grad());
            // The outputs carry bf16's rounding (2^-9 relative); the gradients are fp32 sums of the same bf16 gradients.
            const double output_error = fused ? worst_error(kernel_outputs, exact_outputs) : INFINITY;
            const double gradient_error = fused ? worst_error(kernel_gradients, exact_gradients) : INFINITY;
            const bool pass = fused && output_error < 1e-2 && gradient_error < 1e-4;
            std::printf("selftest: segment norm with gradients (B %ld, T %ld, M %ld, D %ld%s), our kernels under bf16 autocast vs float64 "
                        "operations: keys and queries%s max rel. error %.2e (< 1e-2), gradients of x, weight, bias %.2e (< 1e-4) %s\n",
                        (long) shape.B, (long) shape.T, (long) shape.M, (long) shape.D, with_pending ? ", a bf16 output pending" : "",
                        with_pending ? ", the sum, pending's gradient" : "", output_error, gradient_error, pass ? "ok" : "FAIL");
            ok = pass && ok;
        }
    return ok;
}

} // namespace studio
