// `studio bench` and the bench stage: inference speed of the dense, masked (gates closing heads in a full-size
// model, what most tools give) and physically pruned models on the reference workload (segments of tgt_len tokens
// with mem_len tokens of memory carried), llama-bench style: warm-up, repetitions, median and p10-p90.
#pragma once

#include <string>
#include <vector>

#include "bench_report.h"
#include "config.h"
#include "commands.h"
#include "language_model.h"

namespace studio {

struct RunContext;

struct BenchModel {
    std::string variant;
    LanguageModel model{nullptr};
    GateSettings gates;
    int64_t heads = 0;
    int64_t layer_params = 0;   ///< transformer-layer parameters without gates
};

/// dense / masked / pruned models of a finished run (its final checkpoint and pruned/).
std::vector<BenchModel> bench_models_from_run(const std::string & run_dir, const Config & config);
/// Random-weight models from a config: the dense model, and for every bench.head_lists entry a masked and a
/// pruned model keeping that many heads per layer (the reference's own cases need no training).
std::vector<BenchModel> bench_models_from_config(const Config & config);
/// Times every model x device x dtype x batch combination of `bench`.
std::vector<BenchRow> bench_measure(std::vector<BenchModel> & models, const BenchConfig & bench, const ModelConfig & shape, bool verbose);
/// Writes bench.json, bench.csv and bench.md into out_dir.
void bench_write(const std::string & out_dir, const std::vector<BenchRow> & rows, const nlohmann::json & meta);

/// The bench stage of a run.
void bench_run_stage(RunContext & ctx);



} // namespace studio
