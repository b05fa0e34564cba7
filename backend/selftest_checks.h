// Checks of `studio selftest` (selftest.cpp) that live in their own sources: the loss's (selftest_loss.cpp) and the
// training step's (selftest_training.cpp). Each prints one line per case in the selftest's style and returns whether all
// its cases passed.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/types.h>

#include "config.h"

namespace studio {

/// Values of one computation compared as a whole: e.g. an output, then the gradients of its input and parameters.
struct Outputs {
    std::vector<torch::Tensor> values;
};
/// Puts the attention and kernel switches that checks turn (fused attention, our kernels, the rows from which
/// training's persistent part takes cuDNN, the inference call's halves, the key/value cache) back as they were when it was made, however the check ends.
class KernelSwitchesGuard {
public:
    KernelSwitchesGuard();
    ~KernelSwitchesGuard();
    KernelSwitchesGuard(const KernelSwitchesGuard &) = delete;
    KernelSwitchesGuard & operator=(const KernelSwitchesGuard &) = delete;

private:
    bool fused_, own_;
    int64_t cudnn_min_rows_, inference_cudnn_from_, inference_splits_;
    bool key_value_cache_, content_kernels_;
};

/// Largest error of a tensor relative to the reference's largest magnitude.
double relative_error(const torch::Tensor & a, const torch::Tensor & reference);
/// Largest relative error over all tensors (infinite when the counts differ).
double worst_error(const Outputs & a, const Outputs & reference);

/// The small All-attention model of the training checks, at the numerics check's shapes: 4 layers of 4 heads of 32,
/// 128 persistent vectors, 64 tokens after 64 of memory, 1,000 words in three clusters, no dropout.
ModelConfig small_training_config();

/// The adaptive softmax's log-probs on the device against the CPU in float64 (our kernels on and off, where built),
/// and at the reference's 267,735 words our kernels against LibTorch's path.
bool check_loss(const torch::Device & device);
/// The adaptive input's training path on a GPU (every cluster gathers every token) against the CPU's in float64:
/// the embedding and every table's and projection's gradient.
bool check_adaptive_input(const torch::Device & device);
/// log_softmax_at through our CUDA kernels against float64: forward and gradient, fp32 and bf16 logits, -inf
/// padding columns, rows up to 160,000 wide and strided rows. CUDA builds with our kernels on.
bool check_log_softmax_at(const torch::Device & device);
/// The training tail's kernels (tail_log_prob.h) against float64: forward and the three gradients, each tail width
/// and both ways the kernels write. CUDA builds with our kernels on.
bool check_trainable_tail(const torch::Device & device);
/// Training steps whose layers replay from CUDA graphs (layer_graph.h) against eager steps: the same losses and
/// parameters up to eager's own run-to-run noise, so the same dropout streams. CUDA builds on LibTorch 2.
bool check_layer_graph(const torch::Device & device);
/// LAMB's update by our CUDA kernels against LibTorch's operations (CUDA builds with our kernels).
bool check_lamb_kernels(const torch::Device & device);
/// The content columns' attention bias by our CUDA kernels (content_bias.h) against LibTorch's operations in float64:
/// the bias, -inf off the kept band, and the gradients; fp32 and bf16, with and without same_length, without a key
/// bias, and from position scores without the columns no kept entry reads.
bool check_content_bias(const torch::Device & device);
/// Training's content columns by our kernels (content_attention.h) against float64: the forward seeded by a persistent
/// part, every gradient, with and without dropout (the reference draws the kernels' own keep mask); and training
/// attention with the position term through them against the memory-efficient path with its bias. CUDA builds with our
/// kernels on LibTorch 2.
bool check_content_attention(const torch::Device & device);
/// A gated layer's output weight by our CUDA kernels (gated_weight.h) under bf16 autocast against LibTorch's
/// operations in float64: the bf16 weight and the gradients of the weight and of the gates.
bool check_gated_weight(const torch::Device & device);
/// biased_product (biased_product.h) on the device under bf16 autocast, both ways of forming the bias's gradient,
/// against addmm in float64: the output and the three gradients, at a tail's shapes (a narrow input, wide output).
bool check_biased_product(const torch::Device & device);
/// The join of two attention parts (apart_attention.h) by our CUDA kernel against float64 operations, at the
/// layouts the memory-efficient and flash kernels write.
/// plus_head_bias (q + u) in the layouts the model gives it (batch-major, with padded rows, head-major), fp32 and
/// bf16, forward and gradients against float64 operations.
bool check_plus_head_bias(const torch::Device & device);
bool check_attention_merge(const torch::Device & device);
/// The segment norm with gradients (transformer_layer.h) by our CUDA kernels under bf16 autocast against float64
/// operations: both outputs, and the gradients of the segment and of the norm's parameters; strided memory, no memory,
/// and rows up to the kernel's widest.
bool check_segment_norm_training(const torch::Device & device);

} // namespace studio
