// A sweep's summary: one row per point, read back from the point's run directory (events.jsonl), written as
// <sweep run dir>/sweep.json and sweep.md (docs/run-directory.md, "Sweeps"). No LibTorch.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace studio {

/// The bench row the summary's headline speed-up comes from: the reference's batch 32, in bf16 (issue [repro]).
constexpr int64_t kSweepSpeedupBatch = 32;
constexpr const char * kSweepSpeedupDtype = "bf16";

/// One point's row from its run directory: status ("pending" without events, else the last run_end's "ok", "error",
/// "stopped", or "interrupted" when the run never ended), model type, heads kept (prune event, else the open gates),
/// sparsity, layer and total parameters before and after pruning, valid/test perplexity of the pruned model (else the
/// gated, else the dense one; "ppl_model" says which), the bench rows and the speed-up of the pruned model.
nlohmann::json sweep_point_row(const std::string & run_dir);
/// sweep.md: a table with a column per swept field, then the errors of failed points.
std::string sweep_markdown(const nlohmann::json & summary);
/// Writes sweep.json and sweep.md into the sweep's run directory (each atomically).
void sweep_write_summary(const std::string & sweep_dir, const nlohmann::json & summary);

} // namespace studio
