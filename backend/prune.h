// Physical head removal: a smaller model that keeps only the open heads of every layer (their q/k/v/r rows, u/v
// slices, persistent vectors and output-projection columns), with attention output scaling folded into the output
// projection. In eval mode it computes exactly what the gated model computes (reference-model.md section 2.5).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "language_model.h"

namespace studio {

struct PrunedModel {
    LanguageModel model{nullptr};
    std::vector<std::vector<int64_t>> heads_kept;   ///< per layer, indices into the original layer's heads
};

/// Heads that the eval rule keeps open in every layer (all heads of an ungated model).
std::vector<std::vector<int64_t>> open_heads(const LanguageModelImpl & model);
/// Builds the pruned model from `gated` (any device; the result is on the same device). `output_scaling` says whether
/// the gated model scaled its open heads (technique 3); the scale is then folded into W_o.
PrunedModel prune_heads(const LanguageModelImpl & gated, const std::vector<std::vector<int64_t>> & keep, bool output_scaling);

/// Writes pruned/: model.safetensors (its metadata holds the model config), heads.json, config.json (the run's config
/// with the pruned model section). Returns a JSON summary for the prune event.
nlohmann::json prune_write(const std::string & out_dir, const PrunedModel & pruned, const LanguageModelImpl & original,
                           const nlohmann::json & run_config);
/// The prune stage and `studio prune`: loads a checkpoint, removes the heads its gates close (eval rule of
/// `config.gate`, output scaling folded when the config used it), writes out_dir, prints a one-line summary and
/// returns the summary (the prune event).
nlohmann::json prune_checkpoint(const std::string & checkpoint, const Config & config, const nlohmann::json & run_config,
                                const std::string & out_dir);
/// Loads a model written by prune_write (or any model.safetensors carrying its config) onto the CPU.
LanguageModel pruned_load(const std::string & dir);

} // namespace studio
