// Paths inside a run directory and the list of its complete checkpoints (docs/run-directory.md). No LibTorch.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace studio {

struct CheckpointRef {
    std::string path;     ///< runs/x/checkpoints/train-00000400
    std::string stage;    ///< "train" or "gate"
    int64_t step = 0;
};

std::string run_checkpoints_dir(const std::string & run_dir);
std::string run_events_path(const std::string & run_dir);
std::string run_config_path(const std::string & run_dir);
std::string run_pruned_dir(const std::string & run_dir);
std::string run_bench_dir(const std::string & run_dir);
/// The config file a command reads from `source`: the file itself, or a folder's config.json. A folder without one
/// is refused: ConfigError("<command> error: SOURCE has no config.json (name <accepted>)").
std::string source_config_path(const std::string & source, const std::string & command, const std::string & accepted);
/// checkpoints/<stage>-<step, 8 digits>
std::string checkpoint_dir_name(const std::string & stage, int64_t step);
/// <run>/checkpoints/.<stage>-<step>.staging: a checkpoint being written (every rank writes its memory file there
/// before rank 0 commits it under its final name).
std::string checkpoint_staging_dir(const std::string & run_dir, const std::string & stage, int64_t step);
/// Complete checkpoints (those renamed into place) of a stage ("" = any), oldest first.
std::vector<CheckpointRef> run_list_checkpoints(const std::string & run_dir, const std::string & stage = "");
std::optional<CheckpointRef> run_latest_checkpoint(const std::string & run_dir, const std::string & stage);
/// 64-bit FNV-1a of a file's bytes, as hex: the manifest that catches bit flips in checkpoints.
std::string file_checksum(const std::string & path);
std::string bytes_checksum(const std::string & bytes);

} // namespace studio
