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
    bool cuda_graph = false;        ///< the segment's layers were captured once and replayed as a CUDA graph
    bool loss_in_graph = false;     ///< ... and the loss with them (else it ran eagerly after each replay)
    std::string attention;          ///< what computed attention: "explicit", "sdpa" (LibTorch's fused) or "studio-kernel"
    std::vector<double> samples_ms; ///< per-step milliseconds, one per repetition
    double median_ms = 0, p10_ms = 0, p90_ms = 0, mean_ms = 0, stddev_ms = 0;
    double tokens_per_s = 0;
    double speedup = 0;             ///< dense median / this median (same batch, dtype, device)
    double ideal_speedup = 0;       ///< dense layer parameters / this model's
    double efficiency = 0;          ///< speedup / ideal_speedup
};

/// A training-step measurement (`studio bench --train`): the whole step, and its phases timed separately.
struct TrainBenchRow {
    std::string variant;            ///< "ungated" or "gated" (hard-concrete gates sampled, L0 term in the loss)
    int64_t batch = 0, tgt_len = 0, mem_len = 0;
    std::string dtype, device;
    std::vector<double> samples_ms; ///< per-step milliseconds, one per repetition, no host sync inside a step
    double median_ms = 0, p10_ms = 0, p90_ms = 0, mean_ms = 0, stddev_ms = 0;
    double tokens_per_s = 0;
    double forward_ms = 0, backward_ms = 0, optimizer_ms = 0; ///< medians of a run synchronised between phases
    double peak_memory_gb = 0;
    double flops_per_token = 0;     ///< the formula of docs/benchmarks.md
    double tflops = 0;              ///< flops_per_token x tokens/s
    double mfu = 0;                 ///< tflops / the device's peak (0 when the peak is unknown)
    std::string error;              ///< why this row was not measured ("out of memory"), else empty
};

struct SampleStats {
    double median = 0, p10 = 0, p90 = 0, mean = 0, stddev = 0;
};
SampleStats sample_stats(const std::vector<double> & samples);

/// Median, p10, p90, mean, stddev and tokens/s of a BenchRow or TrainBenchRow from its samples_ms.
template <typename Row>
void summarise_samples(Row & row) {
    const auto stats = sample_stats(row.samples_ms);
    row.median_ms = stats.median;
    row.p10_ms = stats.p10;
    row.p90_ms = stats.p90;
    row.mean_ms = stats.mean;
    row.stddev_ms = stats.stddev;
    row.tokens_per_s = row.median_ms > 0 ? (double) (row.batch * row.tgt_len) / (row.median_ms / 1000.0) : 0.0;
}

std::string train_bench_markdown(const std::vector<TrainBenchRow> & rows);
std::string train_bench_csv(const std::vector<TrainBenchRow> & rows);
nlohmann::json train_bench_json(const std::vector<TrainBenchRow> & rows);

/// Fills speedup, ideal_speedup and efficiency against the "dense" row of the same batch, dtype and device.
void bench_compare(std::vector<BenchRow> & rows);
/// Linear-interpolated percentile (q in [0, 1]) of unsorted values.
double percentile(std::vector<double> values, double q);

std::string bench_markdown(const std::vector<BenchRow> & rows);
std::string bench_csv(const std::vector<BenchRow> & rows);
nlohmann::json bench_json(const std::vector<BenchRow> & rows);

} // namespace studio
