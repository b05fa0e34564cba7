// The model against computations written independently here: exact reference parameter counts, the adaptive softmax
// (a full distribution that sums to one), memory (hidden states, or cached keys and values at inference), dropout and
// gradients. Attention's own checks are in test_attention.cpp.
#include <torch/torch.h>

#include <QTest>

#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "derived_weight.h"
#include "language_model.h"
#include "model_info.h"
#include "tail_log_prob.h"

using namespace studio;

namespace {

ModelConfig tiny(ModelType type) {
    ModelConfig m;
    m.type = type;
    m.num_layers = 2;
    m.num_heads = 2;
    m.hidden_dim = 8;
    m.feedforward_dim = 6;
    m.vocab_size = 40;
    m.cutoffs = {10, 25};
    m.div_value = 2;
    m.max_len = 16;
    m.tgt_len = 4;
    m.mem_len = 3;
    m.attn_drop = m.proj_drop = m.input_drop = m.output_drop = m.word_drop = 0;
    return m;
}

ModelConfig reference(ModelType type) {
    ModelConfig m;   // the defaults are the reference's 16 x 8 x 512 model
    m.type = type;
    m.vocab_size = 267735;
    m.head_gates = type == ModelType::AllAttention;
    return m;
}

/// A tiny All-attention model with its own u/v, in eval mode, and a random segment (B 2, T 4) of inputs and targets.
struct EvaluatedSegment {
    LanguageModel model;
    torch::Tensor input, target;
};
EvaluatedSegment evaluated_segment() {
    auto config = tiny(ModelType::AllAttention);
    config.share_r_bias = false;
    LanguageModel model(config);
    model->eval();
    return {model, torch::randint(0, 40, {2, 4}, torch::kLong), torch::randint(0, 40, {2, 4}, torch::kLong)};
}

/// Hidden-state memory at inference while in scope (the key/value cache off), as STUDIO_KEY_VALUE_CACHE=0 sets it.
struct KeyValueCacheOff {
    const bool previous = key_value_cache_enabled();
    KeyValueCacheOff() { set_key_value_cache(false); }
    ~KeyValueCacheOff() { set_key_value_cache(previous); }
};

} // namespace

class TestModel : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void initTestCase() { torch::manual_seed(0); }

    void reference_parameter_counts() {
        auto all = model_info(reference(ModelType::AllAttention));
        QCOMPARE(all["params_total"].get<int64_t>(), int64_t(74170642));
        QCOMPARE(all["params_layers"].get<int64_t>(), int64_t(54567040));
        QCOMPARE(all["params_embedding"].get<int64_t>(), int64_t(18810040));
        QCOMPARE(all["params_softmax"].get<int64_t>(), int64_t(531418));
        QCOMPARE(all["params_other"].get<int64_t>(), int64_t(262144));
        QCOMPARE(all["layers"][0]["params"].get<int64_t>(), int64_t(3410440));
        QCOMPARE(all["layers"][0]["params_per_head"].get<int64_t>(), int64_t(426113));
        auto txl = model_info(reference(ModelType::TransformerXL));
        QCOMPARE(txl["params_total"].get<int64_t>(), int64_t(73951378));
        QCOMPARE(txl["params_layers"].get<int64_t>(), int64_t(54607872));
        QCOMPARE(txl["layers"][0]["params_per_head"].get<int64_t>(), int64_t(163840));
        // Section 6 of reference-model.md: 106 heads kept, no gates, max_len 384.
        auto pruned = reference(ModelType::AllAttention);
        pruned.head_gates = false;
        pruned.max_len = 384;
        pruned.heads_per_layer = {8, 3, 7, 6, 6, 6, 6, 7, 6, 7, 8, 8, 7, 8, 7, 6};
        auto p = model_info(pruned);
        QCOMPARE(p["params_layers"].get<int64_t>(), int64_t(45192448));
        QCOMPARE(p["params_total"].get<int64_t>(), int64_t(64730514));
        pruned.heads_per_layer = {5, 2, 5, 4, 3, 4, 4, 4, 4, 4, 4, 4, 3, 3, 3, 3};
        QCOMPARE(model_info(pruned)["params_layers"].get<int64_t>(), int64_t(25165184));
    }

    void adaptive_softmax_is_a_distribution() {
        for (bool tie : {true, false}) {
            AdaptiveIO io(AdaptiveIOOptions(40, 8).cutoffs({10, 25}).div_value(2).tie_weight(tie).tie_proj(tie));
            torch::NoGradGuard no_grad;
            for (auto & p : io->parameters()) p.uniform_(-0.5, 0.5);
            auto hidden = torch::randn({3, 8});
            // log p(w) for every word w: each row must sum to one.
            auto all = torch::zeros({3, 40});
            for (int64_t w = 0; w < 40; ++w) all.select(1, w).copy_(io->target_log_prob(hidden, torch::full({3}, w, torch::kLong)));
            QVERIFY(torch::allclose(all.exp().sum(1), torch::ones({3}), 1e-5, 1e-5));
            // Word 30 (cluster 2) independently: head softmax over 10 words + 2 clusters, then the tail's own softmax.
            auto hp = torch::matmul(hidden, io->out_head_proj.t());
            auto head = torch::log_softmax(torch::cat({torch::matmul(hp, io->out_weight[0].t()) + io->out_bias[0],
                                                       torch::matmul(hp, io->cluster_weight.t()) + io->cluster_bias}, 1), 1);
            auto tail_hidden = tie ? torch::matmul(hidden, io->in_proj[2]) : torch::matmul(hidden, io->out_tail_proj[1].t());
            auto tail = torch::log_softmax(torch::matmul(tail_hidden, (tie ? io->emb[2] : io->out_weight[2]).t()) + io->out_bias[2], 1);
            auto expected = head.select(1, 11) + tail.select(1, 5);
            QVERIFY(torch::allclose(all.select(1, 30), expected, 1e-5, 1e-5));
            // Rows of different clusters in one call, out of cluster order: the loss groups rows by cluster and must
            // put each result back on its own row.
            auto mixed = io->target_log_prob(hidden, torch::tensor({30, 2, 17}, torch::kLong));
            auto picked = torch::stack({all[0][30], all[1][2], all[2][17]});
            QVERIFY2(torch::allclose(mixed, picked, 1e-5, 1e-6), "mixed-cluster rows differ from their single-word values");
        }
        // Tying: the output of cluster i shares its tensor with the input table.
        AdaptiveIO tied(AdaptiveIOOptions(40, 8).cutoffs({10, 25}).div_value(2));
        QVERIFY(tied->out_weight[1].is_same(tied->emb[1]));
        QCOMPARE(tied->widths, (std::vector<int64_t>{8, 4, 2}));
    }

    // Log-probs and gradients (hidden rows, every output weight, bias and projection) against the full softmax over
    // the concatenated vocabulary, built here in float64: the head's log-softmax for shortlist words; the head's
    // cluster column plus the tail's own log-softmax for tail words. Targets at both ends of the shortlist and of
    // every tail cluster, under a random upstream gradient.
    void adaptive_softmax_gradients_match_full_softmax() {
        const int64_t V = 60, D = 8, shortlist = 10;
        const std::vector<int64_t> bounds{0, shortlist, 25, 40, V};
        for (bool tie : {true, false}) {
            AdaptiveIO io(AdaptiveIOOptions(V, D).cutoffs({10, 25, 40}).div_value(2).tie_weight(tie).tie_proj(tie));
            {
                torch::NoGradGuard no_grad;
                for (auto & p : io->parameters()) p.uniform_(-0.5, 0.5);
            }
            auto target = torch::tensor({0, 9, 10, 24, 25, 39, 40, 59, 3, 17, 33, 51, 5, 30}, torch::kLong);   // (N,)
            const int64_t N = target.size(0);
            auto hidden = torch::randn({N, D}) * 2;
            auto upstream = torch::randn({N});
            auto rows = hidden.clone().requires_grad_(true);
            auto got = io->target_log_prob(rows, target);                                                      // (N,)
            (got * upstream).sum().backward();

            std::map<std::string, torch::Tensor> w;   // float64 leaves, by parameter name
            for (const auto & p : io->named_parameters()) w[p.key()] = p.value().detach().to(torch::kDouble).requires_grad_(true);
            auto h = hidden.to(torch::kDouble).requires_grad_(true);                                           // (N,D)
            auto out_weight = [&](int64_t i) { return w.at((tie ? "emb_" : "out_weight_") + std::to_string(i)); };
            auto tail_proj = [&](int64_t i) {                                                                  // (D, d_i)
                return tie ? w.at("in_proj_" + std::to_string(i)) : w.at("out_tail_proj_" + std::to_string(i)).t();
            };
            auto hp = torch::matmul(h, w.at("out_head_proj").t());                                             // (N,D)
            auto head = torch::log_softmax(torch::cat({torch::matmul(hp, out_weight(0).t()) + w.at("out_bias_0"),
                                                       torch::matmul(hp, w.at("cluster_weight").t()) + w.at("cluster_bias")}, 1), 1); // (N,10+3)
            std::vector<torch::Tensor> parts{head.narrow(1, 0, shortlist)};
            for (int64_t i = 1; i + 1 < (int64_t) bounds.size(); ++i) {
                auto logits = torch::matmul(torch::matmul(h, tail_proj(i)), out_weight(i).t()) + w.at("out_bias_" + std::to_string(i));
                auto tail = torch::log_softmax(logits, 1);                                                     // (N, n_i)
                parts.push_back(head.select(1, shortlist + i - 1).unsqueeze(1) + tail);                        // (N, n_i)
            }
            auto full = torch::cat(parts, 1);                                                                  // (N,V) log p of every word
            QVERIFY(torch::allclose(full.exp().sum(1), torch::ones({N}, torch::kDouble), 1e-12, 1e-12));
            for (int64_t i = 0; i + 1 < (int64_t) bounds.size(); ++i)   // every cluster has targets
                QVERIFY(((target >= bounds[i]).logical_and(target < bounds[i + 1])).sum().item<int64_t>() >= 2);
            auto expected = full.gather(1, target.unsqueeze(1)).squeeze(1);                                    // (N,)
            (expected * upstream.to(torch::kDouble)).sum().backward();

            auto close = [](const torch::Tensor & a, const torch::Tensor & reference, const std::string & what) {
                const double error = (a.to(torch::kDouble) - reference).abs().max().item<double>();
                const double scale = reference.abs().max().item<double>();
                const std::string message = what + ": max abs error " + std::to_string(error) + " (largest " + std::to_string(scale) + ")";
                return std::make_pair(std::isfinite(error) && error <= 1e-5 * (1 + scale), message);
            };
            auto [values_ok, values_message] = close(got.detach(), expected.detach(), "log-probs");
            QVERIFY2(values_ok, values_message.c_str());
            auto [hidden_ok, hidden_message] = close(rows.grad(), h.grad(), "gradient of the hidden rows");
            QVERIFY2(hidden_ok, hidden_message.c_str());
            int64_t compared = 0;
            for (const auto & p : io->named_parameters()) {
                const auto & reference = w.at(p.key()).grad();
                if (!reference.defined()) {   // unused by the output side (the input projection of the shortlist)
                    QVERIFY2(!p.value().grad().defined() || p.value().grad().abs().max().item<double>() == 0, p.key().c_str());
                    continue;
                }
                QVERIFY2(p.value().grad().defined(), ("no gradient: " + p.key()).c_str());
                auto [ok, message] = close(p.value().grad(), reference, "gradient of " + p.key());
                QVERIFY2(ok, message.c_str());
                ++compared;
            }
            // 4 output weights and 4 biases, 3 tail projections, the head projection, the cluster weights and biases.
            QCOMPARE(compared, int64_t(14));
        }
    }

    // Without a gradient on the CPU the loss takes rows in blocks whose widest logits stay under 16 MB: here the
    // 3000-word tail makes blocks of 1398 rows, so 3000 rows run as 1398 + 1398 + 204. Every row's log-prob must be
    // the one the single-block computation (grad mode) gives, for words of the head and of both tails.
    void adaptive_softmax_in_row_blocks_equals_whole() {
        AdaptiveIO io(AdaptiveIOOptions(5000, 16).cutoffs({1000, 2000}).div_value(2));
        auto hidden = torch::randn({3000, 16});
        auto target = torch::randint(0, 5000, {3000}, torch::kLong);
        auto whole = io->target_log_prob(hidden, target).detach();
        torch::Tensor blocks;
        {
            torch::NoGradGuard no_grad;
            blocks = io->target_log_prob(hidden, target);
        }
        QCOMPARE(blocks.sizes(), whole.sizes());
        QVERIFY2(torch::allclose(blocks, whole, 1e-5, 1e-6), "row blocks differ from the whole computation");
        QVERIFY((target >= 2000).any().item<bool>() && (target < 1000).any().item<bool>());
    }

    void plain_softmax_without_cutoffs() {
        AdaptiveIO io(AdaptiveIOOptions(12, 4));
        auto hidden = torch::randn({2, 4});
        torch::NoGradGuard no_grad;
        auto lp = io->target_log_prob(hidden, torch::tensor({3, 7}, torch::kLong));
        auto expected = torch::log_softmax(torch::matmul(hidden, io->emb[0].t()) + io->out_bias[0], 1);
        QVERIFY(torch::allclose(lp, torch::stack({expected[0][3], expected[1][7]}), 1e-6, 1e-6));
        auto e = io->embed(torch::tensor({{3, 7}}, torch::kLong), 0.0);
        QVERIFY(torch::equal(e[0][1], io->emb[0][7]));
    }

    // On the GPU the model routes the targets to their clusters before the layers run (so a step never waits for the
    // counts) and hands them to the loss: given or routed by the loss itself, the loss must be the same, and the
    // model's own at its final hidden rows.
    // Training's tail kernels (GPU only; their arithmetic is the selftest's) are the default; STUDIO_TAIL_GRADIENT=ops
    // alone keeps the logits' path (for timing them side by side). On the CPU the kernels never apply.
    void tail_gradient_kernels_chosen_by_setting() {
        QVERIFY(tail_gradient_by_kernels("auto"));
        QVERIFY(tail_gradient_by_kernels(""));
        QVERIFY(tail_gradient_by_kernels("kernels"));
        QVERIFY(!tail_gradient_by_kernels("ops"));
        const torch::Tensor cpu_rows = torch::zeros({4, 8}, torch::kBFloat16);
        QVERIFY(!trainable_tail_log_prob(cpu_rows, torch::zeros({10, 8}), torch::zeros({10}), torch::zeros({4}, torch::kLong)).defined());
    }

    void routed_targets_give_the_same_loss() {
        LanguageModel model(tiny(ModelType::AllAttention));
        model->eval();
        torch::NoGradGuard no_grad;
        auto input = ((torch::arange(12) * 3 + 1) % 40).view({3, 4});
        auto target = torch::tensor({0, 9, 10, 24, 25, 39, 3, 12, 30, 30, 5, 11}, torch::kLong).view({3, 4});
        auto routed = model->io->route_targets(target.reshape({12}), torch::zeros({1}));
        QVERIFY(torch::equal(routed.cluster, torch::tensor({0, 0, 1, 1, 2, 2, 0, 1, 2, 2, 0, 1}, torch::kLong)));
        QVERIFY(torch::equal(routed.counts, torch::tensor({4, 4, 4}, torch::kLong)));
        QVERIFY(torch::equal(routed.host_counts.get(), routed.counts));
        QVERIFY(torch::equal(routed.order, torch::tensor({0, 1, 6, 10, 2, 3, 7, 11, 4, 5, 8, 9}, torch::kLong)));
        auto hidden = model->forward(input, {}, {}).hidden;                                    // (B,T,D)
        auto direct = model->io->target_log_prob(hidden.reshape({12, 8}), target.reshape({12}));
        QVERIFY(torch::equal(model->io->target_log_prob(hidden.reshape({12, 8}), target.reshape({12}), &routed), direct));
        QVERIFY(torch::allclose(model->forward(input, target, {}).target_log_prob.reshape({12}), direct, 1e-6, 1e-7));
    }

    void forward_shapes_memory_and_gradients() {
        for (auto type : {ModelType::AllAttention, ModelType::TransformerXL}) {
            auto config = tiny(type);
            config.heads_per_layer = {2, 1};
            config.share_r_bias = false;   // per-layer head counts need per-layer u/v
            LanguageModel model(config);
            // Inputs and targets in every cluster, so every table and projection must get a gradient.
            auto input = ((torch::arange(12) * 3 + 1) % 40).view({3, 4}), target = ((torch::arange(12) * 7 + 2) % 40).view({3, 4});
            auto out = model->forward(input, target, {});
            QCOMPARE(out.target_log_prob.sizes().vec(), (std::vector<int64_t>{3, 4}));
            QCOMPARE((int64_t) out.memory.size(), int64_t(2));
            QCOMPARE(out.memory[1].sizes().vec(), (std::vector<int64_t>{3, 3, 8}));
            QVERIFY(!out.memory[0].requires_grad());
            (-out.target_log_prob.mean()).backward();
            int64_t without = 0;
            for (const auto & p : model->named_parameters()) {
                if (!p.value().grad().defined() || p.value().grad().abs().sum().item<double>() == 0) {
                    ++without;
                    qWarning("no gradient: %s", p.key().c_str());
                }
            }
            QCOMPARE(without, int64_t(0));
            // The memory of layer 0 is the scaled embedding of the last M tokens: feed a second segment with it.
            auto second = model->forward(input, target, out.memory);
            QVERIFY(torch::isfinite(second.target_log_prob).all().item<bool>());
        }
    }

    void memory_is_each_layers_input() {
        auto config = tiny(ModelType::AllAttention);
        LanguageModel model(config);
        model->eval();
        torch::NoGradGuard no_grad;
        KeyValueCacheOff hidden_states;
        auto input = torch::randint(0, 40, {1, 4}, torch::kLong);
        auto out = model->forward(input, input, {});
        auto embedded = model->io->embed(input, 0.0) * std::sqrt(8.0);
        QVERIFY(torch::allclose(out.memory[0], embedded.narrow(1, 1, 3)));
        // Memories shorter than, as long as and longer than the segment: always the last M positions of the memory
        // followed by the input (the longer one reaches back into the old memory).
        for (int64_t M : {2, 4, 6}) {
            std::vector<torch::Tensor> memory;
            for (int l = 0; l < 2; ++l) memory.push_back(torch::randn({1, M, 8}));
            auto next = model->forward(input, input, memory);
            QCOMPARE(next.memory[0].sizes().vec(), (std::vector<int64_t>{1, M, 8}));
            QVERIFY(torch::equal(next.memory[0], torch::cat({memory[0], embedded}, 1).narrow(1, 4, M)));
        }
    }

    // At inference each layer with heads carries the keys and values of its last M positions instead of their hidden
    // states: the same log-probabilities segment after segment (the first segment projects zero memory), for memories
    // shorter than, as long as and longer than the segment, in both model types and beside a layer without heads.
    void inference_caches_keys_and_values() {
        for (auto type : {ModelType::AllAttention, ModelType::TransformerXL}) {
            for (int64_t M : {2, 4, 6}) {
                auto config = tiny(type);
                config.heads_per_layer = {2, 0};
                config.share_r_bias = false;
                config.mem_len = M;
                LanguageModel model(config);
                {
                    torch::NoGradGuard no_grad;
                    for (auto & p : model->parameters()) if (p.dim() == 1) p.normal_(0, 0.3);   // norms and u/v off their defaults
                }
                model->eval();
                torch::NoGradGuard no_grad;
                auto segments = torch::randint(0, 40, {3, 2, 5}, torch::kLong);                  // 3 segments of (B 2, T+1 5)
                std::vector<torch::Tensor> cached_memory, hidden_memory;
                for (int64_t s = 0; s < 3; ++s) {
                    auto input = segments[s].narrow(1, 0, 4), target = segments[s].narrow(1, 1, 4);
                    auto cached = model->forward(input, target, cached_memory);
                    LMOutput plain;
                    {
                        KeyValueCacheOff hidden_states;
                        plain = model->forward(input, target, hidden_memory);
                    }
                    QVERIFY2(torch::allclose(cached.target_log_prob, plain.target_log_prob, 1e-5, 1e-6),
                             std::to_string((cached.target_log_prob - plain.target_log_prob).abs().max().item<double>()).c_str());
                    QCOMPARE(cached.memory[0].sizes().vec(), (std::vector<int64_t>{2, M, 2, 8}));   // (B,M,2,H*dh)
                    QCOMPARE(cached.memory[1].sizes().vec(), (std::vector<int64_t>{2, M, 8}));      // no heads: hidden states
                    // Layer 0's output, not bitwise: its keys of the memory came from a product over other rows, and
                    // how BLAS blocks a product (so its rounding) depends on the rows and on the CPU's vector width.
                    QVERIFY2(torch::allclose(cached.memory[1], plain.memory[1], 1e-5, 1e-6),
                             std::to_string((cached.memory[1] - plain.memory[1]).abs().max().item<double>()).c_str());
                    // The cache holds LN(hidden) W_k^T and LN(hidden) W_v^T of the very positions the hidden memory holds.
                    auto & layer = model->layer_list[0];
                    auto normed = layer->norm->forward(plain.memory[0]);
                    QVERIFY(torch::allclose(cached.memory[0].select(2, 0), torch::matmul(normed, layer->attention->k_weight.t()), 1e-5, 1e-6));
                    QVERIFY(torch::allclose(cached.memory[0].select(2, 1), torch::matmul(normed, layer->attention->v_weight.t()), 1e-5, 1e-6));
                    cached_memory = cached.memory;
                    hidden_memory = plain.memory;
                }
            }
        }
    }

    // A caller that keeps the memory in fixed buffers (the benchmark's CUDA graphs) gets the next memory written into
    // them: the same values as a forward without them, returned as those very tensors, for a memory as long as the
    // segment (the key and value products write there) and shorter (a copy), and for a layer without heads.
    void memory_into_receives_the_next_memory() {
        for (int64_t M : {4, 2}) {
            auto config = tiny(ModelType::AllAttention);
            config.heads_per_layer = {2, 0};
            config.share_r_bias = false;
            config.mem_len = M;
            LanguageModel model(config);
            model->eval();
            torch::NoGradGuard no_grad;
            auto input = torch::randint(0, 40, {2, 4}, torch::kLong), target = torch::randint(0, 40, {2, 4}, torch::kLong);
            auto first = model->forward(input, target, {});
            std::vector<torch::Tensor> into;
            for (const auto & m : first.memory) into.push_back(torch::full(m.sizes(), 7.0, m.options()));
            auto plain = model->forward(target, input, first.memory);
            auto written = model->forward(target, input, first.memory, {}, nullptr, &into);
            QVERIFY(torch::equal(written.target_log_prob, plain.target_log_prob));
            for (size_t l = 0; l < into.size(); ++l) {
                QVERIFY(written.memory[l].is_same(into[l]));
                QVERIFY(torch::equal(into[l], plain.memory[l]));
            }
        }
    }

    // The layers share the positions, so their position keys pos W_r^T come from one product over the stacked r
    // weights: the same outputs and gradients as each layer projecting pos itself, beside a layer without heads.
    void position_keys_of_all_layers_in_one_product() {
        for (auto type : {ModelType::AllAttention, ModelType::TransformerXL}) {
            auto config = tiny(type);
            config.num_layers = 3;
            config.heads_per_layer = {2, 0, 1};
            config.share_r_bias = false;
            LanguageModel model(config);
            auto input = torch::randint(0, 40, {2, 4}, torch::kLong);
            const int64_t T = 4, M = config.mem_len, S = T + M, D = 8;
            std::vector<torch::Tensor> memory;
            for (int l = 0; l < 3; ++l) memory.push_back(torch::randn({2, M, D}));
            auto hidden = model->forward(input, {}, memory).hidden;
            auto grad_of = [&](const torch::Tensor & y) {
                model->zero_grad();
                y.pow(2).sum().backward();
                std::vector<torch::Tensor> grads;
                for (int l : {0, 2}) grads.push_back(model->layer_list[(size_t) l]->attention->r_weight.grad().clone());
                return grads;
            };
            const auto together = grad_of(hidden);
            // Each layer on its own, given pos (no position keys): as the layers computed before they shared a product.
            auto h = model->io->embed(input, 0.0) * std::sqrt((double) D);
            auto pos = type == ModelType::AllAttention ? model->pos_emb.narrow(0, config.max_len - S, S)
                                                       : sinusoid_positions(S, D, h.options());
            auto keep = attention_keep_mask(T, M, config.same_length, h.device());
            for (int64_t l = 0; l < 3; ++l) h = model->layer_list[(size_t) l]->forward(h, memory[(size_t) l], pos, keep);
            if (type == ModelType::TransformerXL) h = model->out_norm->forward(h);
            QVERIFY2(torch::allclose(hidden, h, 1e-5, 1e-6), std::to_string((hidden - h).abs().max().item<double>()).c_str());
            const auto apart = grad_of(h);
            for (size_t i = 0; i < apart.size(); ++i) QVERIFY(torch::allclose(together[i], apart[i], 1e-5, 1e-6));
        }
    }

    // At inference the clusters' tables come projected to D once and kept while the weights stay: the same embedding
    // as each cluster's own lookup and product (the training path), and a new table once a projection moves.
    void inference_embedding_from_projected_tables() {
        LanguageModel model(tiny(ModelType::AllAttention));                   // clusters [0,10), [10,25), [25,40)
        auto ids = torch::arange(40).view({4, 10});                            // every word of every cluster
        const auto reference = model->io->embed(ids, 0.0).detach().view({40, 8});
        model->eval();
        torch::NoGradGuard no_grad;
        auto table = model->io->projected_table();
        QVERIFY(table.defined());
        QCOMPARE(table.sizes().vec(), (std::vector<int64_t>{40, 8}));
        auto got = model->io->embed(ids, 0.0).view({40, 8});
        QVERIFY2(torch::allclose(got, reference, 1e-6, 1e-6), std::to_string((got - reference).abs().max().item<double>()).c_str());
        QVERIFY(model->io->projected_table().is_same(table));
        model->io->in_proj[1].mul_(2.0);
        QVERIFY(!model->io->projected_table().is_same(table));
        auto moved = model->io->embed(ids, 0.0).view({40, 8});
        QVERIFY(torch::allclose(moved.narrow(0, 10, 15), 2 * reference.narrow(0, 10, 15), 1e-6, 1e-6));
        QVERIFY(torch::equal(moved.narrow(0, 0, 10), got.narrow(0, 0, 10)));
        QVERIFY(torch::equal(moved.narrow(0, 25, 15), got.narrow(0, 25, 15)));
    }

    // A clone computes what the original does, from parameters of its own: changing the original's leaves it alone.
    void clone_is_a_deep_copy() {
        torch::NoGradGuard no_grad;
        auto segment = evaluated_segment();
        auto & model = segment.model;
        const auto & input = segment.input, & target = segment.target;
        auto before = model->forward(input, target, {}).target_log_prob;
        auto copy = std::dynamic_pointer_cast<LanguageModelImpl>(model->clone());
        copy->eval();
        QVERIFY(torch::equal(copy->forward(input, target, {}).target_log_prob, before));
        QCOMPARE(copy->layer_list.size(), model->layer_list.size());
        for (size_t l = 0; l < copy->layer_list.size(); ++l) {
            QVERIFY(copy->layer_list[l].get() == copy->layers[l].get());
            QVERIFY(!copy->layer_list[l]->attention->q_weight.is_same(model->layer_list[l]->attention->q_weight));
        }
        model->layer_list[0]->attention->q_weight.mul_(2.0);
        QVERIFY(!torch::equal(model->forward(input, target, {}).target_log_prob, before));
        QVERIFY(torch::equal(copy->forward(input, target, {}).target_log_prob, before));
    }

    // DerivedWeight keeps its value while the sources and the form stay; a new version, another form, another storage
    // or a gradient to carry forms it anew.
    void derived_weight_kept_while_its_sources_stay() {
        auto a = torch::randn({3, 2}), b = torch::randn({1, 2});
        DerivedWeight derived;
        int made = 0;
        auto make = [&] { ++made; return torch::cat({a, b}, 0); };
        auto first = derived.get({a, b}, 0, make);
        QVERIFY(!derived.last_was_kept());
        QVERIFY(derived.get({a, b}, 0, make).is_same(first) && derived.last_was_kept());
        QCOMPARE(made, 1);
        derived.get({a, b}, 1, make);                       // another form (a dtype, say)
        QVERIFY(!derived.last_was_kept());
        a.add_(1.0);                                        // a new version
        QVERIFY(torch::equal(derived.get({a, b}, 1, make), torch::cat({a, b}, 0)) && !derived.last_was_kept());
        b = torch::randn({1, 2});                           // another tensor in b's place
        QVERIFY(torch::equal(derived.get({a, b}, 1, make), torch::cat({a, b}, 0)) && !derived.last_was_kept());
        QCOMPARE(made, 4);
        a.requires_grad_(true);                             // a gradient to carry: formed every time, never kept
        auto with_grad = derived.get({a, b}, 1, make);
        QVERIFY(with_grad.requires_grad());
        derived.get({a, b}, 1, make);
        QCOMPARE(made, 6);
        {
            torch::NoGradGuard no_grad;                     // no gradient to carry: kept again
            derived.get({a, b}, 1, make);
            QVERIFY(derived.get({a, b}, 1, make).defined() && derived.last_was_kept());
        }
        derived.clear();
        torch::NoGradGuard no_grad;
        derived.get({a, b}, 1, make);
        QVERIFY(!derived.last_was_kept());
    }

    // The stacked weights kept between inference forwards follow the parameters: an in-place change is seen by its
    // version, and a write that no version records (our optimizer's kernels, graph replays: training) by train().
    void weights_kept_for_inference_follow_the_parameters() {
        torch::NoGradGuard no_grad;
        auto segment = evaluated_segment();
        auto & model = segment.model;
        const auto & input = segment.input, & target = segment.target;
        const auto config = model->config;
        // A model that never kept anything, given the parameters as they are now.
        auto fresh = [&] {
            LanguageModel copy(config);
            copy->eval();
            auto source = model->named_parameters();
            for (auto & p : copy->named_parameters()) p.value().copy_(source[p.key()]);
            return copy->forward(input, target, {});
        };
        auto first = model->forward(input, target, {});
        QVERIFY(torch::equal(model->forward(input, target, {}).target_log_prob, first.target_log_prob));
        auto & attention = *model->layer_list[0]->attention;
        attention.k_weight.add_(0.25);
        attention.r_weight.mul_(-1.5);
        auto changed = model->forward(input, target, {});
        QVERIFY(!torch::allclose(changed.target_log_prob, first.target_log_prob));
        QVERIFY(torch::allclose(changed.target_log_prob, fresh().target_log_prob, 1e-5, 1e-6));
        QVERIFY(torch::allclose(changed.memory[0], fresh().memory[0], 1e-5, 1e-6));
        // Written behind the version counters' backs, then a training phase (train(), eval()).
        for (auto * w : {&attention.q_weight, &attention.r_weight}) {
            auto values = torch::randn(w->sizes());
            std::memcpy(w->data_ptr<float>(), values.data_ptr<float>(), (size_t) values.numel() * sizeof(float));
        }
        model->train();
        model->eval();
        auto rewritten = model->forward(input, target, {});
        QVERIFY(!torch::allclose(rewritten.target_log_prob, changed.target_log_prob));
        QVERIFY(torch::allclose(rewritten.target_log_prob, fresh().target_log_prob, 1e-5, 1e-6));
    }

    // Cached keys and values stand for the memory only at inference: training needs the hidden states' gradients
    // through the key and value weights, so a cached memory there is refused, not silently misread.
    void cached_memory_refused_in_training() {
        auto config = tiny(ModelType::AllAttention);
        LanguageModel model(config);
        auto input = torch::randint(0, 40, {1, 4}, torch::kLong);
        std::vector<torch::Tensor> cached;
        {
            model->eval();
            torch::NoGradGuard no_grad;
            cached = model->forward(input, input, {}).memory;
        }
        QCOMPARE(cached[0].dim(), int64_t(4));
        model->train();
        try {
            model->forward(input, input, cached);
            QFAIL("a training forward took cached keys and values");
        } catch (const c10::Error & e) {
            QCOMPARE(std::string(e.what_without_backtrace()),
                     std::string("attention: the memory holds cached keys and values, which only inference with the key/value cache "
                                 "takes; start from empty memory"));
        }
    }

    void dropout_only_in_training() {
        auto config = tiny(ModelType::AllAttention);
        config.attn_drop = config.proj_drop = config.input_drop = config.output_drop = config.word_drop = 0.3;
        LanguageModel model(config);
        auto input = torch::randint(0, 40, {2, 4}, torch::kLong);
        model->eval();
        torch::NoGradGuard no_grad;
        auto a = model->forward(input, input, {}).target_log_prob, b = model->forward(input, input, {}).target_log_prob;
        QVERIFY(torch::equal(a, b));
        model->train();
        auto c = model->forward(input, input, {}).target_log_prob, d = model->forward(input, input, {}).target_log_prob;
        QVERIFY(!torch::equal(c, d));
    }

    // All-attention's last layer dropout and the output's are drawn as one mask keeping (1-p1)(1-p2), scaled by its
    // inverse: the share of exact zeros in the output, and the kept entries against the dropout-free output.
    void output_dropouts_keep_both_shares() {
        auto config = tiny(ModelType::AllAttention);
        config.hidden_dim = 64;
        config.output_drop = 0.2;
        LanguageModel model(config);
        auto input = torch::randint(0, 40, {32, 4}, torch::kLong);
        torch::NoGradGuard no_grad;
        model->eval();
        const auto clean = model->forward(input, {}, {}).hidden;                   // (B,T,D)
        model->train();
        auto dropped = model->forward(input, {}, {}).hidden;
        auto kept = dropped != 0;
        const double n = (double) kept.numel(), bound = 5 * std::sqrt(0.2 * 0.8 / n);
        QVERIFY2(std::abs(kept.to(torch::kDouble).mean().item<double>() - 0.8) < bound, "output_drop 0.2: about 0.8 of the entries kept");
        QVERIFY(torch::allclose(dropped.masked_select(kept), (clean / 0.8).masked_select(kept), 1e-4, 1e-5));
        // With the last layer's dropout too (and every layer's, which leaves no exact zeros in the residual stream).
        config.proj_drop = 0.5;
        LanguageModel both(config);
        both->train();
        const double share = (both->forward(input, {}, {}).hidden != 0).to(torch::kDouble).mean().item<double>();
        QVERIFY2(std::abs(share - 0.5 * 0.8) < 5 * std::sqrt(0.4 * 0.6 / n), "proj_drop 0.5 and output_drop 0.2: 0.4 of the entries kept");
    }
};

QTEST_GUILESS_MAIN(TestModel)
#include "test_model.moc"
