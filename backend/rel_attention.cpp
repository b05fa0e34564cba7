#include "rel_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <torch/torch.h>
#include <torch/version.h>

#include "apart_attention.h"
#include "biased_product.h"
#include "content_attention.h"
#include "content_bias.h"
#include "device.h"
#include "gated_weight.h"

#ifdef STUDIO_CUDA_KERNELS
#include <optional>

#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "rel_attention_kernel.h"
#endif

namespace studio {

namespace F = torch::nn::functional;

namespace {
bool attention_mode_is(const char * mode) { return environment_is("STUDIO_ATTENTION", mode); }
bool fused_wanted = !attention_mode_is("explicit");
// STUDIO_ATTENTION=concat: fused, but the persistent columns join the content ones in one kernel call, in training
// and inference alike (the layout before they were attended apart; for side-by-side timing).
const bool apart_wanted = !attention_mode_is("concat");
// STUDIO_ATTENTION=sdpa: LibTorch's kernels only, none of our own (for side-by-side timing).
bool own_kernel_wanted = !attention_mode_is("sdpa") && !attention_mode_is("concat");

#ifdef STUDIO_CUDA_KERNELS
/// Whether our kernel takes these operands as they are: bf16 on the GPU, a built head size, 16-byte aligned rows.
bool kernel_takes(const torch::Tensor & q, const torch::Tensor & k, const torch::Tensor & val, const torch::Tensor & r) {
    if (!q.is_cuda() || !relative_attention_kernel_supports(q.size(-1))) return false;
    for (const auto * t : {&q, &k, &val, &r})
        if (t->scalar_type() != torch::kBFloat16 || !rows_16_byte_aligned(*t)) return false;
    return true;
}
#endif

// STUDIO_OUTPUT_BIAS=ops: the output projection's bias gradient by addmm's own backward (side-by-side timing).
const bool bias_by_product_wanted = !environment_is("STUDIO_OUTPUT_BIAS", "ops");
// STUDIO_U_IN_BIAS=1: u . k_j in the content columns' bias even where their kernel could take q + u (side-by-side timing).
const bool u_in_query_wanted = !environment_is("STUDIO_U_IN_BIAS", "1");
// STUDIO_QUERY_JOIN=0: training's q + u and q + v by autograd nodes of their own, whose gradients autograd adds to
// q's in two passes, instead of inside the attention's function with one pass (side-by-side timing).
const bool query_join_wanted = !environment_is("STUDIO_QUERY_JOIN", "0");
// STUDIO_KEY_VALUE_JOIN=0: training's keys and values by a product each, whose two gradients autograd adds (timing).
const bool key_values_join_wanted = !environment_is("STUDIO_KEY_VALUE_JOIN", "0");
// STUDIO_POSITION_COLUMNS=all: the position scores over all S columns even where the kept ones start at T-1 (timing).
const bool position_columns_trimmed = !environment_is("STUDIO_POSITION_COLUMNS", "all");
// STUDIO_KEY_VALUE_CACHE=0: inference carries hidden states and projects the memory's again (side-by-side timing).
bool key_value_cache_wanted = !environment_is("STUDIO_KEY_VALUE_CACHE", "0");
// STUDIO_STACKED_PRODUCTS=0: the keys and the values by a product each, and each layer's position keys by its own
// (side-by-side timing).
const bool stacked_products_wanted = !environment_is("STUDIO_STACKED_PRODUCTS", "0");

/// (B,L,2,H*dh) keys and values side by side -> the keys (which 0) or values (1) as (H,B,L,dh) views.
torch::Tensor heads_of(const torch::Tensor & key_values, int64_t which, int64_t H) {
    const int64_t B = key_values.size(0), L = key_values.size(1), dh = key_values.size(3) / H;
    return key_values.select(2, which).view({B, L, H, dh}).permute({2, 0, 1, 3});                   // (H,B,L,dh)
}

} // namespace

bool fused_attention_available(const torch::Device & device) {
#if TORCH_VERSION_MAJOR >= 2
    return device.is_cuda();
#else
    (void) device;
    return false;
#endif
}
void set_fused_attention(bool enabled) { fused_wanted = enabled; }
bool own_kernels_built() {
#ifdef STUDIO_CUDA_KERNELS
    return true;
#else
    return false;
#endif
}
void set_own_kernels(bool enabled) { own_kernel_wanted = enabled; }
bool own_kernels_enabled() { return own_kernels_built() && own_kernel_wanted && fused_wanted; }
std::string inference_attention_name(const torch::Device & device, torch::ScalarType dtype) {
    if (!fused_wanted || !fused_attention_available(device)) return "explicit";
    return dtype == torch::kBFloat16 && own_kernels_enabled() ? "studio-kernel" : "sdpa";
}
bool fused_attention_enabled() { return fused_wanted; }
void set_key_value_cache(bool enabled) { key_value_cache_wanted = enabled; }
bool key_value_cache_enabled() { return key_value_cache_wanted; }
bool stacked_products_enabled() { return stacked_products_wanted; }

torch::Tensor rel_shift(const torch::Tensor & x) {
    auto sizes = x.sizes().vec();                                            // (..., T, S)
    const int64_t T = sizes[sizes.size() - 2], S = sizes.back();
    if (!(torch::GradMode::is_enabled() && x.requires_grad()) && x.is_contiguous() && S >= T) {
        // With no gradient to carry, a strided view and no copy: row i starts T-1-i columns into row i of x, at flat
        // offset T-1 + i*(S-1), so the entries past a row's valid end (j > i + S-T, always masked) read the next
        // row's first ones. (A gradient through this overlapping view would take ATen's index_add path: the padded
        // copy below stays for training.)
        auto strides = x.strides().vec();
        strides[strides.size() - 2] = S - 1;
        return x.as_strided(sizes, strides, x.storage_offset() + T - 1);    // (..., T, S)
    }
    auto pad_sizes = sizes;
    pad_sizes.back() = 1;
    auto padded = torch::cat({torch::zeros(pad_sizes, x.options()), x}, -1); // (..., T, S+1)
    auto view_sizes = sizes;
    view_sizes[view_sizes.size() - 2] = S + 1;
    view_sizes.back() = T;
    padded = padded.view(view_sizes);                                        // (..., S+1, T)
    return padded.narrow(-2, 1, S).reshape(sizes);                           // (..., T, S)
}

RelativeAttentionImpl::RelativeAttentionImpl(RelativeAttentionOptions options_) : options(std::move(options_)) {
    reset();
}

void RelativeAttentionImpl::reset() {
    const int64_t D = options.hidden_dim(), H = options.num_heads(), dh = options.head_dim(), N = options.persistent();
    q_weight = register_parameter("q_weight", torch::empty({H * dh, D}));
    k_weight = register_parameter("k_weight", torch::empty({H * dh, D}));
    v_weight = register_parameter("v_weight", torch::empty({H * dh, D}));
    r_weight = register_parameter("r_weight", torch::empty({H * dh, D}));
    if (options.own_r_bias()) {
        u_bias = register_parameter("u_bias", torch::zeros({H * dh}));
        v_bias = register_parameter("v_bias", torch::zeros({H * dh}));
    }
    if (N > 0) {
        mem_k = register_parameter("mem_k", torch::empty({H, N, dh}));
        mem_v = register_parameter("mem_v", torch::empty({H, N, dh}));
    }
    o_weight = register_parameter("o_weight", torch::empty({D, H * dh}));
    o_bias = register_parameter("o_bias", torch::zeros({D}));
    if (options.gated() && H > 0) gate = register_module("gate", HardConcreteGate(HardConcreteGateOptions(H)));
    torch::NoGradGuard no_grad;
    const double s = 1.0 / std::sqrt((double) D);
    for (auto & p : parameters(/*recurse=*/false)) if (p.dim() >= 2 && p.numel() > 0) p.uniform_(-s, s);
}

void RelativeAttentionImpl::pretty_print(std::ostream & stream) const {
    stream << "studio::RelativeAttention(hidden=" << options.hidden_dim() << ", heads=" << options.num_heads()
           << ", head_dim=" << options.head_dim() << ", persistent=" << options.persistent()
           << ", own_r_bias=" << options.own_r_bias() << ", gated=" << options.gated() << ")";
}

void RelativeAttentionImpl::train(bool on) {
    stacked_weight.clear();
    torch::nn::Module::train(on);
}

int64_t RelativeAttentionImpl::parameters_per_head() const {
    const int64_t D = options.hidden_dim(), dh = options.head_dim();
    return 5 * dh * D + (options.own_r_bias() ? 2 * dh : 0) + 2 * options.persistent() * dh + (gate ? 1 : 0);
}

torch::Tensor RelativeAttentionImpl::explicit_attention(const torch::Tensor & q, const torch::Tensor & q_u, const torch::Tensor & k,
                                                       const torch::Tensor & val, const torch::Tensor & bd, const torch::Tensor & keep,
                                                       double scale) {
    const int64_t H = q.size(0), B = q.size(1), T = q.size(2), S = k.size(2), N = options.persistent();
    // A few heads at a time at CPU inference: every head is independent, and the whole (H,B,T,S+N) fp32 score tensor
    // is 60 MB per layer at batch 4 with 2048 persistent columns.
    const int64_t chunk = cpu_inference_block(q, H, B * T * (S + N) * (int64_t) sizeof(float));
    if (chunk >= H) return attention_of_heads(q, q_u, k, val, bd, keep, scale, 0, H);
    std::vector<torch::Tensor> parts;
    for (int64_t h = 0; h < H; h += chunk) {
        const int64_t n = std::min(chunk, H - h);
        parts.push_back(attention_of_heads(q.narrow(0, h, n), q_u.narrow(0, h, n), k.narrow(0, h, n), val.narrow(0, h, n),
                                           bd.narrow(0, h, n), keep, scale, h, n));
    }
    return torch::cat(parts, 0);                                             // (H,B,T,dh)
}

torch::Tensor RelativeAttentionImpl::attention_of_heads(const torch::Tensor & q, const torch::Tensor & q_u, const torch::Tensor & k,
                                                       const torch::Tensor & val, const torch::Tensor & bd, const torch::Tensor & keep,
                                                       double scale, int64_t first_head, int64_t heads) {
    const int64_t H = heads, B = q.size(1), T = q.size(2), dh = q.size(3), S = k.size(2), N = options.persistent();
    auto ac = torch::matmul(q_u, k.transpose(-1, -2));                                                  // (H,B,T,S)
    auto scores = ((ac + bd) * scale).to(torch::kFloat).masked_fill(keep.logical_not(), -INFINITY);
    if (N > 0) {
        // q . mem_k without the 1/sqrt(dh) factor and without u/v, as the reference computes it.
        auto keys = mem_k.narrow(0, first_head, H);                                                     // (H,N,dh)
        auto persistent_scores = torch::matmul(q.reshape({H, B * T, dh}), keys.to(q.dtype()).transpose(-1, -2)); // (H,B*T,N)
        scores = torch::cat({scores, persistent_scores.view({H, B, T, N}).to(torch::kFloat)}, -1);             // (H,B,T,S+N)
    }
    auto probs = F::dropout(torch::softmax(scores, -1), F::DropoutFuncOptions().p(options.attn_drop()).training(is_training()))
                     .to(val.dtype());
    if (N == 0) return torch::matmul(probs, val);                                                     // (H,B,T,dh)
    auto persistent_values = (mem_v.narrow(0, first_head, H) * std::sqrt((double) N)).to(val.dtype()); // (H,N,dh)
    auto persistent_part = torch::matmul(probs.narrow(-1, S, N).reshape({H, B * T, N}), persistent_values); // (H,B*T,dh)
    return torch::matmul(probs.narrow(-1, 0, S), val) + persistent_part.view({H, B, T, dh});
}

#ifdef STUDIO_CUDA_KERNELS
torch::Tensor RelativeAttentionImpl::kernel_attention(const torch::Tensor & q, const torch::Tensor & k, const torch::Tensor & val,
                                                     const torch::Tensor & r, const torch::Tensor & u, const torch::Tensor & v, double scale,
                                                     const torch::Tensor & persistent_out, const torch::Tensor & persistent_lse,
                                                     const torch::Tensor & k_memory, const torch::Tensor & v_memory) {
    const int64_t H = q.size(0), B = q.size(1), T = q.size(2), dh = q.size(3), N = options.persistent();
    const int64_t S = k.size(2) + (k_memory.defined() ? k_memory.size(2) : 0);
    c10::cuda::CUDAGuard device_guard(q.device());
    RelativeAttentionKernelArgs args;
    if (N > 0) {
        TORCH_CHECK(persistent_out.defined(), "relative attention kernel: the persistent columns' part is missing");
        args.persistent_out = persistent_out.data_ptr();
        args.persistent_parts = (int) persistent_out.size(0);
        TORCH_CHECK(args.persistent_parts >= 1 && args.persistent_parts <= kMaxPersistentParts, "relative attention kernel: ",
                    args.persistent_parts, " persistent parts, at most ", kMaxPersistentParts);
        args.persistent_lse = persistent_lse.data_ptr<float>();
        for (int d = 0; d < 3; ++d) {
            args.persistent_out_stride[d] = persistent_out.stride(d);
            args.persistent_lse_stride[d] = persistent_lse.stride(d);
        }
        args.persistent_value_scale = (float) std::sqrt((double) N);   // the reference's mem_v x sqrt(N), applied once
    }
    // The biases as they are (bf16 in a bf16 model, fp32 under autocast): no cast kernels.
    const bool bias_bf16 = u.scalar_type() == torch::kBFloat16 && v.scalar_type() == torch::kBFloat16;
    auto u_bias_in = bias_bf16 ? u.contiguous() : u.to(torch::kFloat).contiguous();
    auto v_bias_in = bias_bf16 ? v.contiguous() : v.to(torch::kFloat).contiguous();
    auto out = torch::empty({B, T, H, dh}, q.options());                                                 // (B,T,H,dh)
    args.q = q.data_ptr();
    args.k = k.data_ptr();
    args.v = val.data_ptr();
    args.r = r.data_ptr();
    args.u_bias = u_bias_in.data_ptr();
    args.v_bias = v_bias_in.data_ptr();
    args.bias_bf16 = bias_bf16;
    args.out = out.data_ptr();
    args.heads = H;
    args.batch = B;
    args.tgt_len = T;
    args.mem_len = S - T;
    args.head_dim = dh;
    args.same_length = options.same_length();
    args.scale = (float) scale;
    for (int d = 0; d < 3; ++d) {
        args.q_stride[d] = q.stride(d);
        args.k_stride[d] = k.stride(d);
        args.v_stride[d] = val.stride(d);
    }
    if (k_memory.defined()) {
        args.k_memory = k_memory.data_ptr();
        args.v_memory = v_memory.data_ptr();
        for (int d = 0; d < 3; ++d) {
            args.k_memory_stride[d] = k_memory.stride(d);
            args.v_memory_stride[d] = v_memory.stride(d);
        }
    }
    args.r_stride[0] = r.stride(0);
    args.r_stride[1] = r.stride(1);
    args.out_stride[0] = out.stride(2);
    args.out_stride[1] = out.stride(0);
    args.out_stride[2] = out.stride(1);
    check_kernel_launch(launch_relative_attention(args, current_cuda_stream(q.device())), "relative attention");
    return out.permute({2, 0, 1, 3});                                                                   // (H,B,T,dh)
}
#endif

bool RelativeAttentionImpl::caches_key_values() const {
    return key_value_cache_wanted && !torch::GradMode::is_enabled() && !is_training() && options.num_heads() > 0;
}

torch::Tensor RelativeAttentionImpl::key_value_weight(torch::ScalarType dtype) {
    // Kept between inference forwards (the weights do not change there): no concatenation a step.
    return stacked_weight.get({k_weight, v_weight}, (int64_t) dtype, [&] { return torch::cat({k_weight, v_weight}, 0).to(dtype); });
}

torch::Tensor RelativeAttentionImpl::key_value_rows(const torch::Tensor & rows, const torch::Tensor & into) {
    const int64_t B = rows.size(0), L = rows.size(1), D = rows.size(2), HD = options.num_heads() * options.head_dim();
    // The dtype F::linear would give (bf16 under autocast): out= products are not autocast.
    const auto dtype = rows.is_cuda() ? cuda_compute_dtype(rows) : rows.scalar_type();
    auto flat = rows.reshape({B * L, D}).to(dtype);                                       // (B*L,D)
    const bool fits = into.defined() && into.sizes() == torch::IntArrayRef({B, L, 2, HD}) && into.scalar_type() == dtype
                      && into.device() == rows.device() && into.is_contiguous();
    auto key_values = fits ? into : torch::empty({B, L, 2, HD}, flat.options());         // (B,L,2,H*dh)
    if (B * L == 0) return key_values;
    auto pairs = key_values.view({B * L, 2 * HD});                                         // (B*L,2*H*dh): keys, then values
    const auto weight = key_value_weight(dtype);                                           // (2*H*dh,D)
    if (stacked_products_wanted) {
        torch::mm_out(pairs, flat, weight.t());
        return key_values;
    }
    for (int64_t half = 0; half < 2; ++half) {
        auto part = pairs.narrow(1, half * HD, HD);                                        // (B*L,H*dh), rows 2*H*dh apart
        torch::mm_out(part, flat, weight.narrow(0, half * HD, HD).t());
    }
    return key_values;
}

bool RelativeAttentionImpl::own_kernel_applies(const torch::Tensor & x) const {
#ifdef STUDIO_CUDA_KERNELS
    return fused_wanted && own_kernel_wanted && x.is_cuda() && cuda_compute_dtype(x) == torch::kBFloat16
           && !torch::GradMode::is_enabled() && !is_training()
           && options.num_heads() > 0 && relative_attention_kernel_supports(options.head_dim());
#else
    (void) x;
    return false;
#endif
}

AttentionOutput RelativeAttentionImpl::forward(const torch::Tensor & x_n, const torch::Tensor & mem_n, const torch::Tensor & pos,
                                               const torch::Tensor & keep, const torch::Tensor & u, const torch::Tensor & v,
                                               const GateControl & gates, const torch::Tensor & keys_n,
                                               const torch::Tensor & memory_key_values, const torch::Tensor & key_values_into,
                                               const torch::Tensor & position_keys) {
    const int64_t B = x_n.size(0), T = x_n.size(1), H = options.num_heads(), dh = options.head_dim();
    AttentionOutput result;
    if (H == 0) {
        // No heads left: the output projection of nothing is its bias.
        result.out = o_bias.to(x_n.dtype()).expand({B, T, options.hidden_dim()});
        return result;
    }
    const bool cached = caches_key_values();
    TORCH_CHECK(cached || !memory_key_values.defined(), "attention: the memory holds cached keys and values, which only inference "
                "with the key/value cache takes; start from empty memory");
    const int64_t M = memory_key_values.defined() ? memory_key_values.size(1)
                      : keys_n.defined()          ? keys_n.size(1) - T
                                                  : mem_n.size(1);
    const int64_t S = T + M, N = options.persistent();
    const double scale = 1.0 / std::sqrt((double) dh);
    // Head-major layout (H,B,...): the position and persistent terms are the same for every batch row, so they
    // become H matrix products over B*T rows instead of B*H small ones.
    const auto & ub = options.own_r_bias() ? u_bias : u;
    const auto & vb = options.own_r_bias() ? v_bias : v;
    // The queries by a product of their own: the persistent columns' call waits for them alone (docs/benchmarks.md,
    // session 16: with the keys and values in the same product, the layer's critical path grew by what it saved).
    auto q = F::linear(x_n, q_weight).view({B, T, H, dh}).permute({2, 0, 1, 3});     // (H,B,T,dh)
#ifdef STUDIO_CUDA_KERNELS
    // Inference only (no gradient to carry, no dropout). The persistent columns need only q: their attention call
    // (cuDNN's or flash's) runs on a side stream while this one computes the keys, values and positions, and the two
    // join before our kernel (a fork and join that a CUDA graph captures as two branches: a layer of few heads fills
    // the GPU with neither).
    const bool own = own_kernel_applies(x_n) && ub.numel() == H * dh;
    torch::Tensor persistent_out, persistent_lse;
    std::optional<at::cuda::CUDAEvent> persistent_done;
    if (own && N > 0) {
        const auto main_stream = c10::cuda::getCurrentCUDAStream(q.device().index());
        auto side_stream = c10::cuda::getStreamFromPool(false, q.device().index());
        at::cuda::CUDAEvent q_ready;
        q_ready.record(main_stream);
        q_ready.block(side_stream);
        {
            c10::cuda::CUDAStreamGuard on_side(side_stream);
            std::tie(persistent_out, persistent_lse) = persistent_inference_attention(q, mem_k.to(q.dtype()), mem_v.to(q.dtype()));
        }
        persistent_done.emplace();
        persistent_done->record(side_stream);
    }
#endif
    // With the key/value cache, k and val hold the segment's T rows and k_memory, v_memory the memory's M rows: the
    // memory's come from the previous segment (the first time, from its hidden states), so only the segment's rows
    // are projected, half the key and value products at M = T.
    torch::Tensor k, val, k_memory, v_memory, memory_kv, segment_kv;          // (H,B,S|T|M,dh); (B,M|T,2,H*dh)
    torch::Tensor all_kv;                                                     // (B,S,2,H*dh), joined only where needed
    torch::Tensor projected_kv;                                               // (B,S,2,H,dh): training's keys and values by one product
    if (cached) {
        memory_kv = memory_key_values.defined() ? memory_key_values : key_value_rows(keys_n.defined() ? keys_n.narrow(1, 0, M) : mem_n);
        segment_kv = key_value_rows(x_n, M == T ? key_values_into : torch::Tensor());
        if (M > T) all_kv = torch::cat({memory_kv, segment_kv}, 1);
        if (M > 0) result.key_values = M == T ? segment_kv                       // (B,M,2,H*dh): the last M positions
                                       : M < T ? segment_kv.narrow(1, T - M, M)
                                               : all_kv.narrow(1, T, M);
        k = heads_of(segment_kv, 0, H);
        val = heads_of(segment_kv, 1, H);
        if (M > 0) {
            k_memory = heads_of(memory_kv, 0, H);
            v_memory = heads_of(memory_kv, 1, H);
        }
    } else {
        auto kv_in = keys_n.defined() ? keys_n : M > 0 ? torch::cat({mem_n, x_n}, 1) : x_n;             // (B,S,D)
        if (x_n.is_cuda() && torch::GradMode::is_enabled() && key_values_join_wanted) {
            // One product for both, which our training kernels take whole and give one gradient back: its backward is
            // then one product, without autograd's add of two. (Elsewhere the views' gradients are right, but slower.)
            projected_kv = F::linear(kv_in, torch::cat({k_weight, v_weight}, 0)).view({B, S, 2, H, dh});  // (B,S,2,H,dh)
            k = projected_kv.select(2, 0).permute({2, 0, 1, 3});                 // (H,B,S,dh)
            val = projected_kv.select(2, 1).permute({2, 0, 1, 3});
        } else {
            k = F::linear(kv_in, k_weight).view({B, S, H, dh}).permute({2, 0, 1, 3});   // (H,B,S,dh)
            val = F::linear(kv_in, v_weight).view({B, S, H, dh}).permute({2, 0, 1, 3}); // (H,B,S,dh)
        }
    }
    auto r = (position_keys.defined() ? position_keys : F::linear(pos, r_weight)).view({S, H, dh}).transpose(0, 1); // (H,S,dh)
    torch::Tensor heads;                                                     // (H,B,T,dh)
#ifdef STUDIO_CUDA_KERNELS
    if (persistent_done) persistent_done->block(c10::cuda::getCurrentCUDAStream(q.device().index())); // joined, whichever path follows
    // Our kernel reads the memory's rows and the segment's where they lie.
    if (own && kernel_takes(q, k, val, r) && (!k_memory.defined() || kernel_takes(q, k_memory, v_memory, r)))
        heads = kernel_attention(q, k, val, r, ub, vb, scale, persistent_out, persistent_lse, k_memory, v_memory);
#endif
    if (!heads.defined() && k_memory.defined()) {
        // The other paths take the keys and values as one sequence of S rows.
        if (!all_kv.defined()) all_kv = torch::cat({memory_kv, segment_kv}, 1);
        k = heads_of(all_kv, 0, H);
        val = heads_of(all_kv, 1, H);
    }
    // first_column: the position scores from distance S-1-first_column down; content_bias takes them without the
    // columns before (the explicit path's rel_shift wants all S).
    auto position_queries = [&] { return plus_head_bias(q, vb.view({H, 1, 1, dh}).to(q.dtype())); };    // (H,B,T,dh) q + v
    auto unshifted_position_scores = [&](int64_t first_column) {
        auto q_rows = position_queries().reshape({H, B * T, dh});                                         // (H,B*T,dh)
        auto rows_of_r = r.narrow(1, first_column, S - first_column);                                     // (H,P,dh)
        return torch::matmul(q_rows, rows_of_r.transpose(-1, -2)).view({H, B, T, S - first_column});      // (H,B,T,P)
    };
#if TORCH_VERSION_MAJOR >= 2
    if (!heads.defined() && fused_wanted && fused_attention_available(x_n.device())) {
        // Apart only where the kernels take the operands as they are: no gradient, no dropout, 16-aligned bias rows
        // and head dims (else the concatenation below). Training takes the same two kernels with their backward and
        // attention dropout, joined exactly.
        const bool apart = apart_wanted && N > 0 && !torch::GradMode::is_enabled() && !is_training() && S % 16 == 0 && dh % 8 == 0
                           && q.scalar_type() != torch::kDouble;
        const bool trainable_apart = !apart && apart_wanted && N > 0 && apart_attention_kernels_take(q, k);
        // Where the content columns have a kernel of their own (apart, or no persistent columns), their query is
        // q + u and the bias holds the position term alone. Only one kernel over both sets of keys takes q as the
        // query for all of them: u . k_j then joins the position term in the content columns' bias, so that the
        // persistent columns (keys mem_k x sqrt(dh), which the kernel's scale cancels) need no bias at all: q . mem_k,
        // as the reference computes it. (u . k_j in the bias cost a batched product, a pass over the bias's
        // gradient for its column sums and an add of a broadcast into k's gradient: 5% of a training step on an H200.)
        const bool u_in_bias = (N > 0 && !apart && !trainable_apart) || !u_in_query_wanted;
        torch::Tensor u_k;
        if (u_in_bias) u_k = torch::matmul(k, ub.view({H, 1, dh, 1}).to(k.dtype())).view({H, B, S});  // (H,B,S)
        auto content_queries = [&] { return u_in_bias ? q : plus_head_bias(q, ub.view({H, 1, 1, dh}).to(q.dtype())); };   // (H,B,T,dh)
        // With same_length, row i keeps keys i .. i+M, which read shifted columns T-1 .. S-1 only: the position
        // scores are formed from column T-1 on (rounded down to a multiple of 8 for aligned rows), about half of them.
        const int64_t first_column = options.same_length() && position_columns_trimmed ? (T - 1) / 8 * 8 : 0;
        // Training's content columns by our kernels where they take them: the position term goes in as q + v and the
        // position keys, and no bias is formed.
        const bool own_content = trainable_apart && !u_in_bias && content_attention_kernels_take(q, k, options.same_length());
        torch::Tensor content_bias;
        if (!own_content) content_bias = studio::content_bias(unshifted_position_scores(first_column), u_k, keep, scale);  // (H,B,T,S)
        auto bias = content_bias, keys = k, values = val;
        if (apart) {
            heads = persistent_apart_attention(q, content_queries(), k, val, content_bias, mem_k, mem_v, scale);
        } else if (trainable_apart) {
            PositionTerm position;   // our kernels' operands, in place of the bias
            torch::Tensor content_q;
            if (own_content) {
                position = {{}, r.narrow(1, first_column, S - first_column), first_column};
                // q + u and q + v formed inside, so that q's three gradient terms are summed in one pass.
                if (query_join_wanted) position.query_biases = torch::stack({ub.view({H, dh}), vb.view({H, dh})});   // (2,H,dh)
                else position.queries = position_queries();
            }
            if (!position.query_biases.defined()) content_q = content_queries();
            if (own_content && projected_kv.defined()) position.key_values = projected_kv;
            const bool key_values_whole = position.key_values.defined();
            heads = trainable_apart_attention(q, content_q, key_values_whole ? torch::Tensor() : k, key_values_whole ? torch::Tensor() : val,
                                              own_content ? content_bias : content_bias.to(q.dtype()), mem_k.to(q.dtype()),
                                              (mem_v * std::sqrt((double) N)).to(q.dtype()), scale,
                                              is_training() ? options.attn_drop() : 0.0, AttentionParts::kernels, position);
        } else if (N > 0) {
            // Only contiguous operands: the persistent block is B copies of one (H,1,N,dh) tensor joined along the
            // batch, because copying from a broadcast (expanded) view takes a slow generic strided kernel.
            auto per_row = [&](const torch::Tensor & t) { return torch::cat(std::vector<torch::Tensor>((size_t) B, t), 1); }; // (H,B,N,dh)
            keys = torch::cat({k.contiguous(), per_row((mem_k * std::sqrt((double) dh)).to(k.dtype()).unsqueeze(1))}, 2);       // (H,B,S+N,dh)
            values = torch::cat({val.contiguous(), per_row((mem_v * std::sqrt((double) N)).to(val.dtype()).unsqueeze(1))}, 2);
            bias = torch::cat({content_bias, torch::zeros({H, B, T, N}, content_bias.options())}, -1);                          // (H,B,T,S+N)
        }
        if (!heads.defined())
            heads = at::scaled_dot_product_attention(content_queries(), keys, values, bias.to(q.dtype()), is_training() ? options.attn_drop() : 0.0,
                                                     /*is_causal=*/false, scale);
    }
#endif
    if (!heads.defined())
        heads = explicit_attention(q, q + ub.view({H, 1, 1, dh}).to(q.dtype()), k, val, rel_shift(unshifted_position_scores(0)), keep, scale);
    // The gates scale the output projection's columns head by head rather than the heads' outputs: the same product,
    // at a cost that does not grow with the batch (a pass over the (H,B,T,dh) outputs and two in the backward were
    // ~1 ms of a training step at batch 24).
    auto out_weight = o_weight;                                              // (D,H*dh)
    if (gates.enabled && gate) {
        auto weight = gates.weight;                                          // (H,)
        if (!weight.defined()) {
            auto sample = gate->forward(gates.noise);
            weight = gates.output_scaling ? output_scaled(sample, H) : sample.gate;
            result.closed = sample.closed;
        }
        out_weight = gated_weight(o_weight, weight, dh);                    // (D,H*dh)
    }
    auto merged = heads.permute({1, 2, 0, 3}).reshape({B * T, H * dh});     // (B*T,H*dh)
    // addmm on the rows: the bias joins the product's epilogue (a 3-D linear added it in a broadcast pass of its own).
    // On the GPU the bias's gradient as a product (the CPU's column sums are not slow).
    auto projected = merged.is_cuda() && bias_by_product_wanted ? biased_product(merged, out_weight, o_bias, BiasGradient::ones_row)
                                                                 : torch::addmm(o_bias, merged, out_weight.t());   // (B*T,D)
    result.out = projected.view({B, T, options.hidden_dim()});              // (B,T,D)
    return result;
}

} // namespace studio
