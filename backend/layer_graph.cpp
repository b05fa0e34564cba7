#include "layer_graph.h"

#include <optional>

#include <torch/torch.h>
#include <torch/version.h>

#if defined(STUDIO_CUDA) && TORCH_VERSION_MAJOR >= 2
#define STUDIO_LAYER_GRAPH 1
#include <ATen/autocast_mode.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "device.h"

namespace studio {

namespace {
/// What a capture is valid for: the model, the shapes, the dtypes and the gate settings.
std::vector<int64_t> capture_key(const LanguageModelImpl & model, const torch::Tensor & h, const std::vector<torch::Tensor> & memory,
                                 const GateSettings & gates, const torch::Tensor & noise) {
    std::vector<int64_t> key = {(int64_t) reinterpret_cast<intptr_t>(&model), h.device().index(), (int64_t) h.scalar_type(),
                                (int64_t) cuda_compute_dtype(h), gates.enabled, gates.output_scaling, noise.defined() ? noise.numel() : -1,
                                (int64_t) memory.size(), memory.front().size(1), (int64_t) memory.front().scalar_type()};
    for (auto s : h.sizes()) key.push_back(s);
    return key;
}
} // namespace

#ifdef STUDIO_LAYER_GRAPH
struct LayerGraph::State {
    std::vector<int64_t> key;
    int64_t eager_steps = 0, replays = 0;
    bool gated = false, captured = false;
    // Static buffers: the graphs read and write these addresses on every replay.
    torch::Tensor h_in;                   // (B,T,D) leaf; its .grad() takes the backward's gradient
    torch::Tensor noise_in;               // (total heads,) the gates' noise
    torch::Tensor memory_in;              // (L,B,M,D)
    // (B,M,D) per layer: the captured forward's own tensors (each layer's input rows: in the graphs' pool, or h_in's),
    // which every replay writes. Held here, so that the backward's capture takes none of their blocks.
    std::vector<torch::Tensor> memory_out;
    torch::Tensor h_out, grad_out;        // (B,T,D)
    torch::Tensor l0_out, grad_l0, closed_out;   // scalars, when gated
    at::cuda::CUDAGraph forward_graph, backward_graph;

    void capture(LanguageModelImpl & model, const GateSettings & gates);
    void load_memory(const std::vector<torch::Tensor> & memory);
};

namespace {
/// One replay of the captured layers as an autograd node: its backward replays the captured backward, which adds the
/// parameters' gradients into their .grad() in place (the optimizer's flat buffers) and leaves those of the inputs.
struct ReplayLayers : public torch::autograd::Function<ReplayLayers> {
    /// -> {hidden (B,T,D)} or, gated, {hidden, l0}
    static torch::autograd::variable_list forward(torch::autograd::AutogradContext * ctx, LayerGraph::State * state, const torch::Tensor & h,
                                                  const torch::Tensor & noise) {
        ctx->saved_data["state"] = (int64_t) reinterpret_cast<intptr_t>(state);
        state->h_in.detach().copy_(h);
        if (state->gated) state->noise_in.copy_(noise);
        state->forward_graph.replay();
        ++state->replays;
        if (!state->gated) return {state->h_out.detach()};
        return {state->h_out.detach(), state->l0_out.detach()};
    }
    static torch::autograd::variable_list backward(torch::autograd::AutogradContext * ctx, torch::autograd::variable_list grads) {
        auto * state = reinterpret_cast<LayerGraph::State *>((intptr_t) ctx->saved_data["state"].toInt());
        // An output the loss did not use has no gradient: zero.
        if (grads[0].defined()) state->grad_out.copy_(grads[0]);
        else state->grad_out.zero_();
        if (state->gated) {
            if (grads.size() > 1 && grads[1].defined()) state->grad_l0.copy_(grads[1]);
            else state->grad_l0.zero_();
        }
        state->backward_graph.replay();
        return {torch::Tensor(), state->h_in.grad().detach(), torch::Tensor()};
    }
};
} // namespace

void LayerGraph::State::load_memory(const std::vector<torch::Tensor> & memory) {
    torch::NoGradGuard no_grad;
    if (memory_in.size(2) == 0) return;
    // Every layer's memory in one launch, wherever it lies: the last replay's tensors or the caller's. It must be a
    // copy: a replay's layer writes its input rows (the next memory) in the kernel that reads its memory.
    at::stack_out(memory_in, memory, 0);
}

void LayerGraph::State::capture(LanguageModelImpl & model, const GateSettings & gates) {
    const auto device = h_in.device();
    device_synchronize(device);   // as LibTorch's capture helpers do: nothing earlier is in flight on any stream
    // The capture allocates from the graphs' own pool, which the eager steps' cached blocks cannot serve, and the
    // allocator cannot free cached blocks while a stream captures; torch.cuda.graph empties the cache here too.
    c10::cuda::CUDACachingAllocator::emptyCache();
    auto side = c10::cuda::getStreamFromPool(false, device.index());
    {
        c10::cuda::CUDAStreamGuard on_side(side);
        // The autocast cache would hand the capture casts made before it, which replays would never redo; uncached,
        // each weight is cast inside the graph (once a forward, as the cache would have it).
        struct AutocastCacheOff {
            const bool previous = at::autocast::is_autocast_cache_enabled();
            AutocastCacheOff() { at::autocast::set_autocast_cache_enabled(false); }
            ~AutocastCacheOff() { at::autocast::set_autocast_cache_enabled(previous); }
        };
        std::optional<AutocastCacheOff> cache_off(std::in_place);
        forward_graph.capture_begin();
        auto out = model.run_layers(h_in, memory_in.unbind(0), gates, gated ? noise_in : torch::Tensor());
        // No copy into buffers of our own inside the graph (16 passes over (B,M,D) a step): the memory is read from
        // where the replay leaves it, before the next replay's forward (and h_in's copy) overwrites it.
        memory_out.clear();
        for (const auto & layer_memory : out.memory) memory_out.push_back(layer_memory.detach());
        h_out = out.hidden;
        l0_out = out.l0;
        closed_out = out.closed;
        forward_graph.capture_end();
        cache_off.reset();
        TORCH_CHECK(l0_out.defined() == gated, "layer graph: a ", gated ? "gated" : "ungated", " step's captured layers ",
                    gated ? "returned no" : "returned an", " L0 term");
        grad_out = torch::zeros_like(h_out);
        if (gated) grad_l0 = torch::zeros_like(l0_out);
        backward_graph.capture_begin(forward_graph.pool());
        h_in.grad().zero_();
        if (gated) torch::autograd::backward({h_out, l0_out}, {grad_out, grad_l0});
        else torch::autograd::backward({h_out}, {grad_out});
        backward_graph.capture_end();
        // Drops the captured autograd graph; its buffers stay in the graphs' pool.
        h_out = h_out.detach();
        if (gated) l0_out = l0_out.detach();
    }
    side.synchronize();
}

LayerGraph::LayerGraph() = default;
LayerGraph::~LayerGraph() = default;

bool LayerGraph::available() { return true; }

bool LayerGraph::takes(const LanguageModelImpl & model, const torch::Tensor & h) const {
    return h.is_cuda() && model.is_training() && torch::GradMode::is_enabled();
}

LayerStackOutput LayerGraph::run(LanguageModelImpl & model, const torch::Tensor & h, const std::vector<torch::Tensor> & memory,
                                 const GateSettings & gates, const torch::Tensor & noise) {
    auto key = capture_key(model, h, memory, gates, noise);
    if (!state_ || state_->key != key) {
        state_ = std::make_unique<State>();
        state_->key = std::move(key);
    }
    auto & s = *state_;
    if (s.eager_steps < kWarmupSteps) {
        ++s.eager_steps;
        return model.run_layers(h, memory, gates, noise);
    }
    if (!s.captured) {
        const int64_t L = model.config.num_layers, B = h.size(0), M = memory.front().size(1), D = h.size(2);
        s.gated = noise.defined();
        s.h_in = torch::empty_like(h).requires_grad_(true);
        s.h_in.mutable_grad() = torch::zeros_like(h);
        if (s.gated) s.noise_in = torch::empty_like(noise);
        s.memory_in = torch::empty({L, B, M, D}, memory.front().options());            // (L,B,M,D)
        s.load_memory(memory);
        {
            torch::NoGradGuard no_grad;
            s.h_in.copy_(h);
            if (s.gated) s.noise_in.copy_(noise);
        }
        s.capture(model, gates);
        s.captured = true;
    } else {
        s.load_memory(memory);
    }
    LayerStackOutput out;
    auto outputs = ReplayLayers::apply(&s, h, s.gated ? noise : torch::empty({0}, h.options()));
    out.hidden = outputs[0];
    if (s.gated) {
        out.l0 = outputs[1];
        out.closed = s.closed_out;
    }
    out.memory = s.memory_out;
    return out;
}

int64_t LayerGraph::replays() const { return state_ ? state_->replays : 0; }

#else

struct LayerGraph::State {};

LayerGraph::LayerGraph() = default;
LayerGraph::~LayerGraph() = default;

bool LayerGraph::available() { return false; }

bool LayerGraph::takes(const LanguageModelImpl &, const torch::Tensor &) const { return false; }

LayerStackOutput LayerGraph::run(LanguageModelImpl & model, const torch::Tensor & h, const std::vector<torch::Tensor> & memory,
                                 const GateSettings & gates, const torch::Tensor & noise) {
    (void) capture_key;
    return model.run_layers(h, memory, gates, noise);
}

int64_t LayerGraph::replays() const { return 0; }

#endif

} // namespace studio
