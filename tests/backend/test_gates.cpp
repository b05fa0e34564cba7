// Hard-concrete gates against formulas computed here, the three techniques, and physical pruning: the pruned model
// must compute exactly what the gated model computes, for both model types, with output scaling and an empty layer.
#include <torch/torch.h>

#include <QTemporaryDir>
#include <QTest>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "gated_weight.h"
#include "language_model.h"
#include "prune.h"
#include "safetensors.h"
#include "tensor_io.h"

using namespace studio;

namespace {

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

ModelConfig small(ModelType type) {
    ModelConfig m;
    m.type = type;
    m.num_layers = 3;
    m.num_heads = 4;
    m.hidden_dim = 16;
    m.feedforward_dim = 12;
    m.vocab_size = 60;
    m.cutoffs = {20, 40};
    m.div_value = 2;
    m.max_len = 16;
    m.tgt_len = 5;
    m.mem_len = 4;
    m.head_gates = true;
    m.share_r_bias = type == ModelType::TransformerXL;
    return m;
}

// Closes a fixed pattern of heads: layer 0 keeps heads 0 and 2, layer 1 keeps none, layer 2 keeps all but head 3.
void close_heads(LanguageModelImpl & model) {
    torch::NoGradGuard no_grad;
    const std::vector<std::vector<double>> la{{3.0, -1.0, 0.5, -4.0}, {-2.0, -0.1, -3.0, -0.5}, {1.0, 2.0, 0.2, -0.3}};
    for (size_t l = 0; l < la.size(); ++l) model.layer_list[l]->attention->gate->log_alpha.copy_(torch::tensor(la[l]));
}

} // namespace

class TestGates : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void initTestCase() { torch::manual_seed(7); }

    void training_samples_open_with_probability_sigmoid_log_alpha() {
        HardConcreteGate gate(HardConcreteGateOptions(3).init_log_alpha(0.0));
        torch::NoGradGuard no_grad;
        gate->log_alpha.copy_(torch::tensor({2.0, 0.0, -1.0}));
        const int n = 40000;
        auto open = torch::zeros({3});
        for (int i = 0; i < n; ++i) open += gate->forward(torch::rand({3})).gate;
        auto freq = open / n;
        for (int h = 0; h < 3; ++h) {
            const double expected = sigmoid(gate->log_alpha[h].item<double>());   // P(stretched >= 0.5) = sigmoid(log_alpha)
            QVERIFY2(std::abs(freq[h].item<double>() - expected) < 0.01, std::to_string(freq[h].item<double>()).c_str());
        }
        QVERIFY(torch::allclose(gate->p_open(), torch::sigmoid(gate->log_alpha), 1e-6, 1e-6));
    }

    void forward_is_hard_and_gradient_is_the_stretched_soft_value() {
        HardConcreteGate gate(HardConcreteGateOptions(4));
        const double beta = 0.333, gamma = -0.1, zeta = 1.1;
        {
            torch::NoGradGuard no_grad;
            gate->log_alpha.copy_(torch::tensor({0.3, -0.2, 5.0, -6.0}));
        }
        auto u = torch::tensor({0.6, 0.45, 0.99, 0.01});
        auto sample = gate->forward(u);
        (sample.gate * torch::tensor({1.0, 2.0, 3.0, 4.0})).sum().backward();
        for (int h = 0; h < 4; ++h) {
            const double la = gate->log_alpha[h].item<double>(), uh = u[h].item<double>();
            const double s = sigmoid((std::log(uh) - std::log(1 - uh) + la) / beta);
            const double stretched = s * (zeta - gamma) + gamma;
            const double clamped = std::min(1.0, std::max(1e-6, stretched));
            QCOMPARE(sample.gate[h].item<double>(), clamped >= 0.5 ? 1.0 : 0.0);
            // d/d log_alpha of the clamped stretched value: zero where the clamp holds.
            const double grad = (stretched > 1e-6 && stretched < 1.0) ? (zeta - gamma) * s * (1 - s) / beta : 0.0;
            QVERIFY2(std::abs(gate->log_alpha.grad()[h].item<double>() - (h + 1) * grad) < 1e-5, std::to_string(h).c_str());
        }
        QCOMPARE(sample.closed.item<int64_t>(), int64_t(2));
    }

    void eval_rule_and_l0_term() {
        HardConcreteGate gate(HardConcreteGateOptions(4));
        torch::NoGradGuard no_grad;
        QVERIFY(std::abs(gate->l0().item<double>() / 4 - 0.942595) < 1e-6);   // reference-model.md 2.2, at log_alpha 2
        gate->log_alpha.copy_(torch::tensor({0.0, -1e-4, 1e-4, -3.0}));
        auto sample = gate->forward();
        QVERIFY(torch::equal(sample.gate, torch::tensor({1.0f, 0.0f, 1.0f, 0.0f})));
        QVERIFY(torch::equal(gate->open_mask(), torch::tensor({true, false, true, false})));
        double l0 = 0;
        for (double la : {0.0, -1e-4, 1e-4, -3.0}) l0 += std::min(1 - 1e-6, std::max(1e-6, sigmoid(la - 0.333 * std::log(0.1 / 1.1))));
        QVERIFY(std::abs(gate->l0().item<double>() - l0) < 1e-6);
    }

    void gate_initialisation_technique() {
        LanguageModel model(small(ModelType::AllAttention));
        model->configure_gates(HardConcreteGateOptions(4).init_log_alpha(2.0));
        for (const auto & row : model->gate_p_open()) for (float p : row) QVERIFY(std::abs(p - 0.8807971f) < 1e-6);
        QCOMPARE(model->hard_sparsity(), 0.0);
        QVERIFY(std::abs(model->expected_sparsity().item<double>() - (1 - 0.8807971)) < 1e-6);
    }

    void target_projection_closes_exactly_the_lowest_gates() {
        LanguageModel model(small(ModelType::AllAttention));
        close_heads(*model);                                   // 7 of 12 closed
        QCOMPARE(model->hard_sparsity(), 7.0 / 12.0);
        QCOMPARE(model->set_closed_heads(6), int64_t(1));      // reopens the closed gate nearest the threshold (-0.1)
        QCOMPARE(model->hard_sparsity(), 0.5);
        QVERIFY(model->layer_list[1]->attention->gate->open_mask()[1].item<bool>());
        QCOMPARE(model->set_closed_heads(9), int64_t(3));      // then closes the three lowest open ones: 0.001, 0.2, 0.5
        auto open = open_heads(*model);
        QCOMPARE(open, (std::vector<std::vector<int64_t>>{{0}, {}, {0, 1}}));
    }

    void output_scaling_multiplies_open_heads() {
        const int64_t D = 8, H = 4;
        RelativeAttention attention(RelativeAttentionOptions(D, H, 2).gated(true));
        attention->eval();
        torch::NoGradGuard no_grad;
        attention->gate->log_alpha.copy_(torch::tensor({1.0, -1.0, 2.0, 3.0}));   // one head closed
        auto x = torch::randn({2, 3, D}), mem = torch::randn({2, 2, D}), pos = torch::randn({5, D});
        auto keep = attention_keep_mask(3, 2, true, torch::kCPU);
        GateControl plain{true, false, {}}, scaled{true, true, {}};
        auto a = attention->forward(x, mem, pos, keep, {}, {}, plain).out - attention->o_bias;
        auto b = attention->forward(x, mem, pos, keep, {}, {}, scaled).out - attention->o_bias;
        const double factor = std::min(4.0, std::max(1.0, 4.0 / (4.0 - 1.0 + 1e-3)));
        QVERIFY(torch::allclose(b, a * factor, 1e-5, 1e-6));
    }

    // The gates scale the output projection's columns head by head: element by element, and both gradients of
    // <gated, upstream> (d weight = upstream x gate, d gate[h] = sum of upstream x weight over head h's columns).
    void gated_weight_scales_each_heads_columns() {
        const int64_t D = 5, H = 3, dh = 4;
        auto weight = torch::randn({D, H * dh}, torch::kDouble).requires_grad_(true);
        auto gate = torch::tensor({0.0, 1.0, 1.7}, torch::kDouble).requires_grad_(true);
        auto upstream = torch::randn({D, H * dh}, torch::kDouble);
        auto gated = gated_weight(weight, gate, dh);
        QCOMPARE(gated.sizes(), weight.sizes());
        (gated * upstream).sum().backward();
        auto w = weight.detach();
        for (int64_t d = 0; d < D; ++d) {
            for (int64_t c = 0; c < H * dh; ++c) {
                const double g = gate[c / dh].item<double>();
                QCOMPARE(gated[d][c].item<double>(), w[d][c].item<double>() * g);
                QCOMPARE(weight.grad()[d][c].item<double>(), upstream[d][c].item<double>() * g);
            }
        }
        for (int64_t h = 0; h < H; ++h) {
            double sum = 0;
            for (int64_t d = 0; d < D; ++d)
                for (int64_t j = 0; j < dh; ++j) sum += upstream[d][h * dh + j].item<double>() * w[d][h * dh + j].item<double>();
            QVERIFY(std::abs(gate.grad()[h].item<double>() - sum) < 1e-12);
        }
        std::string message;
        try {
            gated_weight(weight.detach(), gate.detach(), 3);
        } catch (const c10::Error & e) {
            message = e.what_without_backtrace();
        }
        QVERIFY2(message.rfind("gated_weight: weight (D, H x head_dim) and gate (H,), got [5, 12] and [3] with head_dim 3", 0) == 0, message.c_str());
    }

    // The model samples all layers' gates in one pass (stacked log_alpha); each row must be that layer's own sample:
    // the same gates, closed counts, output-scaled weights and log_alpha gradients as layer-by-layer sampling.
    void stacked_gate_sample_equals_each_layers() {
        const int64_t L = 3, H = 5;
        torch::manual_seed(5);
        HardConcreteGateOptions options(H);
        std::vector<HardConcreteGate> gates;
        std::vector<torch::Tensor> log_alphas;
        for (int64_t l = 0; l < L; ++l) {
            gates.emplace_back(options);
            torch::NoGradGuard no_grad;
            gates.back()->log_alpha.copy_(torch::randn({H}) * 2);
            log_alphas.push_back(gates.back()->log_alpha);
        }
        auto noise = torch::rand({L * H});
        auto upstream = torch::randn({L, H});
        auto stacked = sample_hard_concrete(torch::stack(log_alphas), noise, options);           // (L,H)
        auto stacked_weights = output_scaled(stacked, H);
        (stacked_weights * upstream).sum().backward();
        std::vector<torch::Tensor> stacked_grads;
        for (auto & gate : gates) {
            stacked_grads.push_back(gate->log_alpha.grad().clone());
            gate->log_alpha.mutable_grad().zero_();
        }
        for (int64_t l = 0; l < L; ++l) {
            auto own = gates[(size_t) l]->forward(noise.narrow(0, l * H, H));
            const double factor = std::min((double) H, std::max(1.0, H / (H - own.closed.item<double>() + 1e-3)));
            (own.gate * factor * upstream[l]).sum().backward();
            QVERIFY(torch::equal(stacked.gate[l], own.gate));
            QCOMPARE(stacked.closed[l].item<int64_t>(), own.closed.item<int64_t>());
            QVERIFY(torch::allclose(stacked_weights[l], own.gate * factor, 1e-6, 0));
            QVERIFY(torch::allclose(stacked_grads[(size_t) l], gates[(size_t) l]->log_alpha.grad(), 1e-6, 1e-7));
        }
        QVERIFY(stacked.closed.sum().item<int64_t>() > 0 && stacked.closed.sum().item<int64_t>() < L * H);   // a mixed sample
    }

    // A gated training forward returns its L0 term (the trainer adds it to the loss from there, as the CUDA graphs
    // compute it inside the replayed layers): the value and log_alpha gradient of model.l0(); none in eval or ungated.
    void gated_training_forward_returns_its_l0_term() {
        LanguageModel model(small(ModelType::AllAttention));
        model->train();
        auto input = torch::randint(0, 60, {2, 5}, torch::kLong);
        GateSettings gates;
        gates.enabled = true;
        gates.noise_seed = 3;
        auto out = model->forward(input, input, {}, gates);
        QVERIFY(out.l0.defined() && out.closed.defined());
        out.l0.backward();
        std::vector<torch::Tensor> from_forward;
        for (auto & p : model->gate_parameters()) {
            from_forward.push_back(p.grad().clone());
            p.mutable_grad().zero_();
        }
        auto expected = model->l0();
        expected.backward();
        QCOMPARE(out.l0.item<double>(), expected.item<double>());
        const auto parameters = model->gate_parameters();
        for (size_t i = 0; i < parameters.size(); ++i) QVERIFY(torch::allclose(from_forward[i], parameters[i].grad(), 1e-6, 1e-7));
        QVERIFY(from_forward[0].abs().sum().item<double>() > 0);
        QVERIFY(!model->forward(input, input, {}, GateSettings{}).l0.defined());
        model->eval();
        QVERIFY(!model->forward(input, input, {}, gates).l0.defined());
    }

    void pruned_model_equals_gated_model_data() {
        QTest::addColumn<int>("type");
        QTest::addColumn<bool>("scaling");
        QTest::newRow("all-attention, scaling") << 0 << true;
        QTest::newRow("all-attention, no scaling") << 0 << false;
        QTest::newRow("transformer-xl, scaling") << 1 << true;
        QTest::newRow("transformer-xl, no scaling") << 1 << false;
    }
    void pruned_model_equals_gated_model() {
        QFETCH(int, type);
        QFETCH(bool, scaling);
        LanguageModel gated(small(type == 0 ? ModelType::AllAttention : ModelType::TransformerXL));
        {
            torch::NoGradGuard no_grad;   // non-zero biases so that slicing mistakes cannot hide
            for (auto & p : gated->parameters()) if (p.dim() == 1) p.uniform_(-0.3, 0.3);
        }
        close_heads(*gated);
        gated->eval();
        auto keep = open_heads(*gated);
        QCOMPARE(keep, (std::vector<std::vector<int64_t>>{{0, 2}, {}, {0, 1, 2}}));
        auto pruned = prune_heads(*gated, keep, scaling);
        pruned.model->eval();
        QCOMPARE(pruned.model->config.heads_per_layer, (std::vector<int64_t>{2, 0, 3}));

        torch::NoGradGuard no_grad;
        GateSettings gates{true, scaling, 0};
        std::vector<torch::Tensor> memory_gated, memory_pruned;
        for (int segment = 0; segment < 2; ++segment) {   // two consecutive segments: memory must agree too
            auto input = torch::randint(0, 60, {3, 5}, torch::kLong), target = torch::randint(0, 60, {3, 5}, torch::kLong);
            auto a = gated->forward(input, target, memory_gated, gates);
            auto b = pruned.model->forward(input, target, memory_pruned, GateSettings{});
            const double diff = (a.target_log_prob - b.target_log_prob).abs().max().item<double>();
            QVERIFY2(diff <= 1e-5, std::to_string(diff).c_str());
            memory_gated = a.memory;
            memory_pruned = b.memory;
        }
        // Parameters fall by exactly the closed heads' share (gates go too).
        auto before = gated->parameter_counts(), after = pruned.model->parameter_counts();
        const int64_t dh = 4, D = 16, closed = 12 - 5;
        int64_t per_head = 5 * dh * D + (type == 0 ? 2 * dh + 2 * 12 * dh : 0);   // TXL heads own no u/v before pruning
        int64_t shared = type == 0 ? 0 : 2 * 4 * dh;   // TXL's shared u/v become per-layer slices
        QCOMPARE(after.layers, before.layers - before.gates - closed * per_head + (type == 0 ? 0 : 2 * 5 * dh));
        QCOMPARE(after.total, before.total - before.gates - closed * per_head - shared + (type == 0 ? 0 : 2 * 5 * dh));
    }

    void pruned_export_reads_back() {
        LanguageModel gated(small(ModelType::AllAttention));
        close_heads(*gated);
        auto pruned = prune_heads(*gated, open_heads(*gated), true);
        QTemporaryDir dir;
        auto summary = prune_write(dir.path().toStdString(), pruned, *gated, nlohmann::json{{"name", "x"}});
        QVERIFY(summary["heads_per_layer"] == nlohmann::json({2, 0, 3}));
        // What a Python user sees: every tensor by name, shape and value.
        auto file = safetensors_read(dir.path().toStdString() + "/model.safetensors");
        auto state = module_state(*pruned.model);
        QCOMPARE(file.tensors.size(), state.size());
        for (const auto & [name, tensor] : state) {
            QVERIFY2(file.tensors.count(name), name.c_str());
            const auto & t = file.tensors.at(name);
            QCOMPARE(t.dtype, std::string("F32"));
            QCOMPARE(t.shape, tensor.sizes().vec());
            auto copy = tensor.contiguous();
            QCOMPARE(t.data.size(), (size_t) copy.nbytes());
            // A removed head leaves empty tensors, whose data pointers may be null: memcmp must not see those (UBSan).
            QVERIFY2(t.data.empty() || std::memcmp(t.data.data(), copy.data_ptr(), t.data.size()) == 0, name.c_str());
        }
        QVERIFY(file.tensors.at("layers.1.attention.q_weight").shape == (std::vector<int64_t>{0, 16}));
        QVERIFY(file.tensors.at("layers.0.attention.mem_k").shape == (std::vector<int64_t>{2, 12, 4}));
        auto heads = nlohmann::json::parse(std::ifstream(dir.path().toStdString() + "/heads.json"));
        QVERIFY(heads["heads_kept"] == nlohmann::json({{0, 2}, nlohmann::json::array(), {0, 1, 2}}));
        auto config = nlohmann::json::parse(std::ifstream(dir.path().toStdString() + "/config.json"));
        QVERIFY(config["model"]["heads_per_layer"] == nlohmann::json({2, 0, 3}));
        QVERIFY(config["model"]["output_scale_folded"].get<bool>());
        // And the engine loads it back to the same outputs.
        auto loaded = pruned_load(dir.path().toStdString());
        loaded->eval();
        pruned.model->eval();
        torch::NoGradGuard no_grad;
        auto input = torch::randint(0, 60, {2, 5}, torch::kLong);
        QVERIFY(torch::equal(loaded->forward(input, input, {}).target_log_prob, pruned.model->forward(input, input, {}).target_log_prob));
    }
};

QTEST_GUILESS_MAIN(TestGates)
#include "test_gates.moc"
