// Attention against computations written independently here: the relative shift, the content bias, the parts of a
// softmax joined, head chunks, the kernels' operand checks, masks, sinusoids, and relative attention with persistent
// vectors as a per-element loop (with the memory given as hidden states and as cached keys and values).
#include <torch/torch.h>

#include <QTest>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "apart_attention.h"
#include "biased_product.h"
#include "content_attention.h"
#include "content_bias.h"
#include "device.h"
#include "language_model.h"

using namespace studio;

class TestAttention : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void initTestCase() { torch::manual_seed(0); }
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

    // The content columns take a bias or a position term, never both or neither; the position term needs our CUDA
    // training kernels (content_attention.h), which a CPU build has not, and which say so instead of computing.
    void apart_attention_position_term_is_checked() {
        const int64_t H = 2, B = 1, T = 4, S = 8, N = 3, dh = 4;
        auto q = torch::randn({H, B, T, dh}), k = torch::randn({H, B, S, dh}), keys = torch::randn({H, N, dh});
        auto bias = torch::zeros({H, B, T, S});
        const PositionTerm position{torch::randn({H, B, T, dh}), torch::randn({H, S, dh}), 0};
        auto message = [&](const torch::Tensor & content_bias, const PositionTerm & term, AttentionParts parts) {
            try {
                trainable_apart_attention(q, q, k, k, content_bias, keys, keys, 0.5, 0.0, parts, term);
            } catch (const std::exception & error) {
                const std::string text = error.what();
                return text.substr(0, text.find('\n'));
            }
            return std::string("no error");
        };
        QCOMPARE(message(bias, position, AttentionParts::math), std::string("apart attention: give the content columns a bias or a position term"));
        QCOMPARE(message(torch::Tensor(), {}, AttentionParts::math), std::string("apart attention: give the content columns a bias or a position term"));
        QCOMPARE(message(torch::Tensor(), position, AttentionParts::math),
                 std::string("apart attention: the position term without a bias needs our kernels"));
        QVERIFY(!content_attention_kernels_take(q.transpose(0, 1), k.transpose(0, 1), true));
        try {
            content_attention_forward(q, q, k, k, keys, 0, {}, {}, 0.5, 0.0);
            QFAIL("content_attention_forward ran without its kernels");
        } catch (const std::exception & error) {
            QCOMPARE(std::string(error.what()).substr(0, 80),
                     std::string("content attention: our training kernels are not built (a CUDA build on LibTorch 2)").substr(0, 80));
        }
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

        // At inference the memory may come as the keys and values a previous segment cached: one whose last M rows
        // were mem. With the key/value cache off, the same module carries none.
        attention->eval();
        QVERIFY(attention->caches_key_values());
        auto previous = torch::cat({torch::randn({B, T - M, D}), mem}, 1);                    // (B,T,D), last M rows = mem
        auto first = attention->forward(previous, torch::randn({B, M, D}), pos, keep, {}, {}, GateControl{});
        QCOMPARE(first.key_values.sizes().vec(), (std::vector<int64_t>{B, M, 2, H * dh}));
        auto cached = attention->forward(x, {}, pos, keep, {}, {}, GateControl{}, {}, first.key_values).out;
        QVERIFY2(torch::allclose(cached.to(torch::kDouble), projected, 1e-5, 1e-5),
                 std::to_string((cached.to(torch::kDouble) - projected).abs().max().item<double>()).c_str());
        set_key_value_cache(false);
        QVERIFY(!attention->caches_key_values());
        QVERIFY(!attention->forward(x, mem, pos, keep, {}, {}, GateControl{}).key_values.defined());
        set_key_value_cache(true);
    }
};

QTEST_GUILESS_MAIN(TestAttention)
#include "test_attention.moc"
