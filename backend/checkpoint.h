// Checkpoints: checkpoints/<stage>-<step>/ holding model.safetensors, optimizer.safetensors, one memory file per
// rank and state.json (training position, model config, file checksums). Everything is written into a hidden
// staging folder, synced, and renamed into place as the last act, so a folder under its final name is complete
// and a crash mid-write loses nothing but the checkpoint being written.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "config.h"
#include "tensor_io.h"

namespace studio {

class LanguageModelImpl;
class Optimizer;

/// Where a stage is: enough to continue it exactly.
struct TrainingState {
    std::string stage = "train";
    int64_t step = 0;               ///< optimizer steps done
    int64_t total_steps = 0;
    int64_t epoch = 0;
    int64_t batch_in_epoch = 0;     ///< next batch of the epoch
    int64_t tokens = 0;             ///< tokens trained on (all ranks)
    double elapsed_s = 0;
    bool complete = false;          ///< the stage finished
    nlohmann::json extra = nlohmann::json::object(); ///< e.g. the target-sparsity multipliers
};

nlohmann::json training_state_to_json(const TrainingState & s);
TrainingState training_state_from_json(const nlohmann::json & j, const std::string & source);

struct LoadedCheckpoint {
    std::string path;
    TrainingState state;
    ModelConfig model_config;
    TensorMap model, optimizer, memory;
};

/// Creates a checkpoint's staging folder empty (rank 0, before the ranks write into it), removing what a killed
/// attempt at the same step left there; a full disk fails like a failed checkpoint write, naming the checkpoint a
/// --resume would continue from.
void checkpoint_create_staging(const std::string & staging);
void checkpoint_write_memory(const std::string & staging, int64_t rank, const std::vector<torch::Tensor> & memory);
/// Rank 0: writes the model, optimizer and state into the staging folder (made by checkpoint_create_staging, holding the
/// ranks' memory files), renames it into place and deletes the oldest checkpoints of the stage beyond `keep`. Returns
/// the final path.
std::string checkpoint_commit(const std::string & run_dir, const std::string & staging, const LanguageModelImpl & model,
                              const Optimizer * optimizer, const TrainingState & state, int64_t keep);
/// Reads and verifies a checkpoint (checksums, formats). With rank >= 0 it also reads the memory, cut for `rank` of
/// `world_size` ranks (whatever world size wrote it).
LoadedCheckpoint checkpoint_load(const std::string & path, int64_t rank = -1, int64_t world_size = 1);
/// Refuses a checkpoint whose architecture differs from `config`, naming the first difference, e.g.
/// "checkpoint runs/x/checkpoints/train-00000400: layer 3 has 5 heads, config says 8". Gates may differ.
void checkpoint_check_model(const LoadedCheckpoint & checkpoint, const ModelConfig & config);
/// Loads weights; missing gate tensors are allowed when allow_missing_gates (a baseline entering the gate stage).
void checkpoint_load_model(const LoadedCheckpoint & checkpoint, LanguageModelImpl & model, bool allow_missing_gates);
std::vector<torch::Tensor> checkpoint_memory(const LoadedCheckpoint & checkpoint, int64_t layers, const torch::Device & device);

} // namespace studio
