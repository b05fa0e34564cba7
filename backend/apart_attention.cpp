#include "apart_attention.h"

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>

#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "biased_product.h"   // head_major_plus_biases
#include "content_attention.h"
#include "device.h"          // environment_is, rows_16_byte_aligned, current_cuda_stream, check_kernel_launch
#include "rel_attention.h"   // own_kernels_enabled

#ifdef STUDIO_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif
#ifdef STUDIO_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>

#include "attention_merge_kernel.h"
#endif

namespace studio {

bool attention_merge_kernel_takes(const torch::Tensor & out_a, const torch::Tensor & lse_a, const torch::Tensor & out_b,
                                  const torch::Tensor & lse_b) {
#ifdef STUDIO_CUDA_KERNELS
    return out_a.is_cuda() && own_kernels_enabled() && out_a.dim() == 4 && out_b.sizes() == out_a.sizes() && lse_a.dim() == 3
           && lse_b.sizes() == lse_a.sizes() && lse_a.sizes() == out_a.sizes().slice(0, 3) && out_a.scalar_type() == torch::kBFloat16
           && out_b.scalar_type() == torch::kBFloat16 && lse_a.scalar_type() == torch::kFloat && lse_b.scalar_type() == torch::kFloat
           && out_b.device() == out_a.device() && lse_a.device() == out_a.device() && lse_b.device() == out_a.device()
           && attention_merge_kernel_supports(out_a.size(3)) && rows_16_byte_aligned(out_a) && rows_16_byte_aligned(out_b);
#else
    (void) out_a, (void) lse_a, (void) out_b, (void) lse_b;
    return false;
#endif
}

torch::Tensor merge_attention_parts(const torch::Tensor & out_a, const torch::Tensor & lse_a, const torch::Tensor & out_b,
                                    const torch::Tensor & lse_b) {
#ifdef STUDIO_CUDA_KERNELS
    if (attention_merge_kernel_takes(out_a, lse_a, out_b, lse_b)) {
        c10::cuda::CUDAGuard device_guard(out_a.device());
        auto out = torch::empty_like(out_a);                                     // out_a's layout: (...,T,dh)
        if (rows_16_byte_aligned(out)) {
            AttentionMergeKernelArgs args;
            for (int d = 0; d < 4; ++d) args.sizes[d] = out_a.size(d);
            args.out_a = out_a.data_ptr();
            args.out_b = out_b.data_ptr();
            args.out = out.data_ptr();
            args.lse_a = lse_a.data_ptr<float>();
            args.lse_b = lse_b.data_ptr<float>();
            for (int d = 0; d < 3; ++d) {
                args.out_a_stride[d] = out_a.stride(d);
                args.out_b_stride[d] = out_b.stride(d);
                args.out_stride[d] = out.stride(d);
                args.lse_a_stride[d] = lse_a.stride(d);
                args.lse_b_stride[d] = lse_b.stride(d);
            }
            check_kernel_launch(launch_attention_merge(args, current_cuda_stream(out_a.device())), "attention merge");
            return out;
        }
    }
#endif
    const auto wide = c10::promoteTypes(out_a.scalar_type(), torch::kFloat);   // bf16 parts are joined in fp32
    auto share_a = torch::sigmoid(lse_a.to(wide) - lse_b.to(wide)).unsqueeze(-1);                    // (...,T,1)
    return (out_a.to(wide) * share_a + out_b.to(wide) * (1 - share_a)).to(out_a.dtype());            // (...,T,dh)
}

namespace {

/// (H,B,T,dh) as (1,H,B*T,dh): the batch folded into the query rows of each head. A view of a (B,T,H,dh) or
/// (H,B,T,dh) layout; for the flash kernel the former is its own (rows of H heads side by side).
torch::Tensor as_rows(const torch::Tensor & t) {
    return t.reshape({1, t.size(0), t.size(1) * t.size(2), t.size(3)});     // (1,H,B*T,dh)
}

/// The batch-major (B,H,T,dh) form of the same rows: (1,H,B*T,dh), a view where the storage is (B,T,H,dh).
torch::Tensor batch_major_as_rows(const torch::Tensor & t) {
    return as_rows(t.transpose(0, 1));                                       // (1,H,B*T,dh)
}

/// (1,H,B*T,dh) or (1,H,B*T) back to batch-major (B,H,T,dh) or (B,H,T): views where the rows allow.
torch::Tensor rows_as_batch_major(const torch::Tensor & rows, int64_t B, int64_t T) {
    const int64_t H = rows.size(1);
    return rows.dim() == 4 ? rows.reshape({H, B, T, rows.size(3)}).transpose(0, 1) // (B,H,T,dh)
                           : rows.reshape({H, B, T}).transpose(0, 1);             // (B,H,T)
}

/// One part's forward, as its backward replays it. lse is laid out as the computing kernel lays it out: (X,Y,L')
/// fp32 with L' >= L (the memory-efficient kernel pads the query length to a multiple of 32).
struct Part {
    torch::Tensor out, lse;
    torch::Tensor seed, offset;   ///< the kernels' dropout state (Philox seed and offset)
    torch::Tensor dropped;        ///< math: the dropout mask divided by the keep probability (undefined: no dropout)
    torch::Tensor cum_q, cum_k;   ///< cuDNN's sequence offsets, which its backward takes back
    bool cudnn = false;           ///< computed by cuDNN's kernels (the persistent part in training)
};

struct PartGradients {
    torch::Tensor q, k, v, bias;
};

/// The kernels' contract in tensor operations. q (X,Y,L,dh), k/v (X,Y,S,dh), bias (X,Y,L,S) or undefined.
Part math_forward(const torch::Tensor & q, const torch::Tensor & k, const torch::Tensor & v, const torch::Tensor & bias, double scale,
                  double dropout) {
    const auto wide = c10::promoteTypes(q.scalar_type(), torch::kFloat);
    auto scores = torch::matmul(q.to(wide), k.to(wide).transpose(-1, -2)) * scale;                   // (X,Y,L,S)
    if (bias.defined()) scores = scores + bias.to(wide);
    Part part;
    part.lse = torch::logsumexp(scores, -1);                                                           // (X,Y,L)
    auto probs = torch::exp(scores - part.lse.unsqueeze(-1));
    if (dropout > 0) {
        part.dropped = torch::bernoulli(torch::full_like(probs, 1 - dropout)) / (1 - dropout);
        probs = probs * part.dropped;
    }
    part.out = torch::matmul(probs, v.to(wide)).to(q.scalar_type());                                   // (X,Y,L,dh)
    return part;
}

/// The backward of one part given the JOINED output and log-sum-exp: exp(scores - joined lse) are this part's
/// columns of the joined probabilities, and rowsum(grad x joined out) is the joined softmax's correction, so the
/// gradients are those of the joined attention (flash attention's backward, written out).
PartGradients math_backward(const torch::Tensor & grad, const torch::Tensor & q, const torch::Tensor & k, const torch::Tensor & v,
                            const torch::Tensor & bias, const torch::Tensor & out, const torch::Tensor & lse,
                            const torch::Tensor & dropped, double scale, bool bias_grad) {
    const auto wide = c10::promoteTypes(q.scalar_type(), torch::kFloat);
    auto q_w = q.to(wide), k_w = k.to(wide), g = grad.to(wide);
    auto scores = torch::matmul(q_w, k_w.transpose(-1, -2)) * scale;                                 // (X,Y,L,S)
    if (bias.defined()) scores = scores + bias.to(wide);
    auto probs = torch::exp(scores - lse.unsqueeze(-1));
    auto dropped_probs = dropped.defined() ? probs * dropped : probs;
    auto dp = torch::matmul(g, v.to(wide).transpose(-1, -2));                                          // (X,Y,L,S)
    if (dropped.defined()) dp = dp * dropped;
    auto ds = probs * (dp - (g * out.to(wide)).sum(-1, true));                                         // (X,Y,L,S)
    PartGradients grads;
    grads.q = (torch::matmul(ds, k_w) * scale).to(q.scalar_type());                                    // (X,Y,L,dh)
    grads.k = (torch::matmul(ds.transpose(-1, -2), q_w) * scale).to(k.scalar_type());                  // (X,Y,S,dh)
    grads.v = torch::matmul(dropped_probs.transpose(-1, -2), g).to(v.scalar_type());                   // (X,Y,S,dh)
    if (bias_grad) grads.bias = ds.to(bias.scalar_type());
    return grads;
}

/// grad' . queries over the rows: the position keys' gradient (H,P,dh) from (q+v).r's, grad (H,R,P), and q + v, queries
/// (H,R,dh), R = B*T rows. As one product its reduction is long (98,304 at batch 512) and its output a few tiles, too
/// few for the GPU: cuBLAS's took 200 us on an H200. Where the queries are head-major (the query join's), the rows
/// go in 8 parts as one batch, summed in fp32 (scripts/gpu-probe-position-keys-grad.py: 119 us, sum included).
torch::Tensor position_keys_gradient(const torch::Tensor & grad, const torch::Tensor & queries) {
    const int64_t H = grad.size(0), R = grad.size(1), P = grad.size(2), dh = queries.size(2), parts = 8;
    if (!grad.is_cuda() || !grad.is_contiguous() || !queries.is_contiguous() || R % parts != 0 || R / parts < 4096)
        return torch::matmul(grad.transpose(1, 2), queries);                                              // (H,P,dh)
    auto partial = torch::bmm(grad.view({H * parts, R / parts, P}).transpose(1, 2), queries.view({H * parts, R / parts, dh}));  // (H*parts,P,dh)
    return partial.view({H, parts, P, dh}).sum({1}, false, torch::kFloat).to(grad.scalar_type());         // (H,P,dh)
}

// Training's persistent part (LibTorch 2): STUDIO_PERSISTENT_ATTENTION=flash keeps it on the flash kernels even where
// cuDNN's run; cuDNN refusing a call once keeps it there from then on. From cudnn_min_rows query rows (B*T) on,
// cuDNN's kernels: on an H200, training steps at batch 64, 128 and 192 of 192 tokens were 1.4%, 3.8% and 4.0% shorter
// with them, at batch 24 (4,608 rows) 1% longer.
const bool cudnn_wanted = !environment_is("STUDIO_PERSISTENT_ATTENTION", "flash");
bool cudnn_failed = false;
int64_t cudnn_min_rows = 12288;
// At inference (no dropout, no backward) cuDNN's forward from 6,144 query rows x heads on, flash's below, unless
// STUDIO_PERSISTENT_INFERENCE=flash. Alone on an H200 (scripts/gpu-probe-persistent-kernels.py; 2048 columns of 64),
// cuDNN's takes 0.60-0.70 of flash's time from there on and no less than ~22 us, which below it is 1.2-2.1x flash's.
const bool inference_cudnn_wanted = !environment_is("STUDIO_PERSISTENT_INFERENCE", "flash");
int64_t inference_cudnn_from_head_rows = 6144;
// cuDNN's call can also take the columns in two or four parts, as the batch entries of one call (the queries read
// again through a zero stride); our kernel joins the parts as it starts. A block then walks a part of the columns:
// one wave takes ~14 us in halves where the whole call's takes ~22, which beats flash's from 2,304 query rows x heads
// on (3/8 of the whole call's threshold), and layers of few heads take fewer, shorter waves. How many parts is
// decided by persistent_inference_splits, up to STUDIO_PERSISTENT_MAX_SPLITS (2 or 4, the default);
// STUDIO_PERSISTENT_SPLITS=1, 2 or 4 (or set_persistent_inference_splits) forces one.
int64_t split_setting(const char * name) {
    const char * value = std::getenv(name);
    const std::string text = value ? value : "";
    return text == "1" || text == "2" || text == "4" ? (int64_t) std::stoi(text) : 0;
}
int64_t forced_persistent_splits = split_setting("STUDIO_PERSISTENT_SPLITS");
const int64_t most_persistent_splits = split_setting("STUDIO_PERSISTENT_MAX_SPLITS") > 0 ? split_setting("STUDIO_PERSISTENT_MAX_SPLITS") : 4;
bool persistent_split_refused = false;

// The content part's kernel told that no query sees a key past its bottom-right diagonal (j > i + S - T; the model's
// keep mask never keeps one), so that it skips those key tiles: at 192 tokens and 192 of memory, 5 of 6 tiles of
// 64 keys on average, forward and backward. STUDIO_CONTENT_CAUSAL=0: not told (every tile; timing).
const bool content_causal_wanted = !environment_is("STUDIO_CONTENT_CAUSAL", "0");
constexpr int64_t kCausalFromBottomRight = 2;   // the memory-efficient kernel's custom_mask_type

#if TORCH_VERSION_MAJOR >= 2
/// q (B,H,T,dh), k/v (B,H,S,dh) views of (B,L,H,dh) storage, bias (B,H,T,S). The raw kernel takes (B,L,H,dh).
Part content_kernel_forward(const torch::Tensor & q, const torch::Tensor & k, const torch::Tensor & v, const torch::Tensor & bias,
                            double scale, double dropout) {
    auto result = at::_efficient_attention_forward(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), bias, std::nullopt,
                                                   std::nullopt, std::nullopt, std::nullopt, dropout,
                                                   content_causal_wanted ? kCausalFromBottomRight : 0, /*compute_log_sumexp=*/true, scale);
    return {std::get<0>(result).transpose(1, 2), std::get<1>(result), std::get<2>(result), std::get<3>(result), {}};   // out (B,H,T,dh)
}

/// content_kernel_forward's backward: the gradients of q, k, v (B,H,L,dh) and of the bias (where asked; defined on
/// the kept entries only, as the kernel skips tiles past the diagonal).
PartGradients content_kernel_backward(const torch::Tensor & grad, const torch::Tensor & q, const torch::Tensor & k, const torch::Tensor & v,
                                      const torch::Tensor & bias, const torch::Tensor & out, const torch::Tensor & lse,
                                      const torch::Tensor & seed, const torch::Tensor & offset, double scale, double dropout, bool bias_grad) {
    PartGradients grads;
    std::tie(grads.q, grads.k, grads.v, grads.bias) = at::_efficient_attention_backward(
        grad.transpose(1, 2), q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), bias, out.transpose(1, 2), std::nullopt,
        std::nullopt, q.size(2), k.size(2), lse, dropout, seed, offset, content_causal_wanted ? kCausalFromBottomRight : 0, bias_grad, scale);
    grads.q = grads.q.transpose(1, 2);
    grads.k = grads.k.transpose(1, 2);
    grads.v = grads.v.transpose(1, 2);
    return grads;
}

Part persistent_kernel_forward(const torch::Tensor & rows, const torch::Tensor & keys, const torch::Tensor & values, double dropout) {
    auto result = at::_scaled_dot_product_flash_attention(rows, keys, values, dropout, /*is_causal=*/false, /*return_debug_mask=*/false, 1.0);
    return {std::get<0>(result), std::get<1>(result), std::get<6>(result), std::get<7>(result), {}};
}

/// The persistent part by cuDNN's kernels where they are wanted and run (nothing where they are not). A refusal sets
/// `refused`, after which that call is not tried again, and says so, naming `what` was refused and what runs `instead`.
std::optional<Part> persistent_cudnn_forward(const torch::Tensor & rows, const torch::Tensor & keys, const torch::Tensor & values, double dropout,
                                             bool & refused = cudnn_failed, const char * what = "the persistent part",
                                             const char * instead = "flash attention") {
    if (cudnn_wanted && !cudnn_failed && !refused && rows.size(-1) <= 128 && torch::cuda::cudnn_is_available()) {
        try {
            auto result = at::_scaled_dot_product_cudnn_attention(rows, keys, values, c10::optional<at::Tensor>(), /*compute_log_sumexp=*/true,
                                                                  dropout, /*is_causal=*/false, /*return_debug_mask=*/false, 1.0);
            Part part{std::get<0>(result), std::get<1>(result).squeeze(-1), std::get<6>(result), std::get<7>(result), {}};  // lse (1,H,L)
            part.cum_q = std::get<2>(result);
            part.cum_k = std::get<3>(result);
            part.cudnn = true;
            return part;
        } catch (const c10::Error & error) {
            refused = true;
            std::fprintf(stderr, "studio: cuDNN's attention refused %s (%s); %s from now on\n", what, error.what_without_backtrace(), instead);
        }
    }
    return std::nullopt;
}

/// The persistent part in training: cuDNN's kernels for many rows where they run (alone, at batch 192, 2.08 ms a
/// layer forward and backward with dropout against flash's 2.44), else flash's. Both backwards take the joined output
/// and log-sum-exp (scripts/gpu-probe-cudnn-attention.py checks that cuDNN's does).
Part persistent_training_forward(const torch::Tensor & rows, const torch::Tensor & keys, const torch::Tensor & values, double dropout) {
    if (rows.size(2) >= cudnn_min_rows) {
        if (auto part = persistent_cudnn_forward(rows, keys, values, dropout)) return *part;
    }
    return persistent_kernel_forward(rows, keys, values, dropout);
}
#endif

/// Batch-major operands: q and content_q (B,H,T,dh), k/val (B,H,S,dh), content_bias (B,H,T,S); or, `own`, the position
/// term for our kernels (content_attention.h): position_q (B,H,T,dh) and position_keys (H,S-first_position,dh). The
/// model's projections are laid out (B,L,H,dh), so in this order the memory-efficient kernel's own layout (B,L,H,dh) is
/// the projections', and so is the flash kernel's for the persistent rows: both outputs, the joined one and every
/// gradient come and go as views, where a head-major call made the kernels lay them out (H,L,B,dh) and cost four
/// copies a layer. With `own`, the joins (PositionTerm): query_biases (2,H,dh) in place of content_q and position_q,
/// key_values (B,S,2,H,dh) in place of k and val; empty tensors stand for what is not given.
struct TrainableApartAttention : public torch::autograd::Function<TrainableApartAttention> {
    static torch::Tensor forward(torch::autograd::AutogradContext * ctx, const torch::Tensor & q, const torch::Tensor & content_q_in,
                                 const torch::Tensor & k_in, const torch::Tensor & val_in, const torch::Tensor & key_values,
                                 const torch::Tensor & content_bias,
                                 const torch::Tensor & position_q_in, const torch::Tensor & position_keys, const torch::Tensor & persistent_keys,
                                 const torch::Tensor & persistent_values, const torch::Tensor & query_biases, double scale, double dropout,
                                 bool kernels, bool own, int64_t first_position) {
        const int64_t B = q.size(0), T = q.size(2);
        // With the query join, q + u and q + v are formed here from the head biases (2,H,dh), and the backward sums
        // their gradients into q's in one pass.
        const bool query_join = query_biases.numel() > 0;
        TORCH_CHECK(!query_join || own, "apart attention: head biases in place of the biased queries need our content kernels");
        // Head-major (H,B,T,dh) storage, so that the backward's product for the position keys can split its rows.
        const auto biased = query_join ? head_major_plus_biases(q.transpose(0, 1), query_biases) : std::pair<torch::Tensor, torch::Tensor>();
        const auto content_q = query_join ? biased.first.transpose(0, 1) : content_q_in;                // (B,H,T,dh)
        const auto position_q = query_join ? biased.second.transpose(0, 1) : position_q_in;
        // One product's keys and values (B,S,2,H,dh), whose gradient the backward gives back whole.
        const bool key_values_join = key_values.numel() > 0;
        TORCH_CHECK(!key_values_join || own, "apart attention: keys and values as one tensor need our content kernels");
        const auto k = key_values_join ? key_values.select(2, 0).permute({0, 2, 1, 3}) : k_in;       // (B,H,S,dh)
        const auto val = key_values_join ? key_values.select(2, 1).permute({0, 2, 1, 3}) : val_in;
        auto rows = batch_major_as_rows(q);                                                            // (1,H,B*T,dh)
        auto keys = persistent_keys.unsqueeze(0), values = persistent_values.unsqueeze(0);            // (1,H,N,dh)
        TORCH_CHECK(!own || kernels, "apart attention: the position term without a bias needs our kernels");
        Part content, persistent;
        torch::Tensor out, joined_lse;
#if TORCH_VERSION_MAJOR >= 2
        if (kernels) {
            if (!own) content = content_kernel_forward(content_q, k, val, content_bias, scale, dropout);
            persistent = persistent_training_forward(rows, keys, values, dropout);
        }
#endif
        if (own) {
            // Our kernel starts its softmax from the persistent part's: its output and log-sum-exp are the joined ones.
            auto joined = content_attention_forward(content_q, position_q, k, val, position_keys, first_position, persistent.out,
                                                    persistent.lse, scale, dropout);
            out = joined.out;
            joined_lse = joined.lse;                                                                   // (B,H,T)
            content.seed = joined.rng;
        }
        if (!kernels) {
            content = math_forward(content_q, k, val, content_bias, scale, dropout);
            persistent = math_forward(rows, keys, values, {}, 1.0, dropout);   // q . key unscaled, as the reference
        }
        if (!own) {
            auto content_lse = content.lse.narrow(-1, 0, T);                                           // (B,H,T)
            auto persistent_lse = rows_as_batch_major(persistent.lse, B, T);                           // (B,H,T)
            // Laid out as the content part's own output: its kernel's backward reads the output (for the joined
            // softmax's correction) assuming the layout its forward wrote.
            out = merge_attention_parts(content.out, content_lse, rows_as_batch_major(persistent.out, B, T), persistent_lse); // (B,H,T,dh)
            if (out.strides() != content.out.strides()) out = torch::empty_like(content.out).copy_(out);
            // The joined log-sum-exp, in the content kernel's (padded) layout, which its backward reads.
            joined_lse = content.lse.clone();                                                          // (B,H,T')
            joined_lse.narrow(-1, 0, T).copy_(torch::logaddexp(content_lse, persistent_lse));
        }
        ctx->save_for_backward({q, k, val, content_bias, persistent_keys, persistent_values, out, joined_lse, content.seed,
                                content.offset, persistent.seed, persistent.offset, content.dropped, persistent.dropped,
                                persistent.cum_q, persistent.cum_k, content_q, position_q, position_keys});
        ctx->saved_data["first_position"] = first_position;
        ctx->saved_data["own"] = own;
        ctx->saved_data["query_join"] = query_join;
        ctx->saved_data["key_values_join"] = key_values_join;
        ctx->saved_data["persistent_cudnn"] = persistent.cudnn;
        ctx->saved_data["scale"] = scale;
        ctx->saved_data["dropout"] = dropout;
        ctx->saved_data["kernels"] = kernels;
        ctx->saved_data["bias_grad"] = !own && content_bias.requires_grad();
        return out;
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext * ctx, torch::autograd::variable_list grads) {
        const auto saved = ctx->get_saved_variables();
        const auto & q = saved[0], & k = saved[1], & val = saved[2], & bias = saved[3], & persistent_keys = saved[4],
                   & persistent_values = saved[5], & out = saved[6], & joined_lse = saved[7], & content_q = saved[16],
                   & position_q = saved[17], & position_keys = saved[18];
        const double scale = ctx->saved_data["scale"].toDouble(), dropout = ctx->saved_data["dropout"].toDouble();
        const bool kernels = ctx->saved_data["kernels"].toBool(), bias_grad = ctx->saved_data["bias_grad"].toBool();
        const int64_t B = q.size(0), H = q.size(1), T = q.size(2), N = persistent_keys.size(1);
        // In out's layout, as the content kernel's backward assumes; the model's upstream gradient already is.
        auto grad = grads[0].strides() == out.strides() ? grads[0] : torch::empty_like(out).copy_(grads[0]);    // (B,H,T,dh)
        auto rows_lse = joined_lse.narrow(-1, 0, T).transpose(0, 1).contiguous().view({1, H, B * T});           // (1,H,B*T)
        auto keys = persistent_keys.unsqueeze(0), values = persistent_values.unsqueeze(0);            // (1,H,N,dh)
        PartGradients content, persistent;
        torch::Tensor grad_position_q, grad_position_keys, grad_query_biases, grad_key_values;
        const bool own = ctx->saved_data["own"].toBool(), query_join = ctx->saved_data["query_join"].toBool();
#if TORCH_VERSION_MAJOR >= 2
        // The persistent part first: with the query join, the content part's pass adds its q gradient.
        if (kernels) {
            if (ctx->saved_data["persistent_cudnn"].toBool())
                std::tie(persistent.q, persistent.k, persistent.v) = at::_scaled_dot_product_cudnn_attention_backward(
                    batch_major_as_rows(grad), batch_major_as_rows(q), keys, values, batch_major_as_rows(out), rows_lse.unsqueeze(-1),
                    saved[10], saved[11], /*attn_bias=*/torch::Tensor(), saved[14], saved[15], B * T, N, dropout, /*is_causal=*/false, 1.0);
            else
                std::tie(persistent.q, persistent.k, persistent.v) = at::_scaled_dot_product_flash_attention_backward(
                    batch_major_as_rows(grad), batch_major_as_rows(q), keys, values, batch_major_as_rows(out), rows_lse, /*cum_seq_q=*/{},
                    /*cum_seq_k=*/{}, B * T, N, dropout, /*is_causal=*/false, saved[10], saved[11], 1.0);
            if (!own)
                content = content_kernel_backward(grad, content_q, k, val, bias, out, joined_lse, saved[8], saved[9], scale, dropout, bias_grad);
        }
#endif
        if (own) {
            const int64_t dh = q.size(3), P = position_keys.size(1);
            GradientJoins joins;
            if (query_join) joins.persistent_q = rows_as_batch_major(persistent.q, B, T);             // (B,H,T,dh)
            joins.key_values = ctx->saved_data["key_values_join"].toBool();
            auto grads = content_attention_backward(grad, content_q, position_q, k, val, position_keys, ctx->saved_data["first_position"].toInt(),
                                                    ContentAttention{out, joined_lse, saved[8]}, scale, dropout, joins);
            content.q = grads.q_u;
            content.k = grads.k;
            content.v = grads.v;
            grad_key_values = grads.key_values;                                                       // (B,S,2,H,dh) or undefined
            // (q+v).r's gradient, before the shift, to its two operands by two products (with the query join, the
            // first inside the content part's backward).
            auto position_grad = grads.position.view({H, B * T, P});                                  // (H,B*T,P)
            if (query_join) grad_query_biases = grads.head_biases.transpose(0, 1);                        // (2,H,dh)
            else grad_position_q = torch::matmul(position_grad, position_keys).view({H, B, T, dh}).transpose(0, 1); // (B,H,T,dh)
            grad_position_keys = position_keys_gradient(position_grad, position_q.transpose(0, 1).reshape({H, B * T, dh}));   // (H,P,dh)
        }
        if (!kernels) {
            content = math_backward(grad, content_q, k, val, bias, out, joined_lse, saved[12], scale, bias_grad);
            persistent = math_backward(batch_major_as_rows(grad), batch_major_as_rows(q), keys, values, {}, batch_major_as_rows(out),
                                       rows_lse, saved[13], 1.0, false);
        }
        // Where content_q is q itself, autograd adds the two query gradients; with the query join, content.q is q's whole.
        const bool key_values_join = grad_key_values.defined();
        return {query_join ? content.q : rows_as_batch_major(persistent.q, B, T), query_join ? torch::Tensor() : content.q,
                key_values_join ? torch::Tensor() : content.k, key_values_join ? torch::Tensor() : content.v, grad_key_values,
                bias_grad ? content.bias : torch::Tensor(), grad_position_q, grad_position_keys, persistent.k.squeeze(0),
                persistent.v.squeeze(0), grad_query_biases, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
    }
};

} // namespace

void set_persistent_cudnn_min_rows(int64_t rows) { cudnn_min_rows = rows; }
int64_t persistent_cudnn_min_rows() { return cudnn_min_rows; }
bool persistent_cudnn_refused() { return cudnn_failed; }
void set_persistent_inference_cudnn_from(int64_t head_rows) { inference_cudnn_from_head_rows = head_rows; }
int64_t persistent_inference_cudnn_from() { return inference_cudnn_from_head_rows; }
void set_persistent_inference_splits(int64_t splits) { forced_persistent_splits = splits; }
int64_t persistent_inference_forced_splits() { return forced_persistent_splits; }
bool persistent_inference_split_refused() { return persistent_split_refused; }

#if TORCH_VERSION_MAJOR >= 2
namespace {
/// 1 (whole), 2 or 4 parts for cuDNN's call over these rows (1,H,L,dh) and columns. By a model of the call's time
/// fitted on an H200 (scripts/gpu-probe-persistent-kernels.py, 2048 columns of 64; 2 blocks of 64 rows an SM): a
/// first wave of blocks over n columns takes 4.9 + 0.0086 n us, each further wave 3.3 us less. The fastest split
/// where the model saves at least 15% over the whole call: in whole segments smaller savings went to the blocks'
/// overheads and our kernel's join of the parts (at batch 128, layers of 3 and 5 heads split by wave count alone made
/// the models 1.2% slower).
int64_t persistent_inference_splits(const torch::Tensor & rows, int64_t columns) {
    if (forced_persistent_splits > 0) return columns % (8 * forced_persistent_splits) == 0 ? forced_persistent_splits : 1;
#ifdef STUDIO_CUDA
    const int64_t slots = 2 * at::cuda::getDeviceProperties(rows.device().index())->multiProcessorCount;
    const int64_t blocks = (rows.size(2) + 63) / 64 * rows.size(1);                // (query rows / 64) x heads
    auto time = [&](int64_t splits) {
        const int64_t waves = (blocks * splits + slots - 1) / slots;
        const double first_wave = 4.9 + 0.0086 * (double) (columns / splits);
        return first_wave + (double) (waves - 1) * (first_wave - 3.3);
    };
    int64_t best = 1;
    for (int64_t splits = 2; splits <= most_persistent_splits; splits *= 2) {
        if (columns % (64 * splits) == 0 && time(splits) < 0.85 * time(1) && time(splits) < time(best)) best = splits;
    }
    return best;
#else
    (void) rows;
    return 1;
#endif
}
} // namespace

std::pair<torch::Tensor, torch::Tensor> persistent_inference_attention(const torch::Tensor & q, const torch::Tensor & keys,
                                                                       const torch::Tensor & values) {
    auto rows = as_rows(q);                                                  // (1,H,B*T,dh)
    const int64_t head_rows = rows.size(1) * rows.size(2);
    const bool cudnn = inference_cudnn_wanted && head_rows >= inference_cudnn_from_head_rows;   // whole
    const int64_t H = keys.size(0), N = keys.size(1), dh = keys.size(2);
    // From 2,304 query rows x heads on, where the halves beat flash's kernel. Alone, quarters beat it at any count
    // (9.2-9.5 us against 10.6-12.3 at 192 rows), but at batch 1 in the model they made every model 8-11% slower.
    const bool splits_may = inference_cudnn_wanted && head_rows >= inference_cudnn_from_head_rows / 8 * 3;
    const int64_t splits = splits_may ? persistent_inference_splits(rows, N) : 1;
    if (splits > 1) {
        auto parts = [&](const torch::Tensor & t) { return t.contiguous().view({H, splits, N / splits, dh}).transpose(0, 1); }; // (s,H,N/s,dh)
        // The split's parts as the batch entries of one call, the queries read through a zero stride.
        if (auto part = persistent_cudnn_forward(rows.expand({splits, H, rows.size(2), dh}), parts(keys), parts(values), 0.0,
                                                 persistent_split_refused, "the persistent columns in parts", "whole"))
            return {part->out, part->lse};                                   // (s,H,B*T,dh), (s,H,B*T): one part a split
    }
    auto part = cudnn ? persistent_cudnn_forward(rows, keys.unsqueeze(0), values.unsqueeze(0), 0.0) : std::nullopt;
    if (!part) part = persistent_kernel_forward(rows, keys.unsqueeze(0), values.unsqueeze(0), 0.0);
    return {part->out, part->lse};                                           // (1,H,B*T,dh), (1,H,B*T)
}
#endif

bool apart_attention_kernels_take(const torch::Tensor & q, const torch::Tensor & k) {
#if TORCH_VERSION_MAJOR >= 2
    const int64_t dh = q.size(-1);
    const auto dtype = q.scalar_type();
    return q.is_cuda() && (dtype == torch::kBFloat16 || dtype == torch::kHalf) && k.scalar_type() == dtype && k.size(-2) % 16 == 0
           && dh % 8 == 0 && dh <= 256;
#else
    (void) q;
    (void) k;
    return false;
#endif
}

torch::Tensor trainable_apart_attention(const torch::Tensor & q, const torch::Tensor & content_q, const torch::Tensor & k,
                                        const torch::Tensor & val, const torch::Tensor & content_bias, const torch::Tensor & persistent_keys,
                                        const torch::Tensor & persistent_values, double scale, double dropout, AttentionParts parts,
                                        const PositionTerm & position) {
    const bool query_join = position.query_biases.defined(), key_values_join = position.key_values.defined();
    TORCH_CHECK(!key_values_join || (!k.defined() && !val.defined() && position.key_values.dim() == 5 && position.key_values.size(2) == 2),
                "apart attention: keys and values (B,S,2,H,dh) come in place of k and val");
    const auto keys = key_values_join ? position.key_values.select(2, 0).permute({2, 0, 1, 3}) : k;   // (H,B,S,dh)
    TORCH_CHECK(parts == AttentionParts::math || apart_attention_kernels_take(q, keys),
                "apart attention: the kernels do not take these operands (", q.scalar_type(), " on ", q.device(), ")");
    TORCH_CHECK(content_bias.defined() != (position.queries.defined() || query_join), "apart attention: give the content columns a bias or a position term");
    TORCH_CHECK(!query_join || (!content_q.defined() && !position.queries.defined() && position.query_biases.dim() == 3
                            && position.query_biases.size(0) == 2 && position.query_biases.size(1) == q.size(0)
                            && position.query_biases.size(2) == q.size(3)),
                "apart attention: head biases (2,H,dh) come in place of content_q and the position term's queries");
    // Autograd's functions take no undefined inputs (LibTorch 2): an empty tensor holds the place of the one not given.
    auto batch_major = [&](const torch::Tensor & t) { return t.defined() ? t.transpose(0, 1) : torch::empty({0}, q.options()); };
    auto or_empty = [&](const torch::Tensor & t) { return t.defined() ? t : torch::empty({0}, q.options()); };
    // Views both ways: (H,B,...) in, batch-major through the kernels, (H,B,T,dh) out.
    return TrainableApartAttention::apply(q.transpose(0, 1), batch_major(content_q), batch_major(k), batch_major(val),
                                          or_empty(position.key_values), batch_major(content_bias), batch_major(position.queries),
                                          or_empty(position.keys), persistent_keys, persistent_values, or_empty(position.query_biases), scale,
                                          dropout, parts == AttentionParts::kernels, !content_bias.defined(), position.first)
        .transpose(0, 1);                                                    // (H,B,T,dh)
}

#if TORCH_VERSION_MAJOR >= 2
torch::Tensor persistent_apart_attention(const torch::Tensor & q, const torch::Tensor & content_q, const torch::Tensor & k,
                                         const torch::Tensor & val, const torch::Tensor & content_bias, const torch::Tensor & mem_k,
                                         const torch::Tensor & mem_v, double scale) {
    const int64_t H = q.size(0), B = q.size(1), T = q.size(2), dh = q.size(3), N = mem_k.size(1);
    auto content = at::_scaled_dot_product_efficient_attention(content_q, k, val, content_bias.to(q.dtype()), /*compute_log_sumexp=*/true,
                                                               0.0, /*is_causal=*/false, scale);
    auto content_out = std::get<0>(content);                                 // (H,B,T,dh)
    auto content_lse = std::get<1>(content).narrow(-1, 0, T);               // (H,B,T): the kernel pads its length
    auto rows = q.reshape({H, 1, B * T, dh});                                // (H,1,B*T,dh)
    auto keys = mem_k.to(q.dtype()).unsqueeze(1);                            // (H,1,N,dh)
    auto values = (mem_v * std::sqrt((double) N)).to(q.dtype()).unsqueeze(1); // (H,1,N,dh)
    torch::Tensor persistent_out, persistent_lse;
    // q . mem_k unscaled, as the reference computes it. Flash attention has no fp32 kernel.
    if (q.scalar_type() == torch::kFloat) {
        auto part = at::_scaled_dot_product_efficient_attention(rows, keys, values, {}, true, 0.0, false, 1.0);
        persistent_out = std::get<0>(part);
        persistent_lse = std::get<1>(part).narrow(-1, 0, B * T);
    } else {
        auto part = at::_scaled_dot_product_flash_attention(rows, keys, values, 0.0, false, false, 1.0);
        persistent_out = std::get<0>(part);
        persistent_lse = std::get<1>(part);
    }
    return merge_attention_parts(content_out, content_lse, persistent_out.view({H, B, T, dh}),  // (H,B,T,dh)
                                 persistent_lse.view({H, B, T}));
}
#else
torch::Tensor persistent_apart_attention(const torch::Tensor &, const torch::Tensor &, const torch::Tensor &, const torch::Tensor &,
                                         const torch::Tensor &, const torch::Tensor &, const torch::Tensor &, double) {
    throw std::runtime_error("apart attention: needs LibTorch 2's fused kernels");
}
#endif

} // namespace studio
