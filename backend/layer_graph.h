// Training's layer stack as two CUDA graphs: its forward and its backward, each captured once and replayed every step.
// A training step of the reference model issues some 2,600 kernels, most of them in the layers; at small batches the
// host took longer to issue them than the GPU to run them (docs/benchmarks.md). Replayed, the layers cost the host two
// launches; the gates' sampling and L0 term replay with them (their noise is a static input, drawn on the CPU). The
// embedding, the loss and the optimizer stay eager: the adaptive softmax must read its clusters' sizes on the host, and
// none of them issue many kernels.
//
// The graphs replay the very kernels an eager step runs, on the same random streams: CUDA's graph-safe generator gives
// every captured kernel the offset it would have had eagerly, and each step re-seeds the generator, so a replayed step
// draws the dropout masks an eager one draws (a run that resumes eagerly for its warm-up steps continues exactly).
#pragma once

#include <memory>
#include <vector>

#include <torch/types.h>

#include "language_model.h"

namespace studio {

class LayerGraph {
public:
    /// Eager steps before the capture: the first creates cuBLAS handles and loads kernels, which a capture must not.
    static constexpr int64_t kWarmupSteps = 2;

    LayerGraph();
    ~LayerGraph();
    LayerGraph(const LayerGraph &) = delete;
    LayerGraph & operator=(const LayerGraph &) = delete;

    /// Whether this build can capture training layers at all (CUDA and LibTorch 2).
    static bool available();
    /// Whether this forward's layers run through the graph: a CUDA model in training with gradients on.
    bool takes(const LanguageModelImpl & model, const torch::Tensor & h) const;
    /// The layers of one training forward (model.run_layers), differentiable in h and the L0 term's and the layers'
    /// parameters (whose gradients the replayed backward adds into their .grad() in place). Runs eagerly for the warm-up steps,
    /// captures on the next and replays from then on; a forward of another shape or setting starts over. memory: a
    /// (B,M,D) tensor per layer. The memory returned lives in the graph's buffers and holds until the
    /// next replay: pass it to the next forward (it is copied in first) or copy it.
    LayerStackOutput run(LanguageModelImpl & model, const torch::Tensor & h, const std::vector<torch::Tensor> & memory,
                         const GateSettings & gates, const torch::Tensor & noise);
    /// Steps run from the graph so far.
    int64_t replays() const;

    struct State;

private:
    std::unique_ptr<State> state_;
};

} // namespace studio
