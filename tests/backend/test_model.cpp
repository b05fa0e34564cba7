// The model against computations written independently here: exact reference parameter counts, the relative shift,
// relative attention with persistent vectors (a per-element loop), the adaptive softmax (a full distribution that
// sums to one), memory, masks and gradients.
#include <torch/torch.h>

#include <QTest>

#include <cmath>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "apart_attention.h"
#include "biased_product.h"
#include "content_bias.h"
#include "device.h"
#include "language_model.h"
#include "model_info.h"

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

    // Both ways of shifting (a view without a gradient, a padded copy with one) agree on every valid entry, for
    // memories longer than, as long as and without the segment, and the copy's gradient lands on the source entries.
    void rel_shift_moves_each_row_by_its_distance() {
        for (auto [T, S] : std::vector<std::pair<int64_t, int64_t>>{{3, 5}, {4, 8}, {4, 4}, {1, 3}}) {
            auto x = torch::arange(2 * T * S, torch::kFloat).view({2, 1, T, S});
            auto viewed = rel_shift(x);
            auto source = x.clone().requires_grad_(true);
            auto copied = rel_shift(source);
            QVERIFY(copied.requires_grad());
            auto weights = torch::zeros_like(x);
            for (int64_t b = 0; b < 2; ++b) {
                for (int64_t i = 0; i < T; ++i) {
                    for (int64_t j = 0; j <= i + S - T; ++j) {
                        const float expected = x[b][0][i][j + T - 1 - i].item<float>();
                        QCOMPARE(viewed[b][0][i][j].item<float>(), expected);
                        QCOMPARE(copied[b][0][i][j].item<float>(), expected);
                        weights[b][0][i][j] = 1.0f + b + i * S + j;
                    }
                }
            }
            (copied * weights).sum().backward();
            for (int64_t b = 0; b < 2; ++b)
                for (int64_t i = 0; i < T; ++i)
                    for (int64_t j = 0; j <= i + S - T; ++j)
                        QCOMPARE(source.grad()[b][0][i][j + T - 1 - i].item<float>(), weights[b][0][i][j].item<float>());
        }
    }

    // The content columns' bias: the position term shifted into place, u . k added (or not: the apart kernels carry u
    // in the query), scaled, -inf off the kept band; its gradients go back through the shift (written here element by
    // element). With same_length the position scores may come without their first T-1 columns, which nothing reads.
    void content_bias_shifts_adds_scales_and_masks() {
        const int64_t H = 2, B = 2, T = 5, M = 3, S = T + M;
        const double scale = 0.25;
        for (const auto & [with_key_bias, first] : std::vector<std::pair<bool, int64_t>>{{true, 0}, {false, 0}, {true, T - 1}}) {
            auto position = torch::randn({H, B, T, S - first}, torch::kDouble).requires_grad_(true);
            auto key_bias = with_key_bias ? torch::randn({H, B, S}, torch::kDouble).requires_grad_(true) : torch::Tensor();
            auto keep = attention_keep_mask(T, M, true, torch::kCPU);
            auto bias = content_bias(position, key_bias, keep, scale);
            QCOMPARE(bias.sizes().vec(), (std::vector<int64_t>{H, B, T, S}));
            auto upstream = torch::randn({H, B, T, S}, torch::kDouble);
            (bias.masked_fill(keep.logical_not(), 0) * upstream).sum().backward();
            auto expected_position_grad = torch::zeros({H, B, T, S - first}, torch::kDouble);
            auto expected_key_grad = torch::zeros({H, B, S}, torch::kDouble);
            for (int64_t h = 0; h < H; ++h)
                for (int64_t b = 0; b < B; ++b)
                    for (int64_t i = 0; i < T; ++i)
                        for (int64_t j = 0; j < S; ++j) {
                            const bool kept = j <= i + M && j >= i;
                            QCOMPARE(keep[i][j].item<bool>(), kept);
                            if (!kept) {
                                QCOMPARE(bias[h][b][i][j].item<double>(), -INFINITY);
                                continue;
                            }
                            const int64_t column = j + T - 1 - i - first;
                            QVERIFY(column >= 0);
                            const double key_term = with_key_bias ? key_bias[h][b][j].item<double>() : 0.0;
                            const double value = (position[h][b][i][column].item<double>() + key_term) * scale;
                            QVERIFY(std::abs(bias[h][b][i][j].item<double>() - value) < 1e-12);
                            expected_position_grad[h][b][i][column] += upstream[h][b][i][j].item<double>() * scale;
                            expected_key_grad[h][b][j] += upstream[h][b][i][j].item<double>() * scale;
                        }
            QVERIFY2(torch::allclose(position.grad(), expected_position_grad, 1e-12, 1e-12), "position gradient");
            if (with_key_bias) QVERIFY2(torch::allclose(key_bias.grad(), expected_key_grad, 1e-12, 1e-12), "key bias gradient");
        }
        // A key bias of the wrong shape is named in the error.
        auto keep = attention_keep_mask(T, M, true, torch::kCPU);
        try {
            content_bias(torch::zeros({H, B, T, S}), torch::zeros({H, B, S + 1}), keep, scale);
            QFAIL("a key bias of S + 1 keys was taken");
        } catch (const c10::Error & error) {
            QVERIFY(std::string(error.what_without_backtrace()).find("content_bias: position (H,B,T,P <= S), key_bias (H,B,S) or none") == 0);
        }
    }

    // The GPU inference path attends to the content and the persistent keys in two kernels and joins them by their
    // log-sum-exps; joined, they must be one softmax over all keys (a masked content key included).
    void attention_parts_merge_into_one_softmax() {
        const int64_t rows = 5, Sa = 7, Sb = 11, dh = 4;
        auto scores_a = torch::randn({2, rows, Sa}, torch::kDouble) * 3, scores_b = torch::randn({2, rows, Sb}, torch::kDouble) * 3;
        scores_a.index_put_({0, 1, 2}, -INFINITY);
        auto values_a = torch::randn({2, Sa, dh}, torch::kDouble), values_b = torch::randn({2, Sb, dh}, torch::kDouble);
        auto merged = studio::merge_attention_parts(torch::matmul(torch::softmax(scores_a, -1), values_a), torch::logsumexp(scores_a, -1),
                                                    torch::matmul(torch::softmax(scores_b, -1), values_b), torch::logsumexp(scores_b, -1));
        torch::Tensor expected = torch::zeros({2, rows, dh}, torch::kDouble);
        for (int64_t g = 0; g < 2; ++g)
            for (int64_t i = 0; i < rows; ++i) {
                double total = 0;
                for (int64_t j = 0; j < Sa; ++j) total += std::exp(scores_a[g][i][j].item<double>());
                for (int64_t j = 0; j < Sb; ++j) total += std::exp(scores_b[g][i][j].item<double>());
                for (int64_t j = 0; j < Sa; ++j) expected[g][i] += std::exp(scores_a[g][i][j].item<double>()) / total * values_a[g][j];
                for (int64_t j = 0; j < Sb; ++j) expected[g][i] += std::exp(scores_b[g][i][j].item<double>()) / total * values_b[g][j];
            }
        QCOMPARE(merged.scalar_type(), torch::kDouble);
        QVERIFY2(torch::allclose(merged, expected, 1e-6, 1e-6), "merged parts differ from one softmax over all keys");
    }

    // Without a gradient the explicit path runs a few heads at a time when the scores are big: here 2 x 64 x
    // (128 + 2048) fp32 scores per head, 1.1 MB, so chunks of 15 heads and 1 under its 16 MB. It must give what the
    // whole-tensor computation (grad mode, one piece) gives, persistent vectors of every head included.
    // Training attends to the content and the persistent keys apart too, and each part's backward is handed the
    // joined output and log-sum-exp. Forward and every gradient must be those of one softmax over all keys, written
    // here as exactly that (autograd through a concatenation), masked content keys included.
    // The content columns have a query of their own (the model's q + u); the persistent ones take q.
    void apart_attention_gradients_equal_one_softmax() {
        const int64_t H = 2, B = 3, T = 4, S = 6, N = 5, dh = 3;
        const double scale = 0.7;
        auto leaf = [](std::vector<int64_t> shape) { return torch::randn(shape, torch::kDouble).requires_grad_(true); };
        auto q = leaf({H, B, T, dh}), content_q = leaf({H, B, T, dh}), k = leaf({H, B, S, dh}), v = leaf({H, B, S, dh}),
             keys = leaf({H, N, dh}), values = leaf({H, N, dh});
        auto bias_value = torch::randn({H, B, T, S}, torch::kDouble);
        for (int64_t i = 0; i < T; ++i)
            for (int64_t j = i + S - T + 1; j < S; ++j) bias_value.select(2, i).select(2, j).fill_(-INFINITY);   // future keys
        auto bias = bias_value.requires_grad_(true);
        auto upstream = torch::randn({H, B, T, dh}, torch::kDouble);

        auto apart = trainable_apart_attention(q, content_q, k, v, bias, keys, values, scale, 0.0, AttentionParts::math);
        (apart * upstream).sum().backward();
        std::vector<torch::Tensor> apart_grads;
        for (auto * t : {&q, &content_q, &k, &v, &bias, &keys, &values}) {
            apart_grads.push_back(t->grad().clone());
            t->mutable_grad().zero_();
        }

        auto content_scores = torch::matmul(content_q, k.transpose(-1, -2)) * scale + bias;                      // (H,B,T,S)
        auto persistent_scores = torch::einsum("hbtd,hnd->hbtn", {q, keys});                                      // (H,B,T,N)
        auto probs = torch::softmax(torch::cat({content_scores, persistent_scores}, -1), -1);
        auto joined = torch::matmul(probs.narrow(-1, 0, S), v) + torch::einsum("hbtn,hnd->hbtd", {probs.narrow(-1, S, N), values});
        (joined * upstream).sum().backward();

        QVERIFY2(torch::allclose(apart, joined, 1e-10, 1e-10), "apart forward differs from one softmax");
        const char * names[] = {"q", "content q", "k", "v", "bias", "persistent keys", "persistent values"};
        size_t i = 0;
        for (auto * t : {&q, &content_q, &k, &v, &bias, &keys, &values}) {
            QVERIFY2(torch::allclose(apart_grads[i], t->grad(), 1e-9, 1e-10), (std::string("gradient of ") + names[i]).c_str());
            ++i;
        }
        QVERIFY(apart_grads[4].select(2, 0).select(2, S - 1).abs().max().item<double>() == 0);   // a masked key has none
    }

    // The products whose bias gradient comes from a matrix product (what the GPU's output projection and logits take)
    // must be addmm: the same output and the same three gradients, against addmm's own autograd in float64, with a
    // row of ones and with a column of ones riding in the weight's gradient. 13 columns: not a multiple of the 8 the
    // column of ones is padded to.
    void biased_product_equals_addmm() {
        torch::manual_seed(5);
        const int64_t M = 37, K = 13, D = 9;
        auto leaf = [](std::vector<int64_t> shape) { return torch::randn(shape, torch::kDouble).requires_grad_(true); };
        auto rows = leaf({M, K}), weight = leaf({D, K}), bias = leaf({D});
        auto upstream = torch::randn({M, D}, torch::kDouble);
        auto gradients_of = [&](const torch::Tensor & out) {
            (out * upstream).sum().backward();
            std::vector<torch::Tensor> grads;
            for (auto * t : {&rows, &weight, &bias}) {
                grads.push_back(t->grad().clone());
                t->mutable_grad().zero_();
            }
            return grads;
        };
        auto expected_out = torch::addmm(bias, rows, weight.t());
        const auto expected = gradients_of(expected_out);
        QVERIFY2(torch::allclose(expected[2], upstream.sum(0), 1e-12, 1e-12), "addmm's bias gradient is not the column sums");
        for (const auto how : {BiasGradient::ones_row, BiasGradient::ones_column}) {
            auto out = biased_product(rows, weight, bias, how);
            QVERIFY(torch::allclose(out, expected_out, 1e-12, 1e-12));
            const auto grads = gradients_of(out);
            const char * names[] = {"rows", "weight", "bias"};
            for (size_t i = 0; i < 3; ++i) {
                QCOMPARE(grads[i].sizes(), expected[i].sizes());
                QVERIFY2(torch::allclose(grads[i], expected[i], 1e-12, 1e-12), names[i]);
            }
        }
        try {
            biased_product(rows, weight, torch::zeros({D + 1}, torch::kDouble), BiasGradient::ones_column);
            QFAIL("a bias of D + 1 columns was taken");
        } catch (const c10::Error & error) {
            QVERIFY(std::string(error.what_without_backtrace()).find("biased_product: rows (M,K), weight (D,K) and bias (D,), got") == 0);
        }
    }

    // q + u and q + v: the bias's gradient as a product must be the sum over the batch and the queries, for x laid out
    // as the model's projections lay it out (B,T,H,dh), head-major (H,B,T,dh), and neither (a sliced view); x's own
    // gradient passes through.
    void plus_head_bias_equals_broadcast_add() {
        torch::manual_seed(9);
        const int64_t H = 3, B = 2, T = 5, dh = 4;
        auto upstreams = std::vector<torch::Tensor>{torch::randn({B, T, H, dh}, torch::kDouble).permute({2, 0, 1, 3}),
                                                    torch::randn({H, B, T, dh}, torch::kDouble),
                                                    torch::randn({H, B, T + 2, dh}, torch::kDouble).narrow(2, 1, T)};
        for (const auto & upstream : upstreams) {
            auto x = torch::randn({B, T, H, dh}, torch::kDouble).permute({2, 0, 1, 3}).requires_grad_(true);
            auto bias = torch::randn({H, 1, 1, dh}, torch::kDouble).requires_grad_(true);
            auto out = plus_head_bias(x, bias);
            QVERIFY(torch::allclose(out, x + bias, 0, 0));
            // The upstream gradient in a chosen layout reaches the Function as it is (a multiply by 1 keeps strides).
            out.backward(upstream);
            QVERIFY2(torch::allclose(bias.grad(), upstream.sum({1, 2}, true), 1e-12, 1e-12), "bias gradient is not the sum over B and T");
            QVERIFY2(torch::allclose(x.grad(), upstream, 0, 0), "x's gradient");
        }
        try {
            plus_head_bias(torch::zeros({3, 2, 5, 4}), torch::zeros({3, 1, 1, 5}));
            QFAIL("a bias of 5 columns for 4 was taken");
        } catch (const c10::Error & error) {
            QVERIFY(std::string(error.what_without_backtrace()).find("plus_head_bias: x (H,B,T,dh) and bias (H,1,1,dh), got") == 0);
        }
    }

    // With attention dropout each part drops its own probabilities; the backward must replay the very masks of the
    // forward. The output is linear in the values for fixed masks, so <out, G> = <dV, V> summed over both parts
    // exactly when it does (a fresh mask would break the identity by O(dropout)).
    void apart_attention_dropout_backward_replays_the_forward_masks() {
        const int64_t H = 2, B = 2, T = 5, S = 8, N = 6, dh = 4;
        torch::manual_seed(11);
        auto leaf = [](std::vector<int64_t> shape) { return torch::randn(shape, torch::kDouble).requires_grad_(true); };
        auto q = leaf({H, B, T, dh}), k = leaf({H, B, S, dh}), v = leaf({H, B, S, dh}), keys = leaf({H, N, dh}), values = leaf({H, N, dh});
        auto bias = torch::zeros({H, B, T, S}, torch::kDouble);
        auto upstream = torch::randn({H, B, T, dh}, torch::kDouble);
        auto out = trainable_apart_attention(q, q, k, v, bias, keys, values, 0.5, 0.4, AttentionParts::math);
        (out * upstream).sum().backward();
        const double forward_side = (out * upstream).sum().item<double>();
        const double backward_side = (v.grad() * v).sum().item<double>() + (values.grad() * values).sum().item<double>();
        QVERIFY2(std::abs(forward_side - backward_side) < 1e-9 * (1 + std::abs(forward_side)), "backward used other dropout masks");
        torch::NoGradGuard no_grad;
        auto undropped = trainable_apart_attention(q, q, k, v, bias, keys, values, 0.5, 0.0, AttentionParts::math);
        QVERIFY((out - undropped).abs().max().item<double>() > 1e-3);                          // dropout did act
    }

    void attention_in_head_chunks_equals_whole() {
        const int64_t D = 64, H = 16, dh = 4, N = 2048, B = 2, T = 64, M = 64;
        RelativeAttention attention(RelativeAttentionOptions(D, H, dh).persistent(N));
        {
            torch::NoGradGuard no_grad;
            attention->u_bias.normal_(0, 0.5);
            attention->v_bias.normal_(0, 0.5);
        }
        attention->eval();
        auto x = torch::randn({B, T, D}), mem = torch::randn({B, M, D}), pos = torch::randn({T + M, D});
        auto keep = attention_keep_mask(T, M, true, torch::kCPU);
        auto whole = attention->forward(x, mem, pos, keep, {}, {}, GateControl{}).out.detach();
        torch::Tensor chunked;
        {
            torch::NoGradGuard no_grad;
            chunked = attention->forward(x, mem, pos, keep, {}, {}, GateControl{}).out;
        }
        QCOMPARE(chunked.sizes(), whole.sizes());
        QVERIFY2(torch::allclose(chunked, whole, 1e-5, 1e-6), "head chunks differ from the whole computation");
    }

    // A layer that normalised memory and segment together (our GPU kernel's way) hands attention the keys' input
    // ready made: the result must be what the separate memory gives. On this CPU build none of our kernels exist,
    // so nothing may claim they run.
    void attention_takes_prejoined_keys() {
        const int64_t D = 16, H = 2, dh = 8, N = 3, B = 2, T = 5, M = 4;
        RelativeAttention attention(RelativeAttentionOptions(D, H, dh).persistent(N));
        attention->eval();
        torch::NoGradGuard no_grad;
        auto x = torch::randn({B, T, D}), mem = torch::randn({B, M, D}), pos = torch::randn({T + M, D});
        auto keep = attention_keep_mask(T, M, true, torch::kCPU);
        auto apart = attention->forward(x, mem, pos, keep, {}, {}, GateControl{}).out;
        auto joined = attention->forward(x, {}, pos, keep, {}, {}, GateControl{}, torch::cat({mem, x}, 1)).out;
        QVERIFY(torch::equal(apart, joined));
        QVERIFY(!own_kernels_built());
        QVERIFY(!own_kernels_enabled());
        QVERIFY(!attention->own_kernel_applies(x.to(torch::kBFloat16)));
        QVERIFY(inference_attention_name(torch::kCPU, torch::kBFloat16) == "explicit");
    }

    // What our kernels' wrappers ask of an operand before a 16-byte load: the start and every row aligned.
    void kernel_operand_checks() {
        auto rows = torch::zeros({4, 8}, torch::kBFloat16);                  // rows of 16 bytes
        QVERIFY(rows_16_byte_aligned(rows));
        QVERIFY(!rows_16_byte_aligned(rows.narrow(1, 1, 7)));                // starts 2 bytes in
        QVERIFY(!rows_16_byte_aligned(torch::zeros({4, 7}, torch::kBFloat16))); // rows of 14 bytes
        QVERIFY(!rows_16_byte_aligned(rows.t()));                            // columns are not unit-stride
        QVERIFY(rows_16_byte_aligned(torch::zeros({3, 4, 4}, torch::kFloat).narrow(1, 1, 2)));
        QVERIFY(cuda_compute_dtype(torch::zeros({2}, torch::kFloat)) == torch::kFloat);   // no CUDA autocast here
        QVERIFY(is_bf16_or_fp32(torch::kBFloat16) && is_bf16_or_fp32(torch::kFloat) && !is_bf16_or_fp32(torch::kHalf));
    }

    void keep_mask() {
        auto keep = attention_keep_mask(3, 2, true, torch::kCPU);
        auto expected = torch::tensor({1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1}, torch::kBool).view({3, 5});
        QVERIFY(torch::equal(keep, expected));
        auto causal = attention_keep_mask(2, 1, false, torch::kCPU);
        QVERIFY(torch::equal(causal, torch::tensor({1, 1, 0, 1, 1, 1}, torch::kBool).view({2, 3})));
    }

    void sinusoids_are_interleaved_and_reversed() {
        auto pos = sinusoid_positions(3, 4, torch::TensorOptions());
        // Row r encodes distance S-1-r; column 2k is sin(d / 10000^(2k/D)), column 2k+1 its cosine.
        QVERIFY(std::abs(pos[0][0].item<float>() - std::sin(2.0f)) < 1e-6);
        QVERIFY(std::abs(pos[0][1].item<float>() - std::cos(2.0f)) < 1e-6);
        QVERIFY(std::abs(pos[1][2].item<float>() - std::sin(1.0f / 100.0f)) < 1e-6);
        QCOMPARE(pos[2][1].item<float>(), 1.0f);
    }

    void relative_attention_matches_a_loop() {
        const int64_t D = 6, H = 2, dh = 3, N = 4, B = 2, T = 3, M = 2, S = T + M;
        RelativeAttention attention(RelativeAttentionOptions(D, H, dh).persistent(N).own_r_bias(true));
        torch::NoGradGuard no_grad;
        for (auto & p : attention->parameters()) p.uniform_(-0.5, 0.5);
        auto x = torch::randn({B, T, D}), mem = torch::randn({B, M, D}), pos = torch::randn({S, D});
        auto keep = attention_keep_mask(T, M, true, torch::kCPU);
        auto got = attention->forward(x, mem, pos, keep, {}, {}, GateControl{}).out;   // (B,T,D)

        auto & a = *attention;
        auto kv = torch::cat({mem, x}, 1);
        auto expected = torch::zeros({B, T, H * dh}, torch::kDouble);
        for (int64_t b = 0; b < B; ++b) {
            for (int64_t h = 0; h < H; ++h) {
                auto rows = torch::indexing::Slice(h * dh, (h + 1) * dh);
                auto Wq = a.q_weight.index({rows}).to(torch::kDouble), Wk = a.k_weight.index({rows}).to(torch::kDouble);
                auto Wv = a.v_weight.index({rows}).to(torch::kDouble), Wr = a.r_weight.index({rows}).to(torch::kDouble);
                auto u = a.u_bias.index({rows}).to(torch::kDouble), v = a.v_bias.index({rows}).to(torch::kDouble);
                for (int64_t i = 0; i < T; ++i) {
                    auto q = torch::mv(Wq, x[b][i].to(torch::kDouble));
                    std::vector<double> logits, values_index;
                    std::vector<torch::Tensor> values;
                    for (int64_t j = 0; j < S; ++j) {
                        if (j < i || j > i + M) continue;                 // same_length window
                        const int64_t distance = M + i - j;              // query at M+i, key at j
                        auto k = torch::mv(Wk, kv[b][j].to(torch::kDouble));
                        auto r = torch::mv(Wr, pos[S - 1 - distance].to(torch::kDouble));
                        logits.push_back(((q + u).dot(k) + (q + v).dot(r)).item<double>() / std::sqrt((double) dh));
                        values.push_back(torch::mv(Wv, kv[b][j].to(torch::kDouble)));
                    }
                    for (int64_t n = 0; n < N; ++n) {
                        logits.push_back(q.dot(a.mem_k[h][n].to(torch::kDouble)).item<double>());   // unscaled, no u/v
                        values.push_back(a.mem_v[h][n].to(torch::kDouble) * std::sqrt((double) N));
                    }
                    double max = -1e300, sum = 0;
                    for (double l : logits) max = std::max(max, l);
                    for (double l : logits) sum += std::exp(l - max);
                    auto o = torch::zeros({dh}, torch::kDouble);
                    for (size_t c = 0; c < logits.size(); ++c) o += values[c] * (std::exp(logits[c] - max) / sum);
                    expected[b][i].index_put_({rows}, o);
                }
            }
        }
        auto projected = torch::matmul(expected, a.o_weight.to(torch::kDouble).t()) + a.o_bias.to(torch::kDouble);
        QVERIFY2(torch::allclose(got.to(torch::kDouble), projected, 1e-5, 1e-5),
                 std::to_string((got.to(torch::kDouble) - projected).abs().max().item<double>()).c_str());
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
};

QTEST_GUILESS_MAIN(TestModel)
#include "test_model.moc"
