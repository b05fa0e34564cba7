// `studio selftest`'s check of training's content columns by our kernels (content_attention.h).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "apart_attention.h"
#include "content_attention.h"
#include "content_bias.h"
#include "language_model.h"   // attention_keep_mask
#include "selftest_checks.h"

namespace studio {

namespace {

/// The shapes of one case: batch rows, heads, head size, segment and memory lengths.
struct ContentCase {
    int64_t B, H, dh, T, M;
    double dropout;
};

/// (B,H,L,dh) views of random bf16 rows laid out as the model's projections, (B,L,H,dh).
torch::Tensor model_rows(int64_t B, int64_t H, int64_t L, int64_t dh, const torch::Device & device) {
    return torch::randn({B, L, H, dh}, torch::TensorOptions().device(device)).to(torch::kBFloat16).permute({0, 2, 1, 3});
}

/// The kernels' forward and backward against float64, written out: scores from the shifted position term, the
/// same-length mask, the kernels' own keep mask, and the join with a given persistent part.
bool check_kernels_case(const torch::Device & device, const ContentCase & c) {
    const int64_t S = c.T + c.M, first = (c.T - 1) / 8 * 8, P = S - first;
    const double scale = 1.0 / std::sqrt((double) c.dh);
    auto options = torch::TensorOptions().device(device);
    auto q_u = model_rows(c.B, c.H, c.T, c.dh, device), q_v = model_rows(c.B, c.H, c.T, c.dh, device);
    auto k = model_rows(c.B, c.H, S, c.dh, device), val = model_rows(c.B, c.H, S, c.dh, device);
    auto r = torch::randn({S, c.H, c.dh}, options).to(torch::kBFloat16).transpose(0, 1).narrow(1, first, P);   // (H,P,dh)
    // A persistent part as the model's comes: rows (1,H,B*T,dh) and their log-sum-exp, of the content scores' size.
    auto persistent_out = torch::randn({1, c.H, c.B * c.T, c.dh}, options).to(torch::kBFloat16);
    auto persistent_lse = torch::randn({1, c.H, c.B * c.T}, options) + 3.0;
    auto upstream = model_rows(c.B, c.H, c.T, c.dh, device);

    auto joined = content_attention_forward(q_u, q_v, k, val, r, first, persistent_out, persistent_lse, scale, c.dropout);
    torch::Tensor keep;                                                                          // (B,H,T,S): the mask it drew
    if (c.dropout > 0) keep = content_attention_keep_mask(joined.rng, c.B, c.H, c.T, S, c.dropout);
    auto grads = content_attention_backward(upstream, q_u, q_v, k, val, r, first, joined, scale, c.dropout);
    auto grad_position = grads.position.view({c.H, c.B * c.T, P}).to(torch::kDouble);
    auto rows_of = [&](const torch::Tensor & t) { return t.transpose(0, 1).reshape({c.H, c.B * c.T, c.dh}).to(torch::kDouble); };
    auto grad_q_v = torch::matmul(grad_position, r.to(torch::kDouble)).view({c.H, c.B, c.T, c.dh}).transpose(0, 1);
    auto grad_r = torch::matmul(grad_position.transpose(1, 2), rows_of(q_v));

    // The reference in float64.
    auto leaf = [](const torch::Tensor & t) { return t.to(torch::kDouble).detach().requires_grad_(true); };
    auto q_u64 = leaf(q_u), q_v64 = leaf(q_v), k64 = leaf(k), v64 = leaf(val), r64 = leaf(r);
    auto i = torch::arange(c.T, options.dtype(torch::kLong)).view({c.T, 1}), j = torch::arange(S, options.dtype(torch::kLong)).view({1, S});
    auto column = j + (c.T - 1 - first) - i;                                                    // (T,S): the position row read
    auto visible = (j >= i) & (j <= i + c.M);
    auto position = torch::matmul(q_v64, r64.transpose(1, 2).unsqueeze(0));                    // (B,H,T,P)
    auto shifted = position.gather(-1, column.clamp(0, P - 1).expand({c.B, c.H, c.T, S}));     // (B,H,T,S)
    auto scores = ((torch::matmul(q_u64, k64.transpose(-1, -2)) + shifted) * scale).masked_fill(visible.logical_not(), -INFINITY);
    auto content_lse = torch::logsumexp(scores, -1);                                             // (B,H,T)
    auto probs = torch::exp(scores - content_lse.unsqueeze(-1));
    if (c.dropout > 0)
        probs = probs * keep.to(torch::kDouble) / (1 - c.dropout);
    auto content_out = torch::matmul(probs, v64);
    auto p_out = persistent_out.to(torch::kDouble).view({c.H, c.B, c.T, c.dh}).transpose(0, 1);
    auto p_lse = persistent_lse.to(torch::kDouble).view({c.H, c.B, c.T}).transpose(0, 1);
    auto lse = torch::logaddexp(content_lse, p_lse);
    auto share = torch::exp(content_lse - lse).unsqueeze(-1);
    auto out = share * content_out + (1 - share) * p_out;
    (out * upstream.to(torch::kDouble)).sum().backward();

    const std::vector<std::pair<const char *, double>> errors = {
        {"out", relative_error(joined.out, out.detach())},
        {"lse", relative_error(joined.lse, lse.detach())},
        {"d(q+u)", relative_error(grads.q_u, q_u64.grad())},
        {"d(q+v)", relative_error(grad_q_v, q_v64.grad())},
        {"dk", relative_error(grads.k, k64.grad())},
        {"dv", relative_error(grads.v, v64.grad())},
        {"dr", relative_error(grad_r, r64.grad())}};
    double worst = 0;
    std::string listed;
    for (const auto & [name, error] : errors) {
        worst = std::isfinite(error) ? std::max(worst, error) : INFINITY;
        char text[48];
        std::snprintf(text, sizeof text, " %s %.1e", name, error);
        listed += text;
    }
    // The mask drops about `dropout` of the entries, and differs from call to call.
    bool mask_ok = true;
    if (c.dropout > 0) {
        const double dropped = 1 - keep.to(torch::kDouble).mean().item<double>();
        auto again = content_attention_forward(q_u, q_v, k, val, r, first, persistent_out, persistent_lse, scale, c.dropout);
        const bool fresh = !torch::equal(content_attention_keep_mask(again.rng, c.B, c.H, c.T, S, c.dropout), keep);
        mask_ok = std::abs(dropped - c.dropout) < 0.01 && fresh;
        std::printf("selftest: content kernels' dropout %.2f: dropped %.4f of the entries, a fresh mask each call: %s %s\n", c.dropout, dropped,
                    fresh ? "yes" : "no", mask_ok ? "ok" : "FAIL");
    }
    const bool pass = worst < 2.5e-2 && mask_ok;
    std::printf("selftest: training content kernels (B %ld, H %ld, dh %ld, T %ld, M %ld, dropout %.1f) vs float64: max rel. error%s "
                "(< 2.5e-2) %s\n", (long) c.B, (long) c.H, (long) c.dh, (long) c.T, (long) c.M, c.dropout, listed.c_str(), pass ? "ok" : "FAIL");
    return pass;
}

/// trainable_apart_attention with the position term (our kernels, persistent part by cuDNN's or flash's) against the
/// same attention with the bias formed by content_bias and the memory-efficient kernel, no dropout: the forward and
/// the gradients of all seven inputs.
bool check_position_term_path(const torch::Device & device) {
    const int64_t B = 3, H = 4, dh = 32, T = 96, M = 96, S = T + M, N = 128, first = (T - 1) / 8 * 8;
    const double scale = 1.0 / std::sqrt((double) dh);
    auto options = torch::TensorOptions().device(device);
    auto heads = [&](int64_t L) { return torch::randn({B, L, H, dh}, options).to(torch::kBFloat16).permute({2, 0, 1, 3}); };  // (H,B,L,dh)
    const std::vector<torch::Tensor> inputs = {heads(T), heads(T), heads(S), heads(S), heads(T),
                                               torch::randn({S, H, dh}, options).to(torch::kBFloat16).transpose(0, 1),
                                               (torch::randn({H, N, dh}, options) * scale).to(torch::kBFloat16),
                                               torch::randn({H, N, dh}, options).to(torch::kBFloat16)};
    auto upstream = torch::randn({H, B, T, dh}, options);
    auto keep = attention_keep_mask(T, M, true, device);
    auto run = [&](bool own) {
        std::vector<torch::Tensor> x;
        for (const auto & t : inputs) x.push_back(t.detach().requires_grad_(true));
        auto r = x[5].narrow(1, first, S - first);
        torch::Tensor out;
        if (own) {
            out = trainable_apart_attention(x[0], x[1], x[2], x[3], torch::Tensor(), x[6], x[7], scale, 0.0, AttentionParts::kernels,
                                            PositionTerm{x[4], r, first});
        } else {
            auto position = torch::matmul(x[4].reshape({H, B * T, dh}), r.transpose(1, 2)).view({H, B, T, S - first});
            out = trainable_apart_attention(x[0], x[1], x[2], x[3], content_bias(position, torch::Tensor(), keep, scale), x[6], x[7], scale,
                                            0.0, AttentionParts::kernels);
        }
        (out.to(torch::kFloat) * upstream).sum().backward();
        Outputs result{{out.detach().to(torch::kFloat)}};
        for (const auto & t : x) result.values.push_back(t.grad().to(torch::kFloat));
        return result;
    };
    const double error = worst_error(run(true), run(false));
    const bool pass = error < 2.5e-2;
    std::printf("selftest: training attention with the position term by our kernels vs the bias by the memory-efficient kernel: forward and "
                "8 gradients max rel. error %.2e (< 2.5e-2) %s\n", error, pass ? "ok" : "FAIL");
    return pass;
}

/// The joins (PositionTerm::query_biases: q + u and q + v formed inside, q's three gradient terms and the head
/// biases' gradients from one pass of the query kernel; PositionTerm::key_values: keys and values as one tensor with
/// one gradient) against the same attention given q + u, q + v, k and val apart, which autograd formed and whose
/// gradients it adds: the forward and the gradients of q, both biases, the keys, values, position keys and
/// persistent keys and values, with the persistent part by flash's kernels and by cuDNN's. A partial query tile
/// (T = 96) and several batch rows: each block's column sums land in their own place; at 352 batch rows (33,792
/// query rows) the position keys' gradient goes in parts. Tolerance as the others: the unjoined
/// path rounds two bf16 adds and its biases' sums to bf16; a term left out or counted twice is off by O(1).
bool check_query_join(const torch::Device & device, int64_t B) {
    const int64_t H = 4, dh = 64, T = 96, M = 96, S = T + M, N = 128, first = (T - 1) / 8 * 8;
    const double scale = 1.0 / std::sqrt((double) dh);
    auto options = torch::TensorOptions().device(device);
    auto heads = [&](int64_t L) { return torch::randn({B, L, H, dh}, options).to(torch::kBFloat16).permute({2, 0, 1, 3}); };  // (H,B,L,dh)
    const std::vector<torch::Tensor> inputs = {heads(T), heads(S), heads(S), torch::randn({S, H, dh}, options).to(torch::kBFloat16).transpose(0, 1),
                                               (torch::randn({H, N, dh}, options) * scale).to(torch::kBFloat16),
                                               torch::randn({H, N, dh}, options).to(torch::kBFloat16), torch::randn({2, H, dh}, options)};
    auto upstream = torch::randn({H, B, T, dh}, options);
    auto run = [&](bool join) {
        std::vector<torch::Tensor> x;
        for (const auto & t : inputs) x.push_back(t.detach().requires_grad_(true));
        PositionTerm position{{}, x[3].narrow(1, first, S - first), first};
        torch::Tensor content_q, k = x[1], val = x[2];
        if (join) {
            position.query_biases = x[6];
            position.key_values = torch::stack({x[1].permute({1, 2, 0, 3}), x[2].permute({1, 2, 0, 3})}, 2);   // (B,S,2,H,dh)
            k = val = torch::Tensor();
        } else {
            auto bias = [&](int64_t which) { return x[6][which].to(torch::kBFloat16).view({H, 1, 1, dh}); };
            content_q = x[0] + bias(0);
            position.queries = x[0] + bias(1);
        }
        auto out = trainable_apart_attention(x[0], content_q, k, val, torch::Tensor(), x[4], x[5], scale, 0.0, AttentionParts::kernels, position);
        (out.to(torch::kFloat) * upstream).sum().backward();
        Outputs result{{out.detach().to(torch::kFloat)}};
        for (const auto & t : x) result.values.push_back(t.grad().to(torch::kFloat));
        return result;
    };
    bool pass = true;
    for (const bool cudnn : {false, true}) {
        KernelSwitchesGuard restore;
        set_persistent_cudnn_min_rows(cudnn ? 0 : std::numeric_limits<int64_t>::max());
        const double error = worst_error(run(true), run(false));
        const bool ok = error < 2.5e-2;
        std::printf("selftest: training attention's joins (q + u, q + v and their gradients inside, keys and values as one tensor; persistent "
                    "part by %s; B %ld) vs autograd's adds: forward and 7 gradients max rel. error %.2e (< 2.5e-2) %s\n",
                    cudnn ? "cuDNN" : "flash", (long) B, error, ok ? "ok" : "FAIL");
        pass = pass && ok;
    }
    return pass;
}

} // namespace

bool check_content_attention(const torch::Device & device) {
    if (!content_attention_kernels_take(model_rows(1, 1, 8, 64, device), model_rows(1, 1, 8, 64, device), true)) {
        std::printf("selftest: training's content kernels are not built or are off here (LibTorch 2 CUDA builds)\n");
        return true;
    }
    bool ok = true;
    // Partial tiles at both ends (T not a multiple of 64, M not either), the model's shape, dh 64, 32 and 16, no memory,
    // and position gradient rows of an odd width (P = 31: rows start at odd elements).
    for (const ContentCase & c : {ContentCase{2, 3, 64, 80, 56, 0.0}, ContentCase{2, 3, 64, 80, 56, 0.2}, ContentCase{2, 2, 64, 192, 192, 0.2},
                                  ContentCase{3, 2, 32, 64, 0, 0.0}, ContentCase{1, 2, 16, 100, 130, 0.2}, ContentCase{2, 2, 32, 65, 30, 0.2}})
        ok = check_kernels_case(device, c) && ok;
    ok = check_position_term_path(device) && ok;
    ok = check_query_join(device, 3) && ok;
    return check_query_join(device, 352) && ok;
}

} // namespace studio
