#include "trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>

#include <torch/torch.h>

#include "device.h"
#include "layer_graph.h"
#include "lm_batcher.h"
#include "optimizer.h"
#include "run_dir.h"
#include "schedule.h"

namespace studio {

using nlohmann::json;

void RunContext::event(const std::string & type, json fields) const {
    if (events) events->write(type, std::move(fields));
}

GateSettings stage_gate_settings(const Config & config, const std::string & stage, const LanguageModelImpl & model) {
    GateSettings g;
    g.enabled = model.has_gates() && (stage == "gate" || stage == "eval");
    g.output_scaling = g.enabled && config.gate.output_scaling && !model.config.output_scale_folded;
    return g;
}

EvalResult evaluate(LanguageModelImpl & model, const std::vector<int32_t> & tokens, int64_t batch_size, const RunContext & ctx,
                    const GateSettings & gates) {
    torch::NoGradGuard no_grad;
    const bool was_training = model.is_training();
    model.eval();
    // Fewer rows than asked for when the split is short; never fewer than one row per rank.
    int64_t rows = std::min<int64_t>(batch_size, std::max<int64_t>(1, (int64_t) tokens.size() / (model.config.tgt_len + 1)));
    rows = std::max<int64_t>(ctx.world_size(), rows - rows % ctx.world_size());
    LMBatcher batcher(tokens, rows, model.config.tgt_len, ctx.rank(), ctx.world_size());
    std::vector<torch::Tensor> memory;
    auto nll = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(ctx.device));
    for (int64_t k = 0; k < batcher.num_batches(); ++k) {
        auto batch = batcher.batch(k, ctx.device);
        AutocastGuard autocast(ctx.device, ctx.bf16);
        auto out = model.forward(batch.input, batch.target, memory, gates);
        nll -= out.target_log_prob.to(torch::kDouble).sum();
        memory = out.memory;
    }
    auto totals = torch::stack({nll, torch::full({}, (double) batcher.tokens_per_pass(), nll.options())});
    if (ctx.comm) ctx.comm->sum(totals);
    if (was_training) model.train();
    EvalResult r;
    r.tokens = (int64_t) totals[1].item<double>();
    r.loss = totals[0].item<double>() / (double) r.tokens;
    r.ppl = std::exp(r.loss);
    return r;
}

namespace {

std::string format_duration(double seconds) {
    char buffer[32];
    const long s = (long) std::max(0.0, seconds);
    if (s >= 3600) std::snprintf(buffer, sizeof buffer, "%ldh%02ldm", s / 3600, (s / 60) % 60);
    else std::snprintf(buffer, sizeof buffer, "%ldm%02lds", s / 60, s % 60);
    return buffer;
}

// The live progress line: rewritten in place on a terminal, one line per log interval otherwise.
void print_progress(const std::string & stage, int64_t step, int64_t total, double loss, double tokens_per_s, double eta_s,
                    double sparsity, bool gating) {
    static const bool tty = ::isatty(STDERR_FILENO);
    char line[256];
    std::snprintf(line, sizeof line, "[%s] step %lld/%lld | loss %.4f | ppl %.2f | %.1fk tok/s | ETA %s%s", stage.c_str(),
                  (long long) step, (long long) total, loss, std::exp(loss), tokens_per_s / 1000.0, format_duration(eta_s).c_str(),
                  gating ? (" | closed " + std::to_string((int) std::lround(sparsity * 100)) + "%").c_str() : "");
    std::fprintf(stderr, tty ? "\r%-100s" : "%s\n", line);
    if (tty && step == total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
}

json gates_event(const LanguageModelImpl & model, const std::string & stage, int64_t step) {
    json open = json::array();
    for (const auto & row : model.gate_open()) {
        json r = json::array();
        for (bool o : row) r.push_back(o);
        open.push_back(r);
    }
    return json{{"stage", stage}, {"step", step}, {"log_alpha", model.gate_log_alpha()}, {"p_open", model.gate_p_open()}, {"open", open}};
}

} // namespace

StageOutcome run_training_stage(RunContext & ctx, const std::string & stage, LanguageModel model, const Corpus & corpus) {
    const Config & config = ctx.config;
    const bool gating = stage == "gate";
    const StageConfig & sc = gating ? config.gate.stage : config.train;
    const GateConfig & gc = config.gate;

    LMBatcher batcher(corpus.train, sc.batch_size, config.model.tgt_len, ctx.rank(), ctx.world_size());
    const int64_t steps_per_epoch = batcher.num_batches();
    const int64_t total_steps = sc.steps > 0 ? sc.steps : std::max<int64_t>(1, (int64_t) std::ceil(sc.epochs * (double) steps_per_epoch));

    Optimizer optimizer(sc.optimizer, make_param_groups(*model, sc.optimizer.weight_decay, gating ? gc.gate_lr_multiplier : 1.0));
    optimizer.use_cuda_graphs(sc.cuda_graphs);
    GateSettings gates = stage_gate_settings(config, stage, *model);

    TrainingState state;
    state.stage = stage;
    state.total_steps = total_steps;
    state.extra = json{{"lambda1", 0.0}, {"lambda2", 0.0}};
    std::vector<torch::Tensor> memory;
    if (ctx.resume) {
        if (auto latest = run_latest_checkpoint(ctx.run_dir, stage)) {
            auto loaded = checkpoint_load(latest->path, ctx.rank(), ctx.world_size());
            checkpoint_load_model(loaded, *model, false);
            if (!loaded.optimizer.empty()) optimizer.load_state(loaded.optimizer, loaded.path);
            memory = checkpoint_memory(loaded, config.model.num_layers, ctx.device);
            state = loaded.state;
            state.total_steps = total_steps;
            if (state.complete) return StageOutcome::Finished;
            if (ctx.rank() == 0) std::fprintf(stderr, "resuming %s at step %lld from %s\n", stage.c_str(), (long long) state.step, latest->path.c_str());
        }
    }
    double lambda1 = state.extra.value("lambda1", 0.0), lambda2 = state.extra.value("lambda2", 0.0);

    ctx.event("stage_start", {{"stage", stage}, {"total_steps", total_steps}, {"resumed_at", state.step}});
    if (sc.roll) batcher.roll_for_epoch(config.seed, state.epoch);
    model->train();

    auto save_checkpoint = [&]() {
        const std::string staging = checkpoint_staging_dir(ctx.run_dir, stage, state.step);
        state.extra = json{{"lambda1", lambda1}, {"lambda2", lambda2}};
        if (ctx.rank() == 0) checkpoint_create_staging(staging);
        if (ctx.comm) ctx.comm->barrier();
        checkpoint_write_memory(staging, ctx.rank(), memory);
        if (ctx.comm) ctx.comm->barrier();
        if (ctx.rank() == 0) {
            const std::string path = checkpoint_commit(ctx.run_dir, staging, *model, &optimizer, state, sc.keep_checkpoints);
            ctx.event("checkpoint", {{"stage", stage}, {"step", state.step}, {"path", path}});
        }
        if (ctx.comm) ctx.comm->barrier();
    };
    auto run_eval = [&]() {
        auto r = evaluate(*model, corpus.valid, config.eval.batch_size, ctx, stage_gate_settings(config, gating ? "gate" : "train", *model));
        ctx.event("eval", {{"stage", stage}, {"step", state.step}, {"split", "valid"}, {"loss", r.loss}, {"ppl", r.ppl}, {"tokens", r.tokens}});
        if (ctx.rank() == 0 && ctx.progress) std::fprintf(stderr, "\n[%s] step %lld valid ppl %.3f\n", stage.c_str(), (long long) state.step, r.ppl);
    };

    const auto start = std::chrono::steady_clock::now();
    const double elapsed_before = state.elapsed_s;
    auto window_start = start;
    int64_t window_tokens = 0;
    double window_loss = 0;              // the finite losses of the window's judged steps
    int64_t window_losses = 0, window_steps = 0;
    double last_grad_norm = 0;
    // The last step's loss and gradient norm on their way to the host, judged one step later (or at once with
    // STUDIO_STEP_CHECK=sync): a non-finite one is reported and skipped, or stops the run, per nan_policy.
    int64_t pending_step = -1;
    HostCopy pending_values;
    const bool checks_at_once = environment_is("STUDIO_STEP_CHECK", "sync");
    auto settle = [&]() {
        if (!pending_values.defined()) return;
        const auto values = pending_values.get();                                // (2,) double: loss, gradient norm
        pending_values = HostCopy();
        const double ce_value = values[0].item<double>(), grad_norm = values[1].item<double>();
        if (std::isfinite(ce_value) && std::isfinite(grad_norm)) {
            window_loss += ce_value;
            ++window_losses;
            last_grad_norm = grad_norm;
            return;
        }
        if (sc.nan_policy == "skip") {
            ctx.event("error", {{"step", pending_step}, {"message", "non-finite loss or gradient at step " + std::to_string(pending_step) + "; step skipped"}});
            return;
        }
        auto latest = run_latest_checkpoint(ctx.run_dir, stage);
        const std::string last_good = latest ? latest->path : std::string("none yet");
        throw std::runtime_error(stage + ": loss or gradient is not finite at step " + std::to_string(pending_step) +
                                 " (last good checkpoint: " + last_good + "); lower the learning rate or set nan_policy \"skip\"");
    };
    const uint64_t stage_stream = gating ? 2 : 1;

    // Tests and the kill-test script stop a run at an exact step, as a SIGTERM there would.
    const char * stop_env = std::getenv("STUDIO_STOP_AT_STEP");
    const int64_t stop_at = stop_env && *stop_env ? std::atoll(stop_env) : -1;
    // STUDIO_PROFILE=trace.json records steps 5-14 as a Chrome trace (chrome://tracing) to find the hot spots.
    const char * profile_path = std::getenv("STUDIO_PROFILE");
    TraceRecorder trace;
    // On CUDA the layers run from two CUDA graphs after the warm-up steps (layer_graph.h), and the optimizer from two
    // more: the same kernels, a few launches instead of thousands.
    LayerGraph layer_graph;
    LayerGraph * graph = sc.cuda_graphs ? &layer_graph : nullptr;
    while (state.step < total_steps) {
        if (profile_path && *profile_path && ctx.rank() == 0) {
            if (state.step == 5) trace.start(profile_path);
            if (state.step == 15) trace.stop();
        }
        if ((ctx.stop && ctx.stop->load()) || state.step == stop_at) {
            settle();
            save_checkpoint();
            ctx.event("stage_end", {{"stage", stage}, {"status", "stopped"}});
            return StageOutcome::Stopped;
        }
        seed_step(config.seed, stage_stream * 1000 + (uint64_t) ctx.rank(), (uint64_t) state.step);
        gates.noise_seed = mix_seed(config.seed, stage_stream, (uint64_t) state.step); // the same on every rank
        auto batch = batcher.batch(state.batch_in_epoch, ctx.device);
        const int64_t batch_tokens = batch.input.numel() * ctx.world_size();

        const double lr = schedule_lr(sc.schedule, sc.optimizer.lr, state.step, total_steps);
        double l0_coefficient = 0, target = 0;
        torch::Tensor ce, loss, l0, expected;
        LMOutput out;
        {
            AutocastGuard autocast(ctx.device, ctx.bf16);
            out = model->forward(batch.input, batch.target, memory, gates, graph);
        }
        ce = -out.target_log_prob.mean();
        loss = ce;
        if (gating) {
            l0 = out.l0.defined() ? out.l0 : model->l0();   // the forward's own (from the graph, when it replays)
            expected = model->expected_sparsity();
            if (gc.target_sparsity) {
                // Lagrangian relaxation (as CoFi does): the multipliers rise until the expected sparsity meets the
                // target, which is itself ramped in by the sparsity-loss warm-up.
                target = *gc.target_sparsity * schedule_l0_ramp(gc, state.step, steps_per_epoch);
                auto gap = expected - target;
                loss = loss + lambda1 * gap + lambda2 * gap * gap;
            } else {
                l0_coefficient = schedule_l0_coefficient(gc, state.step, steps_per_epoch);
                loss = loss + l0_coefficient * l0;
            }
        }
        optimizer.zero_grad();
        loss.backward();
        if (ctx.comm) ctx.comm->average(optimizer.flat_gradients());
        auto grad_norm_tensor = optimizer.clip_gradients(sc.clip_grad_norm);
        // Every rank logs and judges the same number: the mean cross-entropy over all ranks' (equal) shares.
        auto ce_mean = ce.detach().reshape({1}).to(torch::kFloat);
        if (ctx.comm && ctx.world_size() > 1) {
            ctx.comm->sum(ce_mean);
            ce_mean = ce_mean / (double) ctx.world_size();
        }
        // A non-finite gradient norm or loss makes this step change nothing (optimizer.h), so the host need not look
        // before it: the loss and the norm reach it a step late and the GPU keeps a step queued. (The loss counts on
        // its own: a target on a -inf logit makes it infinite with finite gradients.)
        optimizer.skip_step_unless_finite(ce_mean);
        optimizer.step(lr);
        settle();
        pending_step = state.step;
        pending_values = HostCopy(torch::cat({ce_mean, grad_norm_tensor.reshape({1}).to(torch::kFloat)}).to(torch::kDouble));
        if (checks_at_once) settle();
        if (gating && gc.target_sparsity) {
            const double gap = expected.item<double>() - target;
            lambda1 += gc.lagrangian_lr * gap;
            lambda2 += gc.lagrangian_lr * gap * gap;
        }
        memory = out.memory;
        ++state.step;
        ++state.batch_in_epoch;
        state.tokens += batch_tokens;
        window_tokens += batch_tokens;
        ++window_steps;
        if (state.batch_in_epoch >= steps_per_epoch) {
            // A new epoch starts from zero memory (and a new roll), as the reference iterator does.
            ++state.epoch;
            state.batch_in_epoch = 0;
            memory.clear();
            if (sc.roll) batcher.roll_for_epoch(config.seed, state.epoch);
        }

        const auto now = std::chrono::steady_clock::now();
        state.elapsed_s = elapsed_before + std::chrono::duration<double>(now - start).count();
        const bool last = state.step == total_steps;
        if (state.step % sc.log_interval == 0 || last) {
            settle();   // this step's loss belongs in the window
            const double window_s = std::max(1e-9, std::chrono::duration<double>(now - window_start).count());
            const double tokens_per_s = (double) window_tokens / window_s;
            const double mean_loss = window_losses > 0 ? window_loss / (double) window_losses : NAN;
            const double seconds_per_step = window_s / (double) window_steps;
            const double hard = model->hard_sparsity();
            const double expected_value = gating ? expected.item<double>() : 0.0;
            ctx.event("train", {{"stage", stage}, {"step", state.step}, {"total_steps", total_steps},
                                {"epoch", (double) state.epoch + (double) state.batch_in_epoch / (double) steps_per_epoch},
                                {"tokens", state.tokens}, {"loss", mean_loss}, {"ppl", std::exp(mean_loss)}, {"lr", lr},
                                {"l0_coefficient", l0_coefficient}, {"l0", gating ? l0.item<double>() : 0.0},
                                {"expected_sparsity", expected_value}, {"hard_sparsity", hard},
                                {"target_sparsity", gc.target_sparsity && gating ? json(target) : json(nullptr)},
                                {"grad_norm", last_grad_norm}, {"tokens_per_s", tokens_per_s}, {"elapsed_s", state.elapsed_s}});
            if (ctx.rank() == 0 && ctx.progress) {
                print_progress(stage, state.step, total_steps, mean_loss, tokens_per_s, seconds_per_step * (double) (total_steps - state.step), hard, gating);
            }
            window_start = now;
            window_tokens = 0;
            window_loss = 0;
            window_losses = 0;
            window_steps = 0;
        }
        if (gating && (state.step % gc.gates_interval == 0 || last || state.step == 1)) ctx.event("gates", gates_event(*model, stage, state.step));
        if (sc.eval_interval > 0 && state.step % sc.eval_interval == 0 && !last) {
            settle();   // an evaluation reports only judged steps
            run_eval();
        }
        if (sc.checkpoint_interval > 0 && state.step % sc.checkpoint_interval == 0 && !last) {
            settle();   // a checkpoint holds only judged steps
            save_checkpoint();
        }
    }
    settle();
    if (gating && gc.target_sparsity) {
        // The multipliers bring the expected sparsity to the target, but a few gates can end on the wrong side:
        // the final decision closes exactly round(target x heads) heads, those with the lowest log_alpha.
        int64_t heads = 0;
        for (const auto & row : model->gate_open()) heads += (int64_t) row.size();
        const double before = model->hard_sparsity();
        const int64_t moved = model->set_closed_heads(std::llround(*gc.target_sparsity * (double) heads));
        ctx.event("gate_projection", {{"stage", stage}, {"step", state.step}, {"hard_sparsity_before", before},
                                      {"hard_sparsity_after", model->hard_sparsity()}, {"gates_moved", moved}});
        ctx.event("gates", gates_event(*model, stage, state.step));
    }
    run_eval();
    state.complete = true;
    save_checkpoint();
    ctx.event("stage_end", {{"stage", stage}, {"status", "ok"}});
    return StageOutcome::Finished;
}

} // namespace studio
