// `studio selftest`: numerical checks that need the machine's own device, above all the fused GPU attention
// against the explicit reference computation (forward and every gradient; and the inference path, whose persistent
// columns take their own kernel), which CPU tests cannot reach.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "adaptive_io.h"
#include "commands.h"
#include "device.h"
#include "language_model.h"
#include "rel_attention.h"

namespace studio {

namespace {

struct Outputs {
    std::vector<torch::Tensor> values;   // the output, then the gradients of the input and of every parameter
};

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

/// Largest error of a tensor relative to the reference's largest magnitude.
double relative_error(const torch::Tensor & a, const torch::Tensor & reference) {
    return (a - reference).abs().max().item<double>() / (reference.abs().max().item<double>() + 1e-12);
}

/// Largest relative error over all tensors.
double worst_error(const Outputs & a, const Outputs & reference) {
    double worst = 0;
    for (size_t i = 0; i < a.values.size(); ++i) worst = std::max(worst, relative_error(a.values[i], reference.values[i]));
    return worst;
}

/// An attention layer on the device with non-zero u/v biases: the fused paths must remove u . mem_k exactly.
RelativeAttention attention_under_test(int64_t D, int64_t H, int64_t dh, int64_t persistent, const torch::Device & device) {
    RelativeAttention attention(RelativeAttentionOptions(D, H, dh).persistent(persistent));
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

/// The inference path against the explicit one, at a small shape and at the reference layer's (d 512, 8 heads of 64,
/// 2048 persistent vectors, 192 tokens with 192 of memory).
bool check_inference(const torch::Device & device) {
    bool ok = true;
    struct Shape { int64_t D, H, dh, N, B, T, M; const char * name; };
    for (const Shape & shape : {Shape{64, 4, 16, 32, 3, 8, 8, "small"}, Shape{512, 8, 64, 2048, 2, 192, 192, "reference layer"}}) {
        RelativeAttention attention = attention_under_test(shape.D, shape.H, shape.dh, shape.N, device);
        attention->eval();
        auto options = torch::TensorOptions().device(device);
        auto x = torch::randn({shape.B, shape.T, shape.D}, options), mem = torch::randn({shape.B, shape.M, shape.D}, options);
        auto pos = torch::randn({shape.T + shape.M, shape.D}, options);
        auto keep = attention_keep_mask(shape.T, shape.M, true, device);
        auto reference = infer_attention(attention, x, mem, pos, keep, device, false, false);
        const double fp32_error = relative_error(infer_attention(attention, x, mem, pos, keep, device, false, true), reference);
        const double explicit_bf16 = relative_error(infer_attention(attention, x, mem, pos, keep, device, true, false), reference);
        const double fused_bf16 = relative_error(infer_attention(attention, x, mem, pos, keep, device, true, true), reference);
        const std::string what = std::string("inference attention (") + shape.name + ", " + std::to_string(shape.N) + " persistent apart)";
        ok = judge(what, fp32_error, explicit_bf16, fused_bf16) && ok;
    }
    return ok;
}

/// The adaptive softmax's log-probs on the device against the CPU in float64, with an odd-sized last cluster (the
/// GPU pads it) and targets in every cluster. fp32 must agree to rounding; bf16 is compared with the same bf16-rounded
/// weights and hidden states on the CPU: the device rounds its intermediate products to bf16, a few hundredths of a
/// nat at these magnitudes, where a wrong padding or row order is off by whole nats.
bool check_loss(const torch::Device & device) {
    bool ok = true;
    AdaptiveIO io(AdaptiveIOOptions(3001, 64).cutoffs({1000, 2000}).div_value(4));
    {
        torch::NoGradGuard no_grad;
        for (auto & p : io->parameters()) p.uniform_(-0.3, 0.3);
    }
    io->eval();
    auto hidden = torch::randn({256, 64});
    auto target = torch::randint(0, 3001, {256}, torch::kLong);
    for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
        torch::NoGradGuard no_grad;
        io->to(torch::kCPU, dtype);
        auto rounded_hidden = hidden.to(dtype);
        io->to(torch::kCPU, torch::kDouble);
        auto reference = io->target_log_prob(rounded_hidden.to(torch::kDouble), target);
        io->to(device, dtype);
        auto got = io->target_log_prob(rounded_hidden.to(device), target.to(device)).to(torch::kCPU, torch::kDouble);
        const double error = (got - reference).abs().max().item<double>();
        const double limit = dtype == torch::kFloat ? 1e-4 : 0.05;
        const bool pass = std::isfinite(error) && error < limit;
        std::printf("selftest: adaptive softmax (3001 words, last cluster 1001) %s on %s vs CPU float64: max abs error %.2e (< %.0e) %s\n",
                    dtype == torch::kFloat ? "fp32" : "bf16", device.str().c_str(), error, limit, pass ? "ok" : "FAIL");
        ok = pass && ok;
        io->to(torch::kCPU, torch::kFloat);
    }
    return ok;
}

/// The fused training attention (forward and every gradient) and the inference path, against the explicit one.
bool check_fused_attention(const torch::Device & device) {
    const bool previous = fused_attention_enabled();
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
    ok = check_inference(device) && ok;
    set_fused_attention(previous);
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
    if (fused_attention_available(device)) {
        ok = check_fused_attention(device) && ok;
    } else {
        std::printf("selftest: fused attention is not used on %s with this LibTorch; the explicit path is the CPU tests' subject\n",
                    device.str().c_str());
    }
    std::printf("selftest: %s\n", ok ? "all checks passed" : "FAILED");
    return ok ? 0 : 1;
}

} // namespace studio
