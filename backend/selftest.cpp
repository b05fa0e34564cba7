// `studio selftest`: numerical checks that need the machine's own device, above all the fused GPU attention
// against the explicit reference computation (forward and every gradient; and the inference path, whose persistent
// columns take their own kernel), which CPU tests cannot reach. The loss's checks are in selftest_loss.cpp.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "apart_attention.h"
#include "commands.h"
#include "content_attention.h"
#include "device.h"
#include "language_model.h"
#include "rel_attention.h"
#include "selftest_checks.h"
#include "transformer_layer.h"

namespace studio {

double relative_error(const torch::Tensor & a, const torch::Tensor & reference) {
    return (a - reference).abs().max().item<double>() / (reference.abs().max().item<double>() + 1e-12);
}

double worst_error(const Outputs & a, const Outputs & reference) {
    if (a.values.size() != reference.values.size()) return INFINITY;
    double worst = 0;
    for (size_t i = 0; i < a.values.size(); ++i) worst = std::max(worst, relative_error(a.values[i], reference.values[i]));
    return worst;
}

KernelSwitchesGuard::KernelSwitchesGuard()
    : fused_(fused_attention_enabled()), own_(own_kernels_enabled()), cudnn_min_rows_(persistent_cudnn_min_rows()),
      inference_cudnn_from_(persistent_inference_cudnn_from()), inference_splits_(persistent_inference_forced_splits()),
      key_value_cache_(key_value_cache_enabled()), content_kernels_(content_attention_kernels_enabled()) {}

KernelSwitchesGuard::~KernelSwitchesGuard() {
    set_fused_attention(fused_);
    set_own_kernels(own_);
    set_persistent_cudnn_min_rows(cudnn_min_rows_);
    set_persistent_inference_cudnn_from(inference_cudnn_from_);
    set_persistent_inference_splits(inference_splits_);
    set_key_value_cache(key_value_cache_);
    set_content_attention_kernels(content_kernels_);
}

namespace {

Outputs run_attention(RelativeAttention & attention, const torch::Tensor & x, const torch::Tensor & mem, const torch::Tensor & pos,
                      const torch::Tensor & keep, const torch::Tensor & upstream, const torch::Device & device, bool bf16, bool fused) {
    set_fused_attention(fused);
    attention->zero_grad();
    auto x_leaf = x.detach().clone().requires_grad_(true);
    torch::Tensor out;
    {
        AutocastGuard autocast(device, bf16);
        out = attention->forward(x_leaf, mem, pos, keep, {}, {}, GateControl{}).out;
    }
    (out.to(torch::kFloat) * upstream).sum().backward();
    Outputs result;
    result.values.push_back(out.detach().to(torch::kFloat));
    result.values.push_back(x_leaf.grad().detach().clone());
    for (auto & p : attention->parameters()) result.values.push_back(p.grad().defined() ? p.grad().detach().clone() : torch::zeros_like(p));
    return result;
}

/// An attention layer on the device with non-zero u/v biases: the fused paths must remove u . mem_k exactly.
RelativeAttention attention_under_test(int64_t D, int64_t H, int64_t dh, int64_t persistent, const torch::Device & device,
                                       bool same_length = true) {
    RelativeAttention attention(RelativeAttentionOptions(D, H, dh).persistent(persistent).same_length(same_length));
    {
        torch::NoGradGuard no_grad;
        attention->u_bias.normal_(0, 0.5);
        attention->v_bias.normal_(0, 0.5);
    }
    attention->to(device);
    return attention;
}

/// fp32: the same maths in another order. bf16: the fused error may be at most twice the explicit path's own bf16
/// error against fp32 (plus 1e-3), i.e. no worse than rounding already makes it. Prints one line; true if both pass.
bool judge(const std::string & what, double fp32_error, double explicit_bf16, double fused_bf16) {
    const bool pass_fp32 = fp32_error < 1e-4, pass_bf16 = fused_bf16 <= 2 * explicit_bf16 + 1e-3;
    std::printf("selftest: %s vs explicit: fp32 max rel. error %.2e (< 1e-4) %s; bf16 %.2e vs explicit bf16 %.2e %s\n", what.c_str(),
                fp32_error, pass_fp32 ? "ok" : "FAIL", fused_bf16, explicit_bf16, pass_bf16 ? "ok" : "FAIL");
    return pass_fp32 && pass_bf16;
}

/// Inference output (eval mode, no gradient): on the GPU the persistent columns then take their own kernel.
torch::Tensor infer_attention(RelativeAttention & attention, const torch::Tensor & x, const torch::Tensor & mem, const torch::Tensor & pos,
                              const torch::Tensor & keep, const torch::Device & device, bool bf16, bool fused) {
    set_fused_attention(fused);
    torch::NoGradGuard no_grad;
    AutocastGuard autocast(device, bf16);
    return attention->forward(x, mem, pos, keep, {}, {}, GateControl{}).out.to(torch::kFloat);
}

/// The inference path against the explicit one, at a small shape, at the reference layer's (d 512, 8 heads of 64,
/// 2048 persistent vectors, 192 tokens with 192 of memory) and at shapes that leave our kernel's tiles part-full
/// (lengths not multiples of 64, memory longer than the segment, the causal mask without same_length, no
/// persistent columns). In bf16 both LibTorch's fused kernels and our own kernel, where built, are judged.
bool check_inference(const torch::Device & device) {
    bool ok = true;
    struct Shape { int64_t D, H, dh, N, B, T, M; bool same_length; const char * name; };
    const Shape shapes[] = {Shape{64, 4, 16, 32, 3, 8, 8, true, "small"},
                            Shape{512, 8, 64, 2048, 2, 192, 192, true, "reference layer"},
                            Shape{192, 3, 64, 0, 2, 100, 37, false, "transformer-xl, causal, T 100, M 37"},
                            Shape{128, 4, 32, 48, 3, 70, 150, true, "T 70, M 150"},
                            Shape{256, 2, 128, 16, 1, 65, 65, true, "head_dim 128, T 65"}};
    KernelSwitchesGuard restore;
    const bool own_kernel = own_kernels_enabled();
    for (const Shape & shape : shapes) {
        RelativeAttention attention = attention_under_test(shape.D, shape.H, shape.dh, shape.N, device, shape.same_length);
        attention->eval();
        auto options = torch::TensorOptions().device(device);
        auto x = torch::randn({shape.B, shape.T, shape.D}, options), mem = torch::randn({shape.B, shape.M, shape.D}, options);
        auto pos = torch::randn({shape.T + shape.M, shape.D}, options);
        auto keep = attention_keep_mask(shape.T, shape.M, shape.same_length, device);
        auto infer = [&](bool bf16, bool fused) { return infer_attention(attention, x, mem, pos, keep, device, bf16, fused); };
        auto reference = infer(false, false);
        const double explicit_bf16 = relative_error(infer(true, false), reference);
        set_own_kernels(false);
        const double fp32_error = relative_error(infer(false, true), reference);
        const double fused_bf16 = relative_error(infer(true, true), reference);
        const std::string what = std::string("inference attention (") + shape.name + ", " + std::to_string(shape.N) + " persistent apart)";
        ok = judge(what, fp32_error, explicit_bf16, fused_bf16) && ok;
        set_own_kernels(own_kernel);
        // With persistent columns, our kernel seeded by each of their kernels: cuDNN's over all columns, cuDNN's over
        // two halves and over four quarters (joined by our kernel), and flash's.
        enum class Seed { cudnn, cudnn_halves, cudnn_quarters, flash };
        for (const Seed by : {Seed::cudnn, Seed::cudnn_halves, Seed::cudnn_quarters, Seed::flash}) {
            if (!own_kernel || (by != Seed::cudnn && shape.N == 0) || (by == Seed::cudnn_quarters && shape.N % 32 != 0)) continue;
            set_persistent_inference_cudnn_from(by == Seed::flash ? std::numeric_limits<int64_t>::max() : 0);
            set_persistent_inference_splits(by == Seed::cudnn_halves ? 2 : by == Seed::cudnn_quarters ? 4 : 1);
            const double kernel_bf16 = relative_error(infer(true, true), reference);
            const bool pass = kernel_bf16 <= 2 * explicit_bf16 + 1e-3;
            const char * seed = shape.N == 0                                     ? ""
                                : by == Seed::flash || persistent_cudnn_refused() ? ", persistent part by flash"
                                : by == Seed::cudnn                               ? ", persistent part by cuDNN"
                                : persistent_inference_split_refused()           ? ", persistent part by cuDNN (parts refused)"
                                : by == Seed::cudnn_halves                       ? ", persistent part by cuDNN in halves"
                                                                                  : ", persistent part by cuDNN in quarters";
            std::printf("selftest: inference attention (%s), our kernel bf16%s vs explicit fp32: max rel. error %.2e vs explicit bf16 %.2e %s\n",
                        shape.name, seed, kernel_bf16, explicit_bf16, pass ? "ok" : "FAIL");
            ok = pass && ok;
        }
    }
    return ok;
}

/// A whole All-attention layer at inference (layer norm of memory and segment, attention, residual), where our
/// kernels take both the norm and the attention, against the explicit path in fp32: in a bf16 model (as the benchmark
/// runs) and under bf16 autocast with fp32 weights (as evaluation during training runs), with the memory a strided
/// view of the previous segment's input, as the model carries it; then with the previous layer's output still to add.
bool check_layer_inference(const torch::Device & device) {
    KernelSwitchesGuard restore;
    const int64_t D = 512, H = 8, dh = 64, N = 2048, B = 3, T = 192, M = 96;
    TransformerLayer layer(TransformerLayerOptions(RelativeAttentionOptions(D, H, dh).persistent(N)));
    {
        torch::NoGradGuard no_grad;
        for (auto & p : layer->parameters()) if (p.dim() == 1) p.normal_(0, 0.3);   // gains, biases, u and v off their zeros
    }
    layer->to(device);
    layer->eval();
    auto options = torch::TensorOptions().device(device);
    auto previous = torch::randn({B, T, D}, options) * 2 + 0.5;
    auto memory = previous.narrow(1, T - M, M);                              // (B,M,D) view, batch stride T*D
    auto x = torch::randn({B, T, D}, options) * 2 - 0.5;
    auto pos = torch::randn({T + M, D}, options);
    auto keep = attention_keep_mask(T, M, true, device);
    // cached: the memory as the keys and values that the previous segment's forward cached (the model's way at
    // inference), where our kernel reads the memory's rows and the segment's from two places.
    auto run = [&](bool own, bool bf16_model, bool autocast, bool cached = false) {
        set_own_kernels(own);
        set_key_value_cache(cached);
        torch::NoGradGuard no_grad;
        AutocastGuard guard(device, autocast);
        const auto dtype = bf16_model ? torch::kBFloat16 : torch::kFloat;
        layer->to(dtype);
        auto layer_memory = memory.to(dtype);
        if (cached) {
            LayerOutputs cache;
            layer->forward(previous.to(dtype), torch::zeros({B, M, D}, options.dtype(dtype)), pos.to(dtype), keep, {}, &cache);
            layer_memory = cache.key_values;                                 // (B,M,2,H*dh)
        }
        auto out = layer->forward(x.to(dtype), layer_memory, pos.to(dtype), keep).to(torch::kFloat);
        layer->to(torch::kFloat);
        return out;
    };
    set_fused_attention(false);
    auto reference = run(false, false, false);
    const double explicit_bf16 = relative_error(run(false, true, false), reference);
    const double explicit_autocast = relative_error(run(false, false, true), reference);
    set_fused_attention(true);
    bool ok = true;
    for (const bool cached : {false, true}) {
        const double own_bf16 = relative_error(run(true, true, false, cached), reference);
        const double own_autocast = relative_error(run(true, false, true, cached), reference);
        const bool pass_bf16 = own_bf16 <= 2 * explicit_bf16 + 1e-3, pass_autocast = own_autocast <= 2 * explicit_autocast + 1e-3;
        std::printf("selftest: all-attention layer inference%s, our kernels vs explicit fp32: bf16 model %.2e (explicit %.2e) %s; "
                    "autocast %.2e (explicit %.2e) %s\n", cached ? " from cached keys and values" : "", own_bf16, explicit_bf16,
                    pass_bf16 ? "ok" : "FAIL", own_autocast, explicit_autocast, pass_autocast ? "ok" : "FAIL");
        ok = pass_bf16 && pass_autocast && ok;
    }
    // The previous layer's output handed over still to add (TransformerLayer::forward's pending): our norm kernel adds
    // it as it reads x, rounding the sum to bf16 as the add would, so the layer's result is the same bit for bit.
    {
        set_own_kernels(true);
        set_key_value_cache(true);
        torch::NoGradGuard no_grad;
        layer->to(torch::kBFloat16);
        const auto bf16 = options.dtype(torch::kBFloat16);
        LayerOutputs cache;
        layer->forward(previous.to(torch::kBFloat16), torch::zeros({B, M, D}, bf16), pos.to(torch::kBFloat16), keep, {}, &cache);
        const auto key_values = cache.key_values;
        auto x0 = x.to(torch::kBFloat16), addend = (torch::randn({B, T, D}, options) * 0.7).to(torch::kBFloat16);
        auto added = x0 + addend;
        auto whole = layer->forward(added, key_values, pos.to(torch::kBFloat16), keep);
        LayerContext handed_over;
        handed_over.pending = addend;
        handed_over.defer_residual = true;
        LayerOutputs deferred;
        auto input = layer->forward(x0, key_values, pos.to(torch::kBFloat16), keep, handed_over, &deferred);
        const auto still_to_add = deferred.pending;
        torch::Tensor sum;
        auto normed = normalize_sum(x0, addend, layer->norm, &sum);
        const bool kernel = normed.defined() && sum.defined() && torch::equal(sum, added);
        const double norm_error = kernel ? relative_error(normed.to(torch::kDouble), torch::layer_norm(added.to(torch::kDouble), {D},
                                                                    layer->norm->weight.to(torch::kDouble) + 1.0,
                                                                    layer->norm->bias.to(torch::kDouble), layer->norm->eps)) : INFINITY;
        const bool same = still_to_add.defined() && torch::equal(input, added) && torch::equal(input + still_to_add, whole);
        layer->to(torch::kFloat);
        const bool pass = kernel && norm_error < 1e-2 && same;
        std::printf("selftest: all-attention layer inference with the previous output added in its norm: kernel's sum equal to the add "
                    "%s, norm vs float64 %.2e (< 1e-2), layer output equal to adding first %s %s\n", kernel ? "yes" : "no", norm_error,
                    same ? "yes" : "no", pass ? "ok" : "FAIL");
        ok = pass && ok;
    }
    return ok;
}

/// Training attention with the persistent columns apart, through LibTorch's kernels (memory-efficient with the
/// content bias, flash or cuDNN over the persistent columns, each backward given the joined output and log-sum-exp), against
/// the same contract in fp32 tensor operations: forward and every gradient without dropout; with dropout, that the
/// backward replays the forward's masks: for the upstream gradient out itself, <out, out> = <dV, V> over both parts
/// (out is linear in the values for fixed masks; fresh masks would miss by tens of percent).
/// Tolerance 2.5e-2 of the largest magnitude: the kernels round probabilities and score gradients to bf16 (2^-9
/// relative) before sums of 128-384 terms; a wrong joined normaliser or correction term is off by O(1).
bool check_apart_training(const torch::Device & device, int64_t H, int64_t B, int64_t dh, bool model_layout, bool cudnn) {
    // The persistent part by cuDNN's kernels (the model takes them for many rows) or by flash's.
    KernelSwitchesGuard restore;
    set_persistent_cudnn_min_rows(cudnn ? 0 : std::numeric_limits<int64_t>::max());
    const int64_t T = 64, S = 128, N = 256;
    const double scale = 1.0 / std::sqrt((double) dh);
    auto options = torch::TensorOptions().device(device);
    auto bias = torch::randn({H, B, T, S}, options);
    for (int64_t i = 0; i < T; ++i) bias.select(2, i).narrow(-1, i + S - T + 1, T - 1 - i).fill_(-INFINITY);   // future keys
    // The model's layout: q, k, v are (H,B,L,dh) views of projections laid out (B,L,H,dh).
    auto rows = [&](int64_t L) { return model_layout ? torch::randn({B, L, H, dh}, options) : torch::randn({H, B, L, dh}, options); };
    auto as_heads = [&](const torch::Tensor & t) { return model_layout ? t.permute({2, 0, 1, 3}) : t; };
    // q, the content columns' own query (the model's q + u), k, v, the bias, the persistent keys and values.
    const std::vector<torch::Tensor> inputs = {rows(T), rows(T), rows(S), rows(S), bias, torch::randn({H, N, dh}, options) * scale,
                                               torch::randn({H, N, dh}, options)};
    auto upstream = torch::randn({H, B, T, dh}, options);
    auto leaves = [&](torch::ScalarType dtype) {
        std::vector<torch::Tensor> result;
        for (const auto & t : inputs) result.push_back(t.to(dtype).detach().requires_grad_(true));
        return result;
    };
    auto apart = [&](const std::vector<torch::Tensor> & x, double dropout, AttentionParts parts) {
        return trainable_apart_attention(as_heads(x[0]), as_heads(x[1]), as_heads(x[2]), as_heads(x[3]), x[4], x[5], x[6], scale, dropout,
                                         parts);
    };
    auto run = [&](torch::ScalarType dtype, AttentionParts parts) {
        auto x = leaves(dtype);
        auto out = apart(x, 0.0, parts);
        (out.to(torch::kFloat) * upstream).sum().backward();
        Outputs result;
        result.values.push_back(out.detach().to(torch::kFloat));
        for (const auto & t : x) result.values.push_back(t.grad().to(torch::kFloat));
        // The bias's gradient is defined on its kept entries: the kernel skips the key tiles past the diagonal.
        result.values[5] = result.values[5].masked_fill(torch::isinf(bias), 0);
        return result;
    };
    const auto reference = run(torch::kFloat, AttentionParts::math);
    const double math_bf16 = worst_error(run(torch::kBFloat16, AttentionParts::math), reference);
    const auto kernels = run(torch::kBFloat16, AttentionParts::kernels);
    const double kernels_bf16 = worst_error(kernels, reference);
    std::string non_finite;
    const char * names[] = {"out", "dq", "dcontent_q", "dk", "dv", "dbias", "dkeys", "dvalues"};
    for (size_t i = 0; i < kernels.values.size(); ++i)
        if (!torch::isfinite(kernels.values[i]).all().item<bool>()) non_finite += std::string(" ") + names[i];
    const bool pass = kernels_bf16 < 2.5e-2 && non_finite.empty();
    std::printf("selftest: training attention (H %ld, B %ld, dh %ld, %s layout), persistent columns apart (kernels, bf16; persistent part "
                "by %s) vs fp32 math: forward and 7 gradients max rel. error %.2e (< 2.5e-2; the math in bf16: %.2e)%s%s %s\n", (long) H,
                (long) B, (long) dh, model_layout ? "the model's" : "contiguous", cudnn && !persistent_cudnn_refused() ? "cuDNN" : "flash",
                kernels_bf16, math_bf16, non_finite.empty() ? "" : "; not finite:", non_finite.c_str(), pass ? "ok" : "FAIL");

    auto x = leaves(torch::kBFloat16);
    auto out = apart(x, 0.2, AttentionParts::kernels);
    auto out_f = out.detach().to(torch::kFloat);
    (out.to(torch::kFloat) * out_f).sum().backward();
    const double forward_side = (out_f * out_f).sum().item<double>();
    const double backward_side = (x[3].grad().to(torch::kFloat) * x[3].detach().to(torch::kFloat)).sum().item<double>()
                                 + (x[6].grad().to(torch::kFloat) * x[6].detach().to(torch::kFloat)).sum().item<double>();
    const double mismatch = std::abs(forward_side - backward_side) / forward_side;
    double dropped;
    {
        torch::NoGradGuard no_grad;
        dropped = relative_error(out_f, apart(x, 0.0, AttentionParts::kernels).to(torch::kFloat));
    }
    const bool replayed = mismatch < 1e-2 && dropped > 0.05;
    std::printf("selftest: training attention with dropout 0.2 (kernels): <out,out> vs <dV,V> rel. difference %.2e (< 1e-2), "
                "output moved %.2f by dropout (> 0.05) %s\n", mismatch, dropped, replayed ? "ok" : "FAIL");
    return pass && replayed;
}

/// One training step of a small All-attention model at the numerics check's shapes (4 layers of 4 heads of 32, 128
/// persistent vectors, 64 tokens after 64 of zero memory, batch 16, no dropout): under bf16 autocast with the fused
/// attention against the explicit path in fp32. The loss and every gradient must be finite; the loss within 1e-2
/// nats and the gradients no further from the fp32 ones than twice the explicit bf16 path's own error (+ 1e-2).
bool check_training_step(const torch::Device & device) {
    const ModelConfig m = small_training_config();
    LanguageModel model(m);
    model->to(device);
    model->train();
    auto tokens = torch::randint(0, m.vocab_size, {16, m.tgt_len + 1}, torch::TensorOptions().dtype(torch::kLong).device(device));
    auto input = tokens.narrow(1, 0, m.tgt_len), target = tokens.narrow(1, 1, m.tgt_len);
    std::vector<std::string> names;
    for (const auto & p : model->named_parameters()) names.push_back(p.key());
    auto step = [&](bool fused, bool bf16, double & loss) {
        set_fused_attention(fused);
        model->zero_grad();
        torch::Tensor objective;
        {
            AutocastGuard autocast(device, bf16);
            objective = -model->forward(input, target, {}).target_log_prob.mean();
        }
        objective.backward();
        loss = objective.item<double>();
        Outputs grads;
        for (const auto & p : model->parameters()) grads.values.push_back(p.grad().defined() ? p.grad().to(torch::kFloat) : torch::zeros_like(p));
        return grads;
    };
    double loss_fp32 = 0, loss_explicit = 0, loss_fused = 0;
    const auto reference = step(false, false, loss_fp32);
    const double explicit_error = worst_error(step(false, true, loss_explicit), reference);
    const auto fused = step(true, true, loss_fused);
    std::string non_finite;
    int non_finite_count = 0;
    for (size_t i = 0; i < fused.values.size(); ++i)
        if (!torch::isfinite(fused.values[i]).all().item<bool>() && ++non_finite_count <= 4) non_finite += " " + names[i];
    const double fused_error = worst_error(fused, reference);
    const bool pass = std::isfinite(loss_fused) && non_finite.empty() && std::abs(loss_fused - loss_fp32) < 1e-2
                      && fused_error <= 2 * explicit_error + 1e-2;
    std::printf("selftest: training step of a 4-layer all-attention model, fused bf16 vs explicit fp32: loss %.5f vs %.5f; gradients max "
                "rel. error %.2e (explicit bf16 %.2e)%s %s\n", loss_fused, loss_fp32, fused_error, explicit_error,
                non_finite.empty() ? "" : (", " + std::to_string(non_finite_count) + " gradients not finite:" + non_finite).c_str(), pass ? "ok" : "FAIL");
    return pass;
}

/// The fused training attention (forward and every gradient) and the inference path, against the explicit one.
bool check_fused_attention(const torch::Device & device) {
    KernelSwitchesGuard restore;
    bool ok = true;
    for (const int64_t persistent : {int64_t(32), int64_t(0)}) {
        const int64_t D = 64, H = 4, dh = 16, B = 3, T = 8, M = 8;
        RelativeAttention attention = attention_under_test(D, H, dh, persistent, device);
        attention->train();
        auto options = torch::TensorOptions().device(device);
        auto x = torch::randn({B, T, D}, options), mem = torch::randn({B, M, D}, options), pos = torch::randn({T + M, D}, options);
        auto keep = attention_keep_mask(T, M, true, device);
        auto upstream = torch::randn({B, T, D}, options);
        auto reference = run_attention(attention, x, mem, pos, keep, upstream, device, false, false);
        const double fp32_error = worst_error(run_attention(attention, x, mem, pos, keep, upstream, device, false, true), reference);
        const double explicit_bf16 = worst_error(run_attention(attention, x, mem, pos, keep, upstream, device, true, false), reference);
        const double fused_bf16 = worst_error(run_attention(attention, x, mem, pos, keep, upstream, device, true, true), reference);
        const std::string what = std::string("attention (") + (persistent ? "all-attention, 32 persistent" : "transformer-xl") + ") fused";
        ok = judge(what, fp32_error, explicit_bf16, fused_bf16) && ok;
    }
    if (device.is_cuda()) {
        ok = check_apart_training(device, 2, 3, 64, false, false) && ok;
        ok = check_apart_training(device, 4, 16, 32, true, true) && ok;
        ok = check_apart_training(device, 4, 16, 32, false, false) && ok;
        ok = check_apart_training(device, 2, 3, 64, true, true) && ok;
        ok = check_training_step(device) && ok;
    }
    ok = check_inference(device) && ok;
    if (own_kernels_built()) ok = check_layer_inference(device) && ok;
    return ok;
}

} // namespace

int selftest_command(const std::string & device_name) {
    torch::Device device = torch::kCPU;
    try {
        device = device_resolve(device_name);
    } catch (const std::exception & e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 2;
    }
    torch::manual_seed(7);
    bool ok = check_loss(device);
    if (device.is_cuda()) ok = check_adaptive_input(device) && ok;
    if (device.is_cuda()) {
        if (own_kernels_enabled()) {
            ok = check_log_softmax_at(device) && ok;
            ok = check_trainable_tail(device) && ok;
            ok = check_lamb_kernels(device) && ok;
            ok = check_content_bias(device) && ok;
            ok = check_content_attention(device) && ok;
            ok = check_gated_weight(device) && ok;
            ok = check_biased_product(device) && ok;
            ok = check_plus_head_bias(device) && ok;
            ok = check_attention_merge(device) && ok;
            ok = check_segment_norm_training(device) && ok;
        } else {
            std::printf("selftest: log_softmax_at's kernels are not built or are off here; LibTorch's path is the CPU tests' subject\n");
        }
    }
    if (fused_attention_available(device)) {
        ok = check_fused_attention(device) && ok;
        if (device.is_cuda()) {
            // cuDNN's persistent part (which the model takes from batch 64 of 192 tokens on) replayed from graphs:
            // its dropout must draw new masks each replay, as eager steps do.
            KernelSwitchesGuard restore;
            set_persistent_cudnn_min_rows(0);
            ok = check_layer_graph(device) && ok;
        }
    } else {
        std::printf("selftest: fused attention is not used on %s with this LibTorch; the explicit path is the CPU tests' subject\n",
                    device.str().c_str());
    }
    std::printf("selftest: %s\n", ok ? "all checks passed" : "FAILED");
    return ok ? 0 : 1;
}

} // namespace studio
