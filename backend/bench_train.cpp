#include "bench_train.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include <torch/torch.h>

#include "device.h"
#include "language_model.h"
#include "layer_graph.h"
#include "optimizer.h"

namespace studio {

double train_flops_per_token(const LanguageModelImpl & model, int64_t batch) {
    const auto & c = model.config;
    const auto counts = model.parameter_counts();
    const int64_t S = c.tgt_len + c.mem_len, dh = c.resolved_head_dim();
    double position = 0, heads_dims = 0;
    for (const auto & layer : model.layer_list) {
        position += (double) layer->attention->r_weight.numel();
        heads_dims += (double) (layer->attention->options.num_heads() * dh);
    }
    double per_token_params = (double) (counts.layers - counts.gates) - position;
    const auto & io = *model.io;
    const double V = (double) c.vocab_size;
    if (io.in_proj.empty()) {
        per_token_params += (double) io.out_weight[0].numel();
    } else {
        per_token_params += (double) (io.out_head_proj.numel() + io.out_weight[0].numel() + io.cluster_weight.numel());
        for (size_t i = 0; i < io.emb.size(); ++i) {
            const double share = (double) (io.bounds[i + 1] - io.bounds[i]) / V;   // uniform random tokens
            per_token_params += share * (double) io.in_proj[i].numel();
            if (i > 0) per_token_params += share * (double) (io.widths[i] * c.hidden_dim + io.out_weight[i].numel());
        }
    }
    const double tokens = (double) (batch * c.tgt_len);
    return 6.0 * per_token_params + 6.0 * position * (double) S / tokens + 18.0 * heads_dims * (double) S;
}

namespace {

// One training step cut into its phases; `mark` runs between them (a timer in the phase run, nothing otherwise).
template <typename Mark>
void train_step(LanguageModelImpl & model, Optimizer & optimizer, const torch::Tensor & ids, std::vector<torch::Tensor> & memory,
                GateSettings gates, double l0_coefficient, const torch::Device & device, bool bf16, uint64_t step, LayerGraph * graph,
                Mark mark) {
    const int64_t T = model.config.tgt_len;
    gates.noise_seed = mix_seed(1, 2, step);
    LMOutput out;
    {
        AutocastGuard autocast(device, bf16);
        out = model.forward(ids.narrow(1, 0, T), ids.narrow(1, 1, T), memory, gates, graph);
        memory = out.memory;
    }
    auto loss = -out.target_log_prob.mean();
    if (gates.enabled) loss = loss + l0_coefficient * out.l0;
    mark(0);
    optimizer.zero_grad();
    loss.backward();
    mark(1);
    optimizer.clip_gradients(0.5);
    optimizer.skip_step_unless_finite(loss.detach());   // as the trainer does
    optimizer.step(1e-3);
    mark(2);
}

/// What names a row: the variant, the shape, the dtype and the device.
TrainBenchRow train_row_heading(const Config & config, const std::string & variant, int64_t batch, const std::string & dtype_name,
                                const std::string & device_name) {
    TrainBenchRow row;
    row.variant = variant;
    row.batch = batch;
    row.tgt_len = config.model.tgt_len;
    row.mem_len = config.model.mem_len;
    row.dtype = dtype_name;
    row.device = device_name;
    return row;
}

/// One row: `batch` sequences of the config's model, `variant` (ungated or gated), on one device in one dtype.
TrainBenchRow measure_train_row(const Config & config, const TrainBenchOptions & options, const torch::Device & device,
                                const std::string & device_name, const std::string & dtype_name, const std::string & variant, int64_t batch,
                                bool trace_it) {
    const bool bf16 = dtype_name == "bf16", gated = variant == "gated";
    torch::manual_seed(1234);
    ModelConfig model_config = config.model;
    model_config.head_gates = gated;
    LanguageModel model(model_config);
    model->to(device);
    model->train();
    if (gated) {
        model->configure_gates(HardConcreteGateOptions(1).init_log_alpha(config.gate.init_log_alpha).beta(config.gate.beta)
                                   .gamma(config.gate.gamma).zeta(config.gate.zeta));
    }
    Optimizer optimizer(config.train.optimizer, make_param_groups(*model, config.train.optimizer.weight_decay, 10.0));
    const bool graphs = config.train.cuda_graphs && config.bench.cuda_graphs;
    optimizer.use_cuda_graphs(graphs);
    GateSettings gates;
    gates.enabled = gated;
    gates.output_scaling = gated && config.gate.output_scaling;
    const int64_t T = model_config.tgt_len;
    auto ids = torch::randint(0, model_config.vocab_size, {4, batch, T + 1}, torch::TensorOptions().dtype(torch::kLong).device(device));
    std::vector<torch::Tensor> memory;
    uint64_t step = 0;
    // As training runs it: the layers replayed from CUDA graphs after the warm-up steps.
    LayerGraph layer_graph;
    LayerGraph * graph = graphs ? &layer_graph : nullptr;
    auto no_mark = [](int) {};
    auto next_ids = [&]() { return ids[(int64_t) (step % 4)]; };

    TrainBenchRow row = train_row_heading(config, variant, batch, dtype_name, device_name);
    // The graph's eager steps and its capture fall in the warm-up, never in the timed steps.
    const int64_t warmup = std::max<int64_t>(config.bench.warmup, graph && device.is_cuda() ? LayerGraph::kWarmupSteps + 1 : 0);
    for (int64_t w = 0; w < warmup; ++w, ++step) {
        train_step(*model, optimizer, next_ids(), memory, gates, 0.01, device, bf16, step, graph, no_mark);
    }
    device_reset_peak_memory(device);
    DeviceTimer timer(device);
    for (int64_t r = 0; r < config.bench.repetitions; ++r) {
        timer.start();
        for (int64_t s = 0; s < config.bench.steps; ++s, ++step) {
            train_step(*model, optimizer, next_ids(), memory, gates, 0.01, device, bf16, step, graph, no_mark);
        }
        row.samples_ms.push_back(timer.stop_ms() / (double) config.bench.steps);
    }
    row.peak_memory_gb = (double) device_peak_memory(device) / 1e9;
    if (layer_graph.replays() > 0) row.device += " (graph)";
    // The phases, each timed to its end: the host waits between them, so their sum exceeds the step.
    std::vector<double> phase_ms[3];
    for (int64_t s = 0; s < config.bench.steps; ++s, ++step) {
        timer.start();
        train_step(*model, optimizer, next_ids(), memory, gates, 0.01, device, bf16, step, graph, [&](int phase) {
            phase_ms[phase].push_back(timer.stop_ms());
            timer.start();
        });
        (void) timer.stop_ms();
    }
    // STUDIO_PROFILE=trace.json: three more steps of the first row, recorded as a Chrome trace.
    if (const char * trace_path = std::getenv("STUDIO_PROFILE"); trace_path && *trace_path && trace_it) {
        TraceRecorder trace;
        trace.start(trace_path);
        for (int s = 0; s < 3; ++s, ++step) train_step(*model, optimizer, next_ids(), memory, gates, 0.01, device, bf16, step, graph, no_mark);
        device_synchronize(device);
        trace.stop();
    }
    summarise_samples(row);
    row.forward_ms = sample_stats(phase_ms[0]).median;
    row.backward_ms = sample_stats(phase_ms[1]).median;
    row.optimizer_ms = sample_stats(phase_ms[2]).median;
    row.flops_per_token = train_flops_per_token(*model, batch);
    row.tflops = row.flops_per_token * row.tokens_per_s / 1e12;
    row.mfu = options.peak_tflops > 0 ? row.tflops / options.peak_tflops : 0.0;
    return row;
}

} // namespace

std::vector<TrainBenchRow> bench_train_measure(const Config & config, const TrainBenchOptions & options, bool verbose) {
    if (config.model.vocab_size <= 0) throw ConfigError("config error: model.vocab_size: set it to bench random tokens (no dataset is read)");
    std::vector<TrainBenchRow> rows;
    for (const auto & device_name : config.bench.devices) {
        const torch::Device device = device_resolve(device_name);   // a device that does not exist fails here, before any row
        for (const auto & dtype_name : config.bench.dtypes) {
            for (const auto & variant : options.variants) {
                for (auto batch : config.bench.batch_sizes) {
                    TrainBenchRow row;
                    try {
                        row = measure_train_row(config, options, device, device_name, dtype_name, variant, batch, rows.empty());
                    } catch (const c10::OutOfMemoryError & oom) {
                        // Where the largest batch that fits lies is a result too: the other rows still run and print.
                        row = train_row_heading(config, variant, batch, dtype_name, device_name);
                        row.error = "out of memory";
                        const std::string why = oom.what_without_backtrace();   // how much was asked, held and free
                        if (verbose) std::fprintf(stderr, "[bench --train] %s\n", why.substr(0, why.find('\n')).c_str());
                    }
                    if (verbose && row.error.empty()) {
                        std::fprintf(stderr, "[bench --train] %-8s %-4s %-5s batch %4lld: %.2f ms/step, %.0f tokens/s\n", variant.c_str(),
                                     device_name.c_str(), dtype_name.c_str(), (long long) batch, row.median_ms, row.tokens_per_s);
                    } else if (verbose) {
                        std::fprintf(stderr, "[bench --train] %-8s %-4s %-5s batch %4lld: %s\n", variant.c_str(), device_name.c_str(),
                                     dtype_name.c_str(), (long long) batch, row.error.c_str());
                    }
                    rows.push_back(row);
                }
            }
        }
    }
    return rows;
}

} // namespace studio
