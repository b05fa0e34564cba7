// Benchmark rows, their statistics and the llama-bench style printers (markdown, CSV, JSON). No LibTorch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace studio {

struct BenchRow {
    std::string variant;            ///< "dense", "masked", "pruned" (or "pruned-106" for a head list)
    int64_t heads_kept = 0;
    int64_t layer_params = 0;
    int64_t batch = 0;
    int64_t tgt_len = 0;
    int64_t mem_len = 0;
    std::string dtype;              ///< "fp32" / "bf16"
    std::string device;             ///< "cpu" / "cuda"
    bool with_loss = true;
    std::vector<double> samples_ms; ///< per-step milliseconds, one per repetition
    double median_ms = 0, p10_ms = 0, p90_ms = 0, mean_ms = 0, stddev_ms = 0;
    double tokens_per_s = 0;
    double speedup = 0;             ///< dense median / this median (same batch, dtype, device)
    double ideal_speedup = 0;       ///< dense layer parameters / this model's
    double efficiency = 0;          ///< speedup / ideal_speedup
};

/// Fills median, p10, p90, mean, stddev and tokens/s from samples_ms.
void bench_summarise(BenchRow & row);
/// Fills speedup, ideal_speedup and efficiency against the "dense" row of the same batch, dtype and device.
void bench_compare(std::vector<BenchRow> & rows);
/// Linear-interpolated percentile (q in [0, 1]) of unsorted values.
double percentile(std::vector<double> values, double q);

std::string bench_markdown(const std::vector<BenchRow> & rows);
std::string bench_csv(const std::vector<BenchRow> & rows);
nlohmann::json bench_json(const std::vector<BenchRow> & rows);

} // namespace studio
