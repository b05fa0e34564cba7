// Config -> JSON, the other direction of config.cpp: every field resolved (defaults filled in, derived values such as
// head_dim and ff_drop written out), as a run writes it into config.json and events and a checkpoint stores its model.
#include "config.h"

#include <nlohmann/json.hpp>

namespace studio {

using nlohmann::json;

json model_config_to_json(const ModelConfig & m) {
    return json{
        {"type", m.type == ModelType::AllAttention ? "all_attention" : "transformer_xl"}, {"num_layers", m.num_layers},
        {"num_heads", m.num_heads}, {"heads_per_layer", m.heads_per_layer}, {"hidden_dim", m.hidden_dim},
        {"head_dim", m.resolved_head_dim()}, {"feedforward_dim", m.feedforward_dim}, {"vocab_size", m.vocab_size},
        {"max_len", m.max_len}, {"tgt_len", m.tgt_len}, {"mem_len", m.mem_len}, {"same_length", m.same_length},
        {"attn_drop", m.attn_drop}, {"proj_drop", m.proj_drop}, {"input_drop", m.input_drop}, {"output_drop", m.output_drop},
        {"word_drop", m.word_drop}, {"ff_drop", m.resolved_ff_drop()}, {"cutoffs", m.cutoffs}, {"div_value", m.div_value},
        {"tie_weight", m.tie_weight}, {"tie_proj", m.tie_proj}, {"share_r_bias", m.resolved_share_r_bias()},
        {"head_gates", m.head_gates}, {"output_scale_folded", m.output_scale_folded},
    };
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
        {"cuda_graphs", s.cuda_graphs},
    };
}
} // namespace

json config_to_json(const Config & c) {
    json gate = stage_to_json(c.gate.stage);
    gate.update(json{
        {"checkpoint", c.gate.checkpoint}, {"gate_lr_multiplier", c.gate.gate_lr_multiplier},
        {"l0_coefficient", c.gate.l0_coefficient}, {"l0_start", c.gate.l0_start}, {"l0_warmup", c.gate.l0_warmup},
        {"l0_unit", c.gate.l0_unit}, {"init_log_alpha", c.gate.init_log_alpha}, {"beta", c.gate.beta}, {"gamma", c.gate.gamma},
        {"zeta", c.gate.zeta}, {"output_scaling", c.gate.output_scaling},
        {"target_sparsity", c.gate.target_sparsity ? json(*c.gate.target_sparsity) : json(nullptr)},
        {"lagrangian_lr", c.gate.lagrangian_lr}, {"gates_interval", c.gate.gates_interval},
    });
    return json{
        {"name", c.name}, {"stages", c.stages}, {"seed", c.seed}, {"device", c.device}, {"gpus", c.gpus},
        {"runs_dir", c.runs_dir}, {"precision", c.precision}, {"data", {{"dir", c.data.dir}, {"dataset", c.data.dataset}}},
        {"model", model_config_to_json(c.model)}, {"train", stage_to_json(c.train)}, {"gate", gate},
        {"eval", {{"batch_size", c.eval.batch_size}, {"splits", c.eval.splits}}},
        {"bench", {{"batch_sizes", c.bench.batch_sizes}, {"dtypes", c.bench.dtypes}, {"devices", c.bench.devices},
                   {"variants", c.bench.variants}, {"head_lists", c.bench.head_lists}, {"steps", c.bench.steps},
                   {"warmup", c.bench.warmup}, {"repetitions", c.bench.repetitions}, {"with_loss", c.bench.with_loss},
                   {"cuda_graphs", c.bench.cuda_graphs}}},
    };
}

} // namespace studio
