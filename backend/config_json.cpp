// Config -> JSON, the other direction of config.cpp: every field resolved (defaults filled in, derived values such as
// head_dim and ff_drop written out), as a run writes it into config.json and events and a checkpoint stores its model.
#include "config.h"

#include <nlohmann/json.hpp>

namespace studio {

using nlohmann::json;

json model_config_to_json(const ModelConfig & m) {
    json j;
    j["type"] = m.type == ModelType::AllAttention ? "all_attention" : "transformer_xl";
    j["num_layers"] = m.num_layers;
    j["num_heads"] = m.num_heads;
    j["heads_per_layer"] = m.heads_per_layer;
    j["hidden_dim"] = m.hidden_dim;
    j["head_dim"] = m.resolved_head_dim();
    j["feedforward_dim"] = m.feedforward_dim;
    j["vocab_size"] = m.vocab_size;
    j["max_len"] = m.max_len;
    j["tgt_len"] = m.tgt_len;
    j["mem_len"] = m.mem_len;
    j["same_length"] = m.same_length;
    j["attn_drop"] = m.attn_drop;
    j["proj_drop"] = m.proj_drop;
    j["input_drop"] = m.input_drop;
    j["output_drop"] = m.output_drop;
    j["word_drop"] = m.word_drop;
    j["ff_drop"] = m.resolved_ff_drop();
    j["cutoffs"] = m.cutoffs;
    j["div_value"] = m.div_value;
    j["tie_weight"] = m.tie_weight;
    j["tie_proj"] = m.tie_proj;
    j["share_r_bias"] = m.resolved_share_r_bias();
    j["head_gates"] = m.head_gates;
    j["output_scale_folded"] = m.output_scale_folded;
    return j;
}

namespace {
json stage_to_json(const StageConfig & s) {
    return json{
        {"steps", s.steps}, {"epochs", s.epochs}, {"batch_size", s.batch_size}, {"roll", s.roll},
        {"optimizer", {{"name", s.optimizer.name}, {"lr", s.optimizer.lr}, {"betas", {s.optimizer.beta1, s.optimizer.beta2}},
                       {"eps", s.optimizer.eps}, {"weight_decay", s.optimizer.weight_decay}}},
        {"schedule", {{"name", s.schedule.name}, {"warmup_steps", s.schedule.warmup_steps}, {"min_lr", s.schedule.min_lr}}},
        {"clip_grad_norm", s.clip_grad_norm}, {"eval_interval", s.eval_interval}, {"log_interval", s.log_interval},
        {"checkpoint_interval", s.checkpoint_interval}, {"keep_checkpoints", s.keep_checkpoints}, {"nan_policy", s.nan_policy},
    };
}
} // namespace

json config_to_json(const Config & c) {
    json j;
    j["name"] = c.name;
    j["stages"] = c.stages;
    j["seed"] = c.seed;
    j["device"] = c.device;
    j["gpus"] = c.gpus;
    j["runs_dir"] = c.runs_dir;
    j["precision"] = c.precision;
    j["data"] = {{"dir", c.data.dir}, {"dataset", c.data.dataset}};
    j["model"] = model_config_to_json(c.model);
    j["train"] = stage_to_json(c.train);
    json g = stage_to_json(c.gate.stage);
    g["checkpoint"] = c.gate.checkpoint;
    g["gate_lr_multiplier"] = c.gate.gate_lr_multiplier;
    g["l0_coefficient"] = c.gate.l0_coefficient;
    g["l0_start"] = c.gate.l0_start;
    g["l0_warmup"] = c.gate.l0_warmup;
    g["l0_unit"] = c.gate.l0_unit;
    g["init_log_alpha"] = c.gate.init_log_alpha;
    g["beta"] = c.gate.beta;
    g["gamma"] = c.gate.gamma;
    g["zeta"] = c.gate.zeta;
    g["output_scaling"] = c.gate.output_scaling;
    g["target_sparsity"] = c.gate.target_sparsity ? json(*c.gate.target_sparsity) : json(nullptr);
    g["lagrangian_lr"] = c.gate.lagrangian_lr;
    g["gates_interval"] = c.gate.gates_interval;
    j["gate"] = g;
    j["eval"] = {{"batch_size", c.eval.batch_size}, {"splits", c.eval.splits}};
    j["bench"] = {{"batch_sizes", c.bench.batch_sizes}, {"dtypes", c.bench.dtypes}, {"devices", c.bench.devices},
                  {"variants", c.bench.variants}, {"head_lists", c.bench.head_lists}, {"steps", c.bench.steps},
                  {"warmup", c.bench.warmup}, {"repetitions", c.bench.repetitions}, {"with_loss", c.bench.with_loss}, {"cuda_graphs", c.bench.cuda_graphs}};
    return j;
}

} // namespace studio
