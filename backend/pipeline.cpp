#include "pipeline.h"

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include <torch/torch.h>

#include "bench.h"
#include "checkpoint.h"
#include "device.h"
#include "events.h"
#include "launcher.h"
#include "model_info.h"
#include "prune.h"
#include "run_dir.h"
#include "sweep.h"
#include "sweep_runner.h"
#include "trainer.h"

namespace studio {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop.store(true); }

/// The stages without checkpoints of their own (prune, eval, bench) that an earlier invocation of this run finished
/// from the checkpoint at `step`: a resume from the same checkpoint does not run them (or write their events) again.
/// A resume that trained further first finds them at another step and runs them.
std::set<std::string> stages_finished_at(const std::string & run_dir, int64_t step) {
    std::set<std::string> finished;
    for (const auto & e : events_read_all(run_events_path(run_dir))) {
        if (e.value("event", "") == "stage_end" && e.value("status", "") == "ok" && e.value("step", (int64_t) -1) == step)
            finished.insert(e.value("stage", ""));
    }
    return finished;
}

LanguageModel load_model_from_checkpoint(const std::string & path, const torch::Device & device) {
    auto loaded = checkpoint_load(path);
    LanguageModel model(loaded.model_config);
    checkpoint_load_model(loaded, *model, false);
    model->to(device);
    return model;
}

StageOutcome stage_gate(RunContext & ctx, const Corpus & corpus) {
    ModelConfig gated = ctx.config.model;
    gated.head_gates = true;
    LanguageModel model(gated);
    const bool resuming_gate = ctx.resume && run_latest_checkpoint(ctx.run_dir, "gate");
    if (!resuming_gate) {
        const std::string source = ctx.config.gate.checkpoint.empty() ? resolve_checkpoint(ctx.run_dir, "train")
                                                                       : resolve_checkpoint(ctx.config.gate.checkpoint, "train");
        auto loaded = checkpoint_load(source);
        if (!loaded.state.complete && ctx.config.gate.checkpoint.empty()) {
            throw std::runtime_error("gate: the train stage of this run did not finish (" + source + "); resume it first");
        }
        checkpoint_load_model(loaded, *model, /*allow_missing_gates=*/true);
        ctx.event("gate_source", {{"checkpoint", source}});
    }
    // Technique 2: every gate starts at init_log_alpha with the stage's constants.
    model->configure_gates(HardConcreteGateOptions(ctx.config.model.num_heads).init_log_alpha(ctx.config.gate.init_log_alpha)
                               .beta(ctx.config.gate.beta).gamma(ctx.config.gate.gamma).zeta(ctx.config.gate.zeta));
    model->to(ctx.device);
    return run_training_stage(ctx, "gate", model, corpus);
}

std::string final_checkpoint(const RunContext & ctx) {
    if (auto gate = run_latest_checkpoint(ctx.run_dir, "gate")) return gate->path;
    if (auto train = run_latest_checkpoint(ctx.run_dir, "train")) return train->path;
    if (!ctx.config.gate.checkpoint.empty()) return resolve_checkpoint(ctx.config.gate.checkpoint, "train");
    throw std::runtime_error("no checkpoint in " + ctx.run_dir + " to prune or evaluate: add \"train\" to stages");
}

void stage_prune(RunContext & ctx, const json & resolved) {
    if (ctx.rank() != 0) return;
    ctx.event("prune", prune_checkpoint(final_checkpoint(ctx), ctx.config, resolved, run_pruned_dir(ctx.run_dir)));
}

void stage_eval(RunContext & ctx_in, const Corpus & corpus) {
    // Reported perplexities are computed in fp32: they must not depend on bf16 rounding, so that the gated and the
    // pruned model (which round differently) agree to 1e-4 relative.
    RunContext ctx = ctx_in;
    ctx.bf16 = false;
    std::vector<std::pair<std::string, LanguageModel>> models;
    const std::string source = final_checkpoint(ctx);
    auto trained = load_model_from_checkpoint(source, ctx.device);
    trained->configure_gates_constants_only(ctx.config.gate);
    // Gates act only once a gate stage has trained them; a baseline's untouched gates are ignored.
    const bool gated = trained->has_gates() && fs::path(source).filename().string().rfind("gate-", 0) == 0;
    models.emplace_back(gated ? "gated" : "dense", trained);
    if (fs::exists(fs::path(run_pruned_dir(ctx.run_dir)) / "model.safetensors")) {
        auto pruned = pruned_load(run_pruned_dir(ctx.run_dir));
        pruned->to(ctx.device);
        models.emplace_back("pruned", pruned);
    }
    for (auto & [name, model] : models) {
        for (const auto & split : ctx.config.eval.splits) {
            GateSettings gates = stage_gate_settings(ctx.config, "eval", *model);
            gates.enabled = gates.enabled && name == "gated";
            gates.output_scaling = gates.output_scaling && gates.enabled;
            auto r = evaluate(*model, corpus.split(split), ctx.config.eval.batch_size, ctx, gates);
            ctx.event("eval", {{"stage", "eval"}, {"model", name}, {"split", split}, {"loss", r.loss}, {"ppl", r.ppl}, {"tokens", r.tokens}});
            if (ctx.rank() == 0) std::fprintf(stderr, "[eval] %-6s %-5s loss %.4f ppl %.3f (%lld tokens)\n", name.c_str(), split.c_str(), r.loss, r.ppl, (long long) r.tokens);
        }
    }
}

} // namespace

std::string resolve_checkpoint(const std::string & path_or_run, const std::string & stage) {
    if (fs::exists(fs::path(path_or_run) / "state.json")) return path_or_run;
    if (auto latest = run_latest_checkpoint(path_or_run, stage)) return latest->path;
    if (auto any = run_latest_checkpoint(path_or_run, "")) return any->path;
    throw std::runtime_error("no checkpoint at " + path_or_run + " (name a checkpoint folder or a run folder holding checkpoints/)");
}

int run_batch(const BatchOptions & options) {
    Config config;
    RankInfo rank;
    try {
        const json raw = config_read_json(options.config_path);
        if (sweep_present(raw)) return run_sweep(options, raw);
        config = config_from_json(raw);
        rank = rank_info_from_env();
        config_check_environment(config, cuda_device_count());
    } catch (const std::exception & e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 2;
    }
    if (config.gpus > 1 && rank.world_size == 1 && !launcher_is_child()) {
        return launcher_run_siblings(config.gpus, config.device != "cpu");
    }

    RunContext ctx;
    ctx.config = config;
    ctx.resume = options.resume;
    ctx.stop = &g_stop;
    ctx.progress = options.progress;
    ctx.run_dir = options.run_dir.empty() ? (fs::path(config.runs_dir) / config.name).string() : options.run_dir;
    std::unique_ptr<EventWriter> events;
    std::unique_ptr<Communicator> comm;
    Corpus corpus;
    try {
        ctx.device = device_resolve(config.device, rank.local_rank);
        ctx.bf16 = ctx.device.is_cuda() && config.precision != "fp32";
        if (rank.rank == 0 && fs::exists(run_events_path(ctx.run_dir)) && !options.resume) {
            throw ConfigError("run error: " + ctx.run_dir + " already holds a run; pass --resume to continue it, or choose another --run-dir or name");
        }
        const bool needs_data = config.has_stage("train") || config.has_stage("gate") || config.has_stage("eval");
        if (needs_data) {
            corpus = corpus_load(config_data_folder(config));
            if (ctx.config.model.vocab_size == 0) ctx.config.model.vocab_size = corpus.vocab.size();
            if (ctx.config.model.vocab_size != corpus.vocab.size()) {
                throw ConfigError("config error: model.vocab_size: " + std::to_string(ctx.config.model.vocab_size) + " does not match the " +
                                  std::to_string(corpus.vocab.size()) + "-word vocabulary of " + corpus.folder + " (set it to 0 to take the dataset's)");
            }
            for (auto c : ctx.config.model.cutoffs) {
                if (c >= corpus.vocab.size()) throw ConfigError("config error: model.cutoffs: " + std::to_string(c) + " is not below the vocabulary size " + std::to_string(corpus.vocab.size()));
            }
        } else if (ctx.config.model.vocab_size == 0 && config.has_stage("bench")) {
            throw ConfigError("config error: model.vocab_size: set it (a bench-only run reads no dataset)");
        }
    } catch (const ConfigError & e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 2;
    } catch (const DataError & e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 2;
    } catch (const std::exception & e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }

    std::signal(SIGTERM, on_signal);
    std::signal(SIGINT, on_signal);
    // The step a --resume continues from: the latest complete checkpoint's, at whatever end the run comes to.
    auto resume_step = [&]() -> int64_t {
        try {
            if (auto latest = run_latest_checkpoint(ctx.run_dir, "")) return latest->step;
        } catch (...) {
        }
        return 0;
    };
    try {
        comm = communicator_create(rank, ctx.device);
        ctx.comm = comm.get();
        const json resolved = config_to_json(ctx.config);
        if (rank.rank == 0) {
            fs::create_directories(ctx.run_dir);
            file_write_atomic(run_config_path(ctx.run_dir), resolved.dump(2));
            events = std::make_unique<EventWriter>(run_events_path(ctx.run_dir));
            ctx.events = events.get();
            json model = model_info(ctx.config.model);
            ctx.event("run_start", {{"name", config.name}, {"stages", config.stages}, {"device", ctx.device.is_cuda() ? "cuda" : "cpu"},
                                    {"world_size", rank.world_size}, {"resumed", options.resume}, {"config", resolved},
                                    {"model", {{"type", model["type"]}, {"num_layers", model["num_layers"]}, {"heads_per_layer", model["heads_per_layer"]},
                                               {"params_total", model["params_total"]}, {"params_layers", model["params_layers"]}}}});
        }
        if (ctx.comm) ctx.comm->barrier();
        torch::manual_seed(config.seed);
        // Denormal floats (tiny gradients and optimizer moments late in training) are 10-100x slower on x86 CPUs.
        at::globalContext().setFlushDenormal(true);
        bool stopped = false;
        // Tests stop a run between two stages, as a SIGTERM that arrives there would.
        const char * stop_after_env = std::getenv("STUDIO_STOP_AFTER_STAGE");
        const std::string stop_after_stage = stop_after_env ? stop_after_env : "";
        const auto finished = options.resume && rank.rank == 0 ? stages_finished_at(ctx.run_dir, resume_step()) : std::set<std::string>{};
        // Only rank 0 reads the events; the others follow it, or a stage run on some ranks only would leave its
        // collectives unmatched.
        auto skip = [&](const std::string & stage) {
            if (!options.resume) return false;   // the same on every rank: no collective needed
            bool skipped = finished.count(stage) > 0;
            if (ctx.comm) {
                auto flag = torch::full({1}, skipped ? 1.0f : 0.0f, torch::TensorOptions().device(ctx.device));
                ctx.comm->sum(flag);
                skipped = flag.item<float>() > 0;
            }
            if (skipped && rank.rank == 0) std::fprintf(stderr, "%s: finished before from this checkpoint, skipped\n", stage.c_str());
            return skipped;
        };
        // Each stage's end carries the checkpoint step it ran from (what stages_finished_at matches on).
        auto stage_done = [&](const std::string & stage) { ctx.event("stage_end", {{"stage", stage}, {"status", "ok"}, {"step", resume_step()}}); };
        for (const auto & stage : config.stages) {
            // A stop (signal) between stages stops the run before the next one; after the last one the run is whole.
            if (g_stop.load() || stopped) {
                stopped = true;
                break;
            }
            if (stage == "train") {
                LanguageModel model(ctx.config.model);
                model->to(ctx.device);
                stopped = run_training_stage(ctx, "train", model, corpus) == StageOutcome::Stopped;
            } else if (stage == "gate") {
                stopped = stage_gate(ctx, corpus) == StageOutcome::Stopped;
            } else if (skip(stage)) {
                continue;
            } else if (stage == "prune") {
                ctx.event("stage_start", {{"stage", "prune"}});
                stage_prune(ctx, resolved);
                stage_done("prune");
            } else if (stage == "eval") {
                ctx.event("stage_start", {{"stage", "eval"}});
                stage_eval(ctx, corpus);
                stage_done("eval");
            } else if (stage == "bench") {
                ctx.event("stage_start", {{"stage", "bench"}});
                if (rank.rank == 0) bench_run_stage(ctx);
                stage_done("bench");
            }
            if (stop_after_stage == stage) g_stop.store(true);
            if (ctx.comm) ctx.comm->barrier();
        }
        if (stopped) {
            ctx.event("run_end", {{"status", "stopped"}, {"step", resume_step()}});
            std::fprintf(stderr, "\nstopped; continue with: studio --batch %s --run-dir %s --resume\n", options.config_path.c_str(), ctx.run_dir.c_str());
            return 3;
        }
        // Only at the normal end, where every rank has passed the last stage's barrier (a stop may reach the ranks
        // between stages at different times, and rank 0 would then wait for the others).
        if (ctx.comm) ctx.comm->finish();
        ctx.event("run_end", {{"status", "ok"}, {"step", resume_step()}});
        return 0;
    } catch (const std::exception & e) {
        std::string message = e.what();
        const auto nl = message.find('\n');
        if (nl != std::string::npos) message = message.substr(0, nl);
        std::fprintf(stderr, "\nerror: %s\n", message.c_str());
        try {
            ctx.event("error", {{"message", message}});
            ctx.event("run_end", {{"status", "error"}, {"step", resume_step()}});
        } catch (...) {
        }
        return 1;
    }
}

} // namespace studio
