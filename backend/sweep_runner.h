// `studio --batch CONFIG` when CONFIG has a "sweep": runs every point one after another, each as its own
// `studio --batch` process in <sweep run dir>/<point name>/, and keeps sweep.json and sweep.md up to date.
#pragma once

#include <nlohmann/json.hpp>

#include "pipeline.h"

namespace studio {

/// Points that finished are skipped with --resume; an unfinished one continues from its last checkpoint. A failed
/// point does not stop the others. Exit codes: 0 every point finished, 1 some point failed, 2 bad config or input
/// (nothing ran), 3 stopped by a signal (continue with --resume).
int run_sweep(const BatchOptions & options, const nlohmann::json & config);

} // namespace studio
