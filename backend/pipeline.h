// `studio --batch CONFIG`: runs the config's stages (train, gate, prune, eval, bench) into a run directory.
#pragma once

#include <string>

namespace studio {

struct BatchOptions {
    std::string config_path;
    std::string run_dir;         ///< empty = <runs_dir>/<name>
    bool resume = false;
    bool progress = true;
};

/// Exit codes: 0 done, 1 failed (error event written), 2 bad config or input, 3 stopped by a signal (resumable).
int run_batch(const BatchOptions & options);

/// Where the checkpoint to start the gate stage (or prune) from lives: a checkpoint folder, or a run folder
/// (its latest complete checkpoint of `stage`).
std::string resolve_checkpoint(const std::string & path_or_run, const std::string & stage);

} // namespace studio
