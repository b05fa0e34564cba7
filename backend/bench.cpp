#include "bench.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include <unistd.h>

#include <torch/torch.h>
#ifdef STUDIO_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "bench_train.h"
#include "checkpoint.h"
#include "device.h"
#include "events.h"
#include "pipeline.h"
#include "prune.h"
#include "rel_attention.h"
#include "run_dir.h"
#include "safetensors.h"
#include "trainer.h"

namespace studio {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

int64_t layer_params_without_gates(const LanguageModelImpl & model) {
    const auto c = model.parameter_counts();
    return c.layers - c.gates;
}

int64_t total_heads(const ModelConfig & m) {
    int64_t n = 0;
    for (int64_t l = 0; l < m.num_layers; ++l) n += m.heads_in_layer(l);
    return n;
}

BenchModel make_bench_model(const std::string & variant, LanguageModel model, bool gates_on, bool scaling) {
    BenchModel b;
    b.variant = variant;
    b.model = model;
    b.gates.enabled = gates_on;
    b.gates.output_scaling = scaling;
    b.heads = 0;
    if (gates_on) {
        for (const auto & row : model->gate_open()) for (bool o : row) b.heads += o ? 1 : 0;
    } else {
        b.heads = total_heads(model->config);
    }
    b.layer_params = layer_params_without_gates(*model);
    return b;
}

} // namespace

std::vector<BenchModel> bench_models_from_run(const std::string & run_dir, const Config & config) {
    std::vector<BenchModel> models;
    auto source = run_latest_checkpoint(run_dir, "gate");
    if (!source) source = run_latest_checkpoint(run_dir, "train");
    if (!source) throw std::runtime_error("bench: " + run_dir + " has no checkpoint; train it first or bench a config");
    auto loaded = checkpoint_load(source->path);
    LanguageModel model(loaded.model_config);
    checkpoint_load_model(loaded, *model, false);
    model->configure_gates_constants_only(config.gate);
    model->eval();
    auto wants = [&](const std::string & v) { return std::find(config.bench.variants.begin(), config.bench.variants.end(), v) != config.bench.variants.end(); };
    if (wants("dense")) models.push_back(make_bench_model("dense", model, false, false));
    if (wants("masked") && model->has_gates()) {
        // The same weights again, so the dense and masked rows do not share a module that a dtype change would alter twice.
        LanguageModel masked(loaded.model_config);
        checkpoint_load_model(loaded, *masked, false);
        masked->configure_gates_constants_only(config.gate);
        models.push_back(make_bench_model("masked", masked, true, config.gate.output_scaling));
    }
    if (wants("pruned") && fs::exists(fs::path(run_pruned_dir(run_dir)) / "model.safetensors")) {
        models.push_back(make_bench_model("pruned", pruned_load(run_pruned_dir(run_dir)), false, false));
    }
    return models;
}

std::vector<BenchModel> bench_models_from_config(const Config & config) {
    if (config.model.vocab_size <= 0) throw ConfigError("config error: model.vocab_size: set it to bench random weights (no dataset is read)");
    torch::NoGradGuard no_grad;
    std::vector<BenchModel> models;
    ModelConfig dense_config = config.model;
    dense_config.head_gates = false;
    models.push_back(make_bench_model("dense", LanguageModel(dense_config), false, false));
    for (const auto & heads : config.bench.head_lists) {
        int64_t kept = 0;
        for (auto h : heads) kept += h;
        const std::string suffix = "-" + std::to_string(kept);
        ModelConfig gated = config.model;
        gated.head_gates = true;
        LanguageModel masked(gated);
        std::vector<std::vector<int64_t>> keep;
        for (size_t l = 0; l < heads.size(); ++l) {
            auto & la = masked->layer_list[l]->attention->gate->log_alpha;
            la.fill_(-10.0);
            la.narrow(0, 0, heads[l]).fill_(10.0);
            std::vector<int64_t> k;
            for (int64_t h = 0; h < heads[l]; ++h) k.push_back(h);
            keep.push_back(k);
        }
        bool wants_masked = std::find(config.bench.variants.begin(), config.bench.variants.end(), "masked") != config.bench.variants.end();
        bool wants_pruned = std::find(config.bench.variants.begin(), config.bench.variants.end(), "pruned") != config.bench.variants.end();
        auto pruned = prune_heads(*masked, keep, false);
        if (wants_masked) models.push_back(make_bench_model("masked" + suffix, masked, true, false));
        if (wants_pruned) models.push_back(make_bench_model("pruned" + suffix, pruned.model, false, false));
    }
    return models;
}

std::vector<BenchRow> bench_measure(std::vector<BenchModel> & models, const BenchConfig & bench, const ModelConfig & shape, bool verbose) {
    torch::NoGradGuard no_grad;
    std::vector<BenchRow> rows;
    for (const auto & device_name : bench.devices) {
        const torch::Device device = device_resolve(device_name);
        for (const auto & dtype_name : bench.dtypes) {
            const auto dtype = dtype_name == "bf16" ? torch::kBFloat16 : torch::kFloat;
            for (auto & m : models) {
                m.model->to(device, dtype);
                m.model->eval();
                for (auto batch : bench.batch_sizes) {
                    BenchRow row;
                    row.variant = m.variant;
                    row.heads_kept = m.heads;
                    row.layer_params = m.layer_params;
                    row.batch = batch;
                    row.tgt_len = shape.tgt_len;
                    row.mem_len = shape.mem_len;
                    row.dtype = dtype_name;
                    row.device = device_name;
                    row.with_loss = bench.with_loss;
                    row.attention = inference_attention_name(device, dtype);
                    torch::manual_seed(1234);
                    auto ids = torch::randint(0, shape.vocab_size, {batch, shape.tgt_len + 1}, torch::TensorOptions().dtype(torch::kLong).device(device));
                    auto input = ids.narrow(1, 0, shape.tgt_len);
                    auto target = bench.with_loss ? ids.narrow(1, 1, shape.tgt_len) : torch::Tensor();
                    std::vector<torch::Tensor> memory;
                    std::function<void()> step = [&]() {
                        auto out = m.model->forward(input, target, memory, m.gates);
                        memory = out.memory;
                    };
                    for (int64_t w = 0; w < std::max<int64_t>(bench.warmup, device.is_cuda() ? 1 : 0); ++w) step();
#ifdef STUDIO_CUDA
                    // The layers have static shapes: capture them once and replay them, so small batches measure the
                    // GPU rather than the host's kernel launches (the reference's batch-4 problem). The loss joins
                    // the graph where our tail kernel finds each cluster's rows on the device; else (the host must
                    // read the clusters' sizes) it runs after the replay from the graph's final hidden state.
                    // Two graphs, each reading the memory from one set of buffers and writing the next segment's into
                    // the other (the key and value products write there themselves), replayed in turn: no copies.
                    std::array<std::unique_ptr<at::cuda::CUDAGraph>, 2> graphs;
                    std::array<std::vector<torch::Tensor>, 2> memory_buffers;
                    std::array<torch::Tensor, 2> graph_hidden;   // (B,T,D), written by each replay
                    torch::Tensor hidden;
                    size_t next_graph = 0;
                    auto loss = [&] { m.model->io->target_log_prob(hidden.reshape({-1, hidden.size(-1)}), target.reshape({-1})); };
                    if (device.is_cuda() && bench.cuda_graphs) {
                        for (const auto & layer_memory : memory) {
                            memory_buffers[0].push_back(layer_memory.clone(torch::MemoryFormat::Contiguous));
                            memory_buffers[1].push_back(torch::empty_like(memory_buffers[0].back()));
                        }
                        auto side = c10::cuda::getStreamFromPool();
                        side.synchronize();
                        for (size_t g = 0; g < 2; ++g) {
                            graphs[g] = std::make_unique<at::cuda::CUDAGraph>();
                            c10::cuda::CUDAStreamGuard on_side(side);
                            graphs[g]->capture_begin();
                            auto out = m.model->forward(input, torch::Tensor(), memory_buffers[g], m.gates, nullptr, &memory_buffers[1 - g]);
                            hidden = graph_hidden[g] = out.hidden;
                            row.loss_in_graph = target.defined() && m.model->io->target_log_prob_graph_safe(hidden);
                            if (row.loss_in_graph) loss();
                            graphs[g]->capture_end();
                        }
                        side.synchronize();
                        row.cuda_graph = true;
                    }
                    if (graphs[0]) step = [&]() {
                        graphs[next_graph]->replay();
                        hidden = graph_hidden[next_graph];
                        next_graph = 1 - next_graph;
                        if (target.defined() && !row.loss_in_graph) loss();
                    };
                    for (int64_t w = 0; graphs[0] && w < bench.warmup; ++w) step();
#endif
                    DeviceTimer timer(device);
                    for (int64_t r = 0; r < bench.repetitions; ++r) {
                        timer.start();
                        for (int64_t s = 0; s < bench.steps; ++s) step();
                        row.samples_ms.push_back(timer.stop_ms() / (double) bench.steps);
                    }
                    // STUDIO_PROFILE=trace.json: three more steps of the first row, or of the first row of the variant
                    // STUDIO_PROFILE_VARIANT names (pruned-59, say), recorded as a Chrome trace.
                    const char * trace_path = std::getenv("STUDIO_PROFILE");
                    const char * trace_variant = std::getenv("STUDIO_PROFILE_VARIANT");
                    auto wanted = [&](const BenchRow & r) { return !trace_variant || !*trace_variant || r.variant == trace_variant; };
                    if (trace_path && *trace_path && wanted(row) && std::none_of(rows.begin(), rows.end(), wanted)) {
                        TraceRecorder trace;
                        trace.start(trace_path);
                        for (int s = 0; s < 3; ++s) step();
                        device_synchronize(device);
                        trace.stop();
                    }
                    summarise_samples(row);
                    if (verbose) std::fprintf(stderr, "[bench] %-12s %-4s %-5s batch %4lld: %.3f ms/step\n", row.variant.c_str(), device_name.c_str(),
                                              dtype_name.c_str(), (long long) batch, row.median_ms);
                    rows.push_back(row);
                }
                m.model->to(torch::kCPU, torch::kFloat);
                m.model->eval();   // setting the mode drops what was kept for inference on the device (DerivedWeight)
            }
        }
    }
    bench_compare(rows);
    return rows;
}

namespace {
// One result table in the three forms `studio bench` writes (STEM.json/.csv/.md) and prints.
struct BenchTables {
    json rows;
    std::string csv, markdown;
};
BenchTables tables_of(const std::vector<BenchRow> & rows) { return {bench_json(rows), bench_csv(rows), bench_markdown(rows)}; }
BenchTables tables_of(const std::vector<TrainBenchRow> & rows) {
    return {train_bench_json(rows), train_bench_csv(rows), train_bench_markdown(rows)};
}

void write_tables(const std::string & out_dir, const std::string & stem, const BenchTables & tables, const json & meta) {
    fs::create_directories(out_dir);
    file_write_atomic((fs::path(out_dir) / (stem + ".json")).string(), json{{"meta", meta}, {"rows", tables.rows}}.dump(2));
    file_write_atomic((fs::path(out_dir) / (stem + ".csv")).string(), tables.csv);
    file_write_atomic((fs::path(out_dir) / (stem + ".md")).string(), tables.markdown);
}

void print_tables(const BenchTables & tables, const std::string & format, const std::string & out_dir, const std::string & stem) {
    if (format == "csv") std::printf("%s", tables.csv.c_str());
    else if (format == "json") std::printf("%s\n", tables.rows.dump(2).c_str());
    else std::printf("%s", tables.markdown.c_str());
    std::fprintf(stderr, "written to %s/%s.{md,csv,json}\n", out_dir.c_str(), stem.c_str());
}
} // namespace

void bench_write(const std::string & out_dir, const std::vector<BenchRow> & rows, const json & meta) {
    write_tables(out_dir, "bench", tables_of(rows), meta);
}

namespace {
json bench_meta(const std::string & source) {
    const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    char date[32];
    std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    char host[256] = {0};
    ::gethostname(host, sizeof host - 1);
    return json{{"source", source}, {"date", date}, {"host", host}, {"cuda_devices", cuda_device_count()},
                {"torch", TORCH_VERSION}, {"threads", torch::get_num_threads()}};
}
} // namespace

void bench_run_stage(RunContext & ctx) {
    auto models = bench_models_from_run(ctx.run_dir, ctx.config);
    auto rows = bench_measure(models, ctx.config.bench, ctx.config.model, ctx.progress);
    bench_write(run_bench_dir(ctx.run_dir), rows, bench_meta(ctx.run_dir));
    ctx.event("bench", {{"rows", bench_json(rows)}});
    std::fprintf(stderr, "%s", bench_markdown(rows).c_str());
}

namespace {
int bench_train_command(const BenchCommand & command, const Config & config, bool from_run) {
    TrainBenchOptions options;
    if (!command.train_variants.empty()) options.variants = command.train_variants;
    for (const auto & v : options.variants) {
        if (v != "ungated" && v != "gated") {
            std::fprintf(stderr, "bench error: --train-variants: \"%s\" is not one of ungated, gated\n", v.c_str());
            return 2;
        }
    }
    if (from_run) {
        std::fprintf(stderr, "bench error: --train measures a config's model on random tokens; give a config file, not a run folder\n");
        return 2;
    }
    try {
        std::vector<TrainBenchRow> rows;
        for (const auto & dtype : config.bench.dtypes) {
            for (const auto & device : config.bench.devices) {
                Config one = config;
                one.bench.dtypes = {dtype};
                one.bench.devices = {device};
                TrainBenchOptions o = options;
                o.peak_tflops = command.peak_tflops >= 0 ? command.peak_tflops : (device == "cuda" && dtype == "bf16" ? 790.0 : 0.0);
                auto part = bench_train_measure(one, o, true);
                rows.insert(rows.end(), part.begin(), part.end());
            }
        }
        const std::string out_dir = !command.out_dir.empty() ? command.out_dir : (fs::path(config.runs_dir) / config.name / "bench").string();
        const auto tables = tables_of(rows);
        write_tables(out_dir, "train-bench", tables, bench_meta(command.source));
        print_tables(tables, command.format, out_dir, "train-bench");
        return 0;
    } catch (const std::exception & e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
} // namespace

int bench_command(const BenchCommand & command) {
    Config config;
    bool from_run = false;
    try {
        config = config_load(source_config_path(command.source, "bench", "a run folder or a config file"));
        from_run = fs::is_directory(command.source);
        if (!command.batch_sizes.empty()) config.bench.batch_sizes = command.batch_sizes;
        if (!command.devices.empty()) config.bench.devices = command.devices;
        if (!command.dtypes.empty()) config.bench.dtypes = command.dtypes;
        if (!command.variants.empty()) config.bench.variants = command.variants;
        if (command.repetitions > 0) config.bench.repetitions = command.repetitions;
        if (command.steps > 0) config.bench.steps = command.steps;
        if (command.warmup >= 0) config.bench.warmup = command.warmup;
        if (command.with_loss >= 0) config.bench.with_loss = command.with_loss == 1;
        if (command.cuda_graphs >= 0) config.bench.cuda_graphs = command.cuda_graphs == 1;
        config = config_from_json(config_to_json(config)); // re-validate the overridden values
        for (const auto & d : config.bench.devices) {
            if (d == "cuda" && cuda_device_count() == 0) throw ConfigError("bench error: devices: \"cuda\" was asked for (--devices or the config's bench.devices) but this "
                                  "build or machine has no CUDA GPU; use --devices cpu");
        }
    } catch (const std::exception & e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 2;
    }
    if (command.train) return bench_train_command(command, config, from_run);
    try {
        auto models = from_run ? bench_models_from_run(command.source, config) : bench_models_from_config(config);
        auto rows = bench_measure(models, config.bench, config.model, true);
        const std::string out_dir = !command.out_dir.empty() ? command.out_dir
                                    : from_run ? run_bench_dir(command.source)
                                               : (fs::path(config.runs_dir) / config.name / "bench").string();
        const auto tables = tables_of(rows);
        write_tables(out_dir, "bench", tables, bench_meta(command.source));
        if (from_run) {
            EventWriter events(run_events_path(command.source));
            events.write("bench", {{"rows", tables.rows}});
        }
        print_tables(tables, command.format, out_dir, "bench");
        return 0;
    } catch (const std::exception & e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}

} // namespace studio
