// `studio bench --train CONFIG`: training-step throughput of a config's model on random tokens (as the reference's
// benchmark does): the whole step without host syncs, then forward, backward and optimizer timed apart, peak
// memory, and model-FLOPs utilisation.
#pragma once

#include <cstdint>
#include <vector>

#include "bench_report.h"
#include "config.h"

namespace studio {

class LanguageModelImpl;

struct TrainBenchOptions {
    std::vector<std::string> variants{"ungated", "gated"};
    double peak_tflops = 0;   ///< the device's dense bf16/fp32 peak for MFU; 0 = not reported
};

/// Model FLOPs of one trained token (forward + backward) at this batch: 6 x the parameters each token touches
/// (layers without the position projection and gates, the softmax and input-projection rows of its cluster, with
/// uniformly random tokens), the position projection once per segment, and 3 x 2 x S x dh per head for the score,
/// position and value products. docs/benchmarks.md writes it out.
double train_flops_per_token(const LanguageModelImpl & model, int64_t batch);

std::vector<TrainBenchRow> bench_train_measure(const Config & config, const TrainBenchOptions & options, bool verbose);

} // namespace studio
