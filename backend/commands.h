// The command-line verbs of `studio`, Torch-free so app/main.cpp compiles in seconds.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pipeline.h"

namespace studio {

struct BenchCommand {
    std::string source;                  ///< a run folder or a config file
    std::vector<int64_t> batch_sizes;    ///< empty = the config's bench section
    std::vector<std::string> devices, dtypes, variants;
    int64_t repetitions = 0, steps = 0, warmup = -1;
    int with_loss = -1;                  ///< -1 = config, 0 / 1
    int cuda_graphs = -1;                ///< -1 = config, 0 / 1
    std::string out_dir;                 ///< empty = <run>/bench
    std::string format = "md";           ///< what goes to stdout: md, csv or json
    bool train = false;                  ///< --train: training steps of SOURCE (a config) instead of inference
    std::vector<std::string> train_variants; ///< --train: "ungated", "gated" (default both)
    double peak_tflops = -1;             ///< --train: the device's peak for MFU; < 0 = 790 for cuda bf16 (H200), else none
};

/// `studio bench SOURCE`: exit 0, 1 (failed) or 2 (bad input).
int bench_command(const BenchCommand & command);
/// `studio info SOURCE [--json]`: SOURCE is a config file, a run folder or a pruned/ folder.
int info_command(const std::string & source, bool as_json);
/// `studio prune RUN_OR_CHECKPOINT [--out DIR]`.
int prune_command(const std::string & source, const std::string & out_dir);
/// `studio validate CONFIG`: "config ok" or the one-line error (exit 2).
int validate_command(const std::string & path);
/// `studio selftest [--device D]`: the fused GPU attention against the explicit one; exit 0 ok, 1 failed, 2 bad device.
int selftest_command(const std::string & device);
/// `studio devices [--json]`: the CUDA devices this build and machine can use.
int devices_command(bool as_json);

} // namespace studio
