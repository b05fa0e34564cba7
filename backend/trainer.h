// The training loop shared by the train and gate stages, and evaluation over a whole split with memory.
#pragma once

#include <atomic>
#include <functional>
#include <string>

#include <torch/types.h>

#include "checkpoint.h"
#include "communicator.h"
#include "config.h"
#include "events.h"
#include "language_model.h"
#include "wikitext.h"

namespace studio {

/// What every stage of a run shares.
struct RunContext {
    Config config;
    std::string run_dir;
    torch::Device device = torch::kCPU;
    bool bf16 = false;                          ///< autocast on CUDA
    Communicator * comm = nullptr;
    EventWriter * events = nullptr;             ///< rank 0 only; null elsewhere
    const std::atomic<bool> * stop = nullptr;   ///< set by SIGTERM/SIGINT: checkpoint and stop
    bool resume = false;
    bool progress = true;                       ///< the live terminal line (rank 0)
    int64_t rank() const { return comm ? comm->rank() : 0; }
    int64_t world_size() const { return comm ? comm->world_size() : 1; }
    void event(const std::string & type, nlohmann::json fields) const;
};

struct EvalResult {
    double loss = 0;   ///< token-weighted mean cross-entropy
    double ppl = 0;    ///< exp(loss)
    int64_t tokens = 0;
};

/// Evaluates over the whole split, memory carried, deterministic gates when `gates.enabled`.
EvalResult evaluate(LanguageModelImpl & model, const std::vector<int32_t> & tokens, int64_t batch_size, const RunContext & ctx,
                    const GateSettings & gates = {});

enum class StageOutcome { Finished, Stopped };

/// Trains `model` for one stage ("train" or "gate"), resuming from the stage's latest checkpoint when ctx.resume.
/// The model is on ctx.device. Writes train/gates/eval/checkpoint events and checkpoints.
StageOutcome run_training_stage(RunContext & ctx, const std::string & stage, LanguageModel model, const Corpus & corpus);

/// Gate settings a stage uses in its forward passes (gating on in the gate stage and for gated models' eval).
GateSettings stage_gate_settings(const Config & config, const std::string & stage, const LanguageModelImpl & model);

} // namespace studio
