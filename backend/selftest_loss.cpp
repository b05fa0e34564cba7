// `studio selftest`'s checks of the loss: the adaptive softmax on the device against float64 on the CPU, and
// log_softmax_at's CUDA kernels (the loss's log-softmax over the head and each tail, forward and gradient) and the
// training tail's kernels against the same computation in float64.
#include "selftest_checks.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "adaptive_io.h"
#include "device.h"
#include "log_softmax_at.h"
#include "rel_attention.h"
#include "tail_log_prob.h"

namespace studio {

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
    KernelSwitchesGuard restore;
    const bool kernels_on = own_kernels_enabled();
    std::vector<bool> kernel_choices{false};
    if (kernels_on) kernel_choices.push_back(true);   // the tails and head's log-softmax through our kernels, and through LibTorch's
    for (const bool own : kernel_choices)
    for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
        set_own_kernels(own);
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
        std::printf("selftest: adaptive softmax (3001 words, last cluster 1001) %s on %s%s vs CPU float64: max abs error %.2e (< %.0e) %s\n",
                    dtype == torch::kFloat ? "fp32" : "bf16", device.str().c_str(), own ? ", by our kernels" : "", error, limit,
                    pass ? "ok" : "FAIL");
        ok = pass && ok;
        io->to(torch::kCPU, torch::kFloat);
    }
    if (kernels_on) {
        // At the reference's size (WikiText-103's 267,735 words; a 160,000-word tail of width 32), where the kernel
        // splits each row's words over many blocks: our tails against LibTorch's product and softmax. fp32 takes the
        // kernel's fp32 path, bf16 its tensor-core path; LibTorch's forms the same products in fp32. The head's
        // log-softmax takes log_softmax_at's kernel or LibTorch's alike.
        AdaptiveIO big(AdaptiveIOOptions(267735, 512).cutoffs({20000, 40000, 200000}).div_value(4));
        big->eval();
        torch::NoGradGuard no_grad;
        auto rows = torch::randn({4096, 512}, torch::TensorOptions().device(device));
        auto words = torch::randint(0, 267735, {4096}, torch::TensorOptions().dtype(torch::kLong).device(device));
        // fp32 weights under bf16 autocast (evaluation during training): our kernel multiplies the bf16 rows by the
        // fp32 weights, LibTorch's product rounds the weights to bf16 too, so both are judged against float64.
        // First, while the weights are still fp32 (the loop below rounds them to bf16).
        big->to(device, torch::kDouble);
        auto exact = big->target_log_prob(rows.to(torch::kDouble), words);
        big->to(device, torch::kFloat);
        double errors[2];
        for (const bool own : {false, true}) {
            AutocastGuard autocast(device, true);
            set_own_kernels(own);
            errors[own] = (big->target_log_prob(rows, words).to(torch::kDouble) - exact).abs().max().item<double>();
        }
        const bool pass_autocast = std::isfinite(errors[1]) && errors[1] <= errors[0] + 1e-4;
        std::printf("selftest: adaptive softmax (267735 words) under autocast on %s vs float64: max abs error, by our kernels %.2e, "
                    "by LibTorch's %.2e %s\n", device.str().c_str(), errors[1], errors[0], pass_autocast ? "ok" : "FAIL");
        ok = pass_autocast && ok;
        for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
            big->to(device, dtype);
            set_own_kernels(false);
            auto libtorch = big->target_log_prob(rows.to(dtype), words);
            set_own_kernels(true);
            auto ours = big->target_log_prob(rows.to(dtype), words);
            const double error = (ours - libtorch).abs().max().item<double>();
            const bool pass = std::isfinite(error) && error < 1e-3;
            std::printf("selftest: adaptive softmax (267735 words) %s on %s, our kernels vs LibTorch's: max abs error %.2e (< 1e-03) %s\n",
                        dtype == torch::kFloat ? "fp32" : "bf16", device.str().c_str(), error, pass ? "ok" : "FAIL");
            ok = pass && ok;
        }
    }
    return ok;
}

/// The adaptive input's training path on the device (every cluster gathers every token, one product over the clusters
/// side by side) against the CPU's (each cluster's own tokens found by nonzero()) in float64: the embedding, and the
/// gradients of every table and projection. Words at each cluster's first and last row, and repeated words.
bool check_adaptive_input(const torch::Device & device) {
    AdaptiveIO io(AdaptiveIOOptions(3001, 64).cutoffs({1000, 2000}).div_value(4));
    {
        torch::NoGradGuard no_grad;
        for (auto & p : io->parameters()) p.uniform_(-0.3, 0.3);
    }
    io->train();
    auto ids = torch::randint(0, 3001, {8, 40}, torch::kLong);
    ids[0].narrow(0, 0, 8).copy_(torch::tensor({0, 999, 1000, 1999, 2000, 3000, 3000, 0}, torch::kLong));
    const auto upstream = torch::randn({8, 40, 64}, torch::kDouble);
    auto run = [&](const torch::Device & on, torch::ScalarType dtype) {
        io->to(on, dtype);
        auto embedded = io->embed(ids.to(on), 0.0);                                      // (B,T,D)
        (embedded * upstream.to(on, dtype)).sum().backward();
        std::vector<torch::Tensor> results{embedded.detach().to(torch::kCPU, torch::kDouble)};
        for (auto & p : io->parameters()) {
            results.push_back(p.grad().defined() ? p.grad().to(torch::kCPU, torch::kDouble) : torch::zeros_like(p, torch::kDouble).cpu());
            p.mutable_grad() = torch::Tensor();
        }
        return results;
    };
    const auto reference = run(torch::kCPU, torch::kDouble), got = run(device, torch::kFloat);
    double forward_error = (got[0] - reference[0]).abs().max().item<double>(), gradient_error = 0;
    for (size_t i = 1; i < got.size(); ++i) gradient_error = std::max(gradient_error, (got[i] - reference[i]).abs().max().item<double>());
    // Under autocast the products run in bf16, but the embedding stays in the tables' fp32, as the residual stream does.
    torch::ScalarType autocast_dtype;
    {
        torch::NoGradGuard no_grad;
        AutocastGuard autocast(device, true);
        autocast_dtype = io->embed(ids.to(device), 0.0).scalar_type();
    }
    io->to(torch::kCPU, torch::kFloat);
    const bool pass = std::isfinite(forward_error) && std::isfinite(gradient_error) && forward_error < 1e-4 && gradient_error < 1e-3
                      && autocast_dtype == torch::kFloat;
    std::printf("selftest: adaptive input (3001 words in 3 clusters) training path fp32 on %s vs the CPU's in float64: max abs error "
                "%.2e (< 1e-04), gradients %.2e (< 1e-03); under autocast in %s (fp32) %s\n",
                device.str().c_str(), forward_error, gradient_error, c10::toString(autocast_dtype), pass ? "ok" : "FAIL");
    return pass;
}

/// log_softmax_at by our kernels against log_softmax + gather in float64, forward and gradient (autograd, under a
/// random upstream gradient), for fp32 and bf16 logits; bf16 against the reference of the same bf16-rounded logits,
/// so only the kernels' own arithmetic (fp32 sums, the gradient rounded to bf16 once: 2^-9 relative) separates them.
/// Shapes: tiny (where a thread sees only -inf columns); an odd width (read one by one); the head's 20,000 words + 3
/// clusters + 5 -inf padding columns; 160,000 words; rows narrowed from wider ones (a row stride past the width:
/// 16-byte rows with a remainder read one by one, then rows starting off alignment, all read one by one).
bool check_log_softmax_at(const torch::Device & device) {
    struct Shape { int64_t rows, cols, stride, offset, padding; const char * name; };   // a narrow(1, offset, cols) of (rows, stride)
    const Shape shapes[] = {Shape{5, 8, 8, 0, 4, "5 x 8, last 4 columns -inf"},
                            Shape{37, 1003, 1003, 0, 5, "37 x 1003, last 5 columns -inf"},
                            Shape{300, 20008, 20008, 0, 5, "300 x 20008, last 5 columns -inf"},
                            Shape{64, 160000, 160000, 0, 0, "64 x 160000"},
                            Shape{41, 1003, 1536, 0, 0, "41 x 1003 of rows 1536 wide"},
                            Shape{23, 997, 1100, 3, 4, "23 x 997 of rows 1100 wide from column 3, last 4 columns -inf"}};
    bool ok = true;
    auto options = torch::TensorOptions().device(device);
    for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
        const bool bf16 = dtype == torch::kBFloat16;
        const double forward_limit = bf16 ? 1e-3 : 1e-4, gradient_limit = bf16 ? 1e-2 : 1e-4;
        for (const Shape & shape : shapes) {
            auto wide = torch::randn({shape.rows, shape.stride}, options) * 3;
            const int64_t first_padding = shape.offset + shape.cols - shape.padding;             // in the wide rows
            if (shape.padding) wide.narrow(1, first_padding, shape.padding).fill_(-std::numeric_limits<double>::infinity());
            wide = wide.to(dtype);                                                              // the reference reads these values
            auto column = torch::randint(0, shape.cols - shape.padding, {shape.rows}, options.dtype(torch::kLong));   // (n,)
            auto upstream = torch::randn({shape.rows}, options);                                // (n,)

            auto leaf = wide.detach().requires_grad_(true);
            auto logits = leaf.narrow(1, shape.offset, shape.cols);                             // (n,V), row stride `stride`
            const bool by_kernel = log_softmax_at_kernel_takes(logits);
            auto got = log_softmax_at(logits, column);                                          // (n,)
            (got * upstream).sum().backward();
            const bool float_out = got.scalar_type() == torch::kFloat;
            auto grad = leaf.grad().to(torch::kDouble);                                         // (n, stride)

            auto exact_leaf = wide.detach().to(torch::kDouble).requires_grad_(true);
            auto exact = torch::log_softmax(exact_leaf.narrow(1, shape.offset, shape.cols), 1).gather(1, column.unsqueeze(1)).squeeze(1);
            (exact * upstream.to(torch::kDouble)).sum().backward();
            const auto & exact_grad = exact_leaf.grad();

            const double forward_error = (got.detach().to(torch::kDouble) - exact).abs().max().item<double>();
            const double gradient_error = relative_error(grad, exact_grad);
            // -inf columns: probability 0, so gradient exactly 0 (NaN would fail the comparison above too).
            const bool padding_zero = shape.padding == 0
                                      || grad.narrow(1, first_padding, shape.padding).abs().max().item<double>() == 0;
            const bool pass = by_kernel && float_out && padding_zero && std::isfinite(forward_error) && std::isfinite(gradient_error)
                              && forward_error < forward_limit && gradient_error < gradient_limit;
            std::printf("selftest: log_softmax_at (%s) %s on %s%s vs float64: forward max abs error %.2e (< %.0e), gradient max rel. error "
                        "%.2e (< %.0e)%s%s %s\n", shape.name, bf16 ? "bf16" : "fp32", device.str().c_str(),
                        by_kernel ? " by our kernels" : ", NOT by our kernels", forward_error, forward_limit, gradient_error, gradient_limit,
                        float_out ? "" : ", output not float32", padding_zero ? "" : ", -inf columns got a gradient", pass ? "ok" : "FAIL");
            ok = pass && ok;
        }
    }
    return ok;
}

/// The training tail's kernels (trainable_tail_log_prob: no logits kept, each formed again for the gradients) against
/// log_softmax(h W^T + b)[column] in float64 from the same bf16-rounded operands, under a random upstream gradient:
/// forward, and the gradients of the bf16 rows and of the fp32 weight and bias. Shapes: each tail width (8, 32, 128)
/// and both ways the kernels write their results (added by split walks: few tiles; stored by whole walks: the
/// 160,000-word tail's words).
bool check_trainable_tail(const torch::Device & device) {
    struct Shape { int64_t rows, words, dim; };
    const Shape shapes[] = {Shape{37, 1003, 8}, Shape{300, 20008, 32}, Shape{129, 5000, 128}, Shape{1000, 160000, 32}, Shape{70, 3000, 20}};
    bool ok = true;
    torch::AutoGradMode grad_on(true);
    struct SettingRestored {
        const std::string previous = tail_gradient_setting();
        ~SettingRestored() { set_tail_gradient_setting(previous); }
    } restore;
    set_tail_gradient_setting("kernels");   // whatever STUDIO_TAIL_GRADIENT says
    auto options = torch::TensorOptions().device(device);
    for (const Shape & shape : shapes) {
        auto rows = (torch::randn({shape.rows, shape.dim}, options) * 2).to(torch::kBFloat16).requires_grad_(true);
        auto weight = (torch::randn({shape.words, shape.dim}, options) * 0.5).requires_grad_(true);
        auto bias = (torch::randn({shape.words}, options) * 0.5).requires_grad_(true);
        auto column = torch::randint(0, shape.words, {shape.rows}, options.dtype(torch::kLong));
        auto upstream = torch::randn({shape.rows}, options);
        auto got = trainable_tail_log_prob(rows, weight, bias, column);                          // (n,), undefined if not taken
        std::string verdict;
        bool pass = got.defined();
        if (got.defined()) {
            (got * upstream).sum().backward();
            auto exact_rows = rows.detach().to(torch::kDouble).requires_grad_(true);
            auto exact_weight = weight.detach().to(torch::kBFloat16).to(torch::kDouble).requires_grad_(true);
            auto exact_bias = bias.detach().to(torch::kBFloat16).to(torch::kDouble).requires_grad_(true);
            auto logits = torch::addmm(exact_bias, exact_rows, exact_weight.t());                   // (n, words)
            auto exact = torch::log_softmax(logits, 1).gather(1, column.unsqueeze(1)).squeeze(1);
            (exact * upstream.to(torch::kDouble)).sum().backward();
            const double forward_error = (got.detach().to(torch::kDouble) - exact).abs().max().item<double>();
            const double rows_error = relative_error(rows.grad().to(torch::kDouble), exact_rows.grad());
            const double weight_error = relative_error(weight.grad().to(torch::kDouble), exact_weight.grad());
            const double bias_error = relative_error(bias.grad().to(torch::kDouble), exact_bias.grad());
            pass = got.scalar_type() == torch::kFloat && rows.grad().scalar_type() == torch::kBFloat16
                   && weight.grad().scalar_type() == torch::kFloat && std::isfinite(forward_error) && forward_error < 1e-3
                   && std::isfinite(rows_error) && rows_error < 1e-2 && std::isfinite(weight_error) && weight_error < 1e-2
                   && std::isfinite(bias_error) && bias_error < 1e-2;
            char text[160];
            std::snprintf(text, sizeof text, "forward max abs error %.2e (< 1e-03), gradients of rows, weight, bias max rel. error %.2e, %.2e, "
                          "%.2e (< 1e-02)", forward_error, rows_error, weight_error, bias_error);
            verdict = text;
        } else {
            verdict = "the kernels did not take the operands";
        }
        std::printf("selftest: training tail log-prob (%lld rows, %lld words, width %lld) by our kernels on %s vs float64: %s %s\n",
                    (long long) shape.rows, (long long) shape.words, (long long) shape.dim, device.str().c_str(), verdict.c_str(),
                    pass ? "ok" : "FAIL");
        ok = pass && ok;
    }
    return ok;
}

} // namespace studio
