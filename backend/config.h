// Run configuration: one struct per config section, loaded from JSON with every default filled in.
// No LibTorch here: the GUI's validator and the fuzzers use this header alone.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace studio {

/// Thrown for any invalid configuration; what() is the one line shown to the user,
/// e.g. "config error: model.num_heads: 7 does not divide hidden_dim 512".
struct ConfigError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// Throws ConfigError("config error: PATH: MESSAGE"), the one-line form of every config check (config and sweep).
[[noreturn]] void config_fail(const std::string & path, const std::string & message);
/// A JSON value's type as config errors name it: "integer", "number", "string", "array", ...
std::string config_type_name(const nlohmann::json & value);

enum class ModelType { AllAttention, TransformerXL };

/// The language model's architecture (reference-model.md sections 1 and 1b).
struct ModelConfig {
    ModelType type = ModelType::AllAttention;
    int64_t num_layers = 16;            // transformer layers
    int64_t num_heads = 8;              // heads per layer of the dense model
    std::vector<int64_t> heads_per_layer; // per-layer head counts; empty = num_heads everywhere (pruned models set it)
    int64_t hidden_dim = 512;           // d_model
    int64_t head_dim = 0;               // 0 = hidden_dim / num_heads
    int64_t feedforward_dim = 2048;     // persistent vectors per head (All-attention) or d_inner (Transformer-XL)
    int64_t vocab_size = 0;             // 0 = taken from the dataset's vocabulary
    int64_t max_len = 512;              // rows of the learned position table (All-attention)
    int64_t tgt_len = 192;              // tokens per segment
    int64_t mem_len = 192;              // tokens of memory carried between segments
    bool same_length = true;            // every query sees mem_len + 1 keys
    double attn_drop = 0.2;             // on attention probabilities (persistent columns included)
    double proj_drop = 0.1;             // after each layer's output projection, and on the final hidden state
    double input_drop = 0.1;            // on the scaled embedding and (separate mask) on the position table
    double output_drop = 0.1;           // on the final hidden state, after proj_drop
    double word_drop = 0.1;             // whole vocabulary rows of the embedding tables, redrawn every forward
    double ff_drop = -1.0;              // Transformer-XL feed-forward dropout; < 0 = proj_drop
    std::vector<int64_t> cutoffs{20000, 40000, 200000}; // adaptive input/softmax cluster boundaries; empty = plain softmax
    double div_value = 4.0;             // tail cluster i has width hidden_dim / div_value^(i+1)
    bool tie_weight = true;             // output word weights shared with the input embedding tables
    bool tie_proj = true;               // tail output projections shared with the input projections
    std::optional<bool> share_r_bias;   // one u/v pair for all layers; unset = per model type (All-att no, TXL yes)
    bool head_gates = false;            // build a hard-concrete gate per head (the reference All-att model always has them)
    bool output_scale_folded = false;   // set on pruned models: nothing to rescale at run time

    int64_t resolved_head_dim() const { return head_dim > 0 ? head_dim : hidden_dim / num_heads; }
    bool resolved_share_r_bias() const { return share_r_bias.value_or(type == ModelType::TransformerXL); }
    double resolved_ff_drop() const { return ff_drop < 0 ? proj_drop : ff_drop; }
    /// Head count of layer l (heads_per_layer when given, else num_heads).
    int64_t heads_in_layer(int64_t layer) const;
};

struct OptimizerConfig {
    std::string name = "lamb";          // "lamb" (reference HappyLamb: no bias correction) or "adam"
    double lr = 0.01;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.0;          // not applied to LayerNorm, biases of norms, or gates
};

struct ScheduleConfig {
    std::string name = "cosine";        // "cosine" (warm-up, then cosine to min_lr over the whole stage) or "constant"
    int64_t warmup_steps = 0;
    double min_lr = 0.0;
};

/// Options shared by the train and gate stages.
struct StageConfig {
    int64_t steps = 0;                  // optimizer steps; 0 = epochs * steps per epoch
    double epochs = 1.0;
    int64_t batch_size = 192;           // global batch (split across ranks)
    bool roll = true;                   // roll every row by a random offset at each epoch (reference iterator)
    OptimizerConfig optimizer;
    ScheduleConfig schedule;
    double clip_grad_norm = 0.5;        // 0 = no clipping
    int64_t eval_interval = 0;          // steps between validations; 0 = only at the end
    int64_t log_interval = 25;          // steps between train events
    int64_t checkpoint_interval = 0;    // steps between checkpoints; 0 = only at the end
    int64_t keep_checkpoints = 2;       // older complete checkpoints are deleted
    std::string nan_policy = "stop";    // "stop" or "skip" a step whose loss is not finite
    bool cuda_graphs = true;            // on CUDA: capture the layers' forward and backward once, replay them each step
};

/// The gating stage: hard-concrete head gates trained with an L0 penalty (reference-model.md sections 2 and 3).
struct GateConfig {
    StageConfig stage;                  // defaults: lr 1e-4, constant schedule
    std::string checkpoint;             // trained checkpoint to start from; empty = this run's train stage
    double gate_lr_multiplier = 10.0;   // gates learn at lr x this (the reference uses 10x)
    double l0_coefficient = 0.02;
    double l0_start = 0.0;              // technique 1, sparsity-loss warm-up: coefficient 0 before this point ...
    double l0_warmup = 1.0;             // ... then a linear ramp over this long
    std::string l0_unit = "epochs";     // "epochs" or "steps" for l0_start and l0_warmup
    double init_log_alpha = 2.0;        // technique 2, gate initialisation
    double beta = 0.333;                // hard-concrete temperature
    double gamma = -0.1;                // stretch interval (gamma, zeta)
    double zeta = 1.1;
    bool output_scaling = true;         // technique 3: open heads scaled by clamp(H / (H - closed + 1e-3), 1, H)
    std::optional<double> target_sparsity; // beyond the paper: drive the fraction of closed heads to this
    double lagrangian_lr = 0.01;        // learning rate of the target-sparsity multipliers (gradient ascent)
    int64_t gates_interval = 25;        // steps between gates events
};

struct EvalConfig {
    int64_t batch_size = 64;
    std::vector<std::string> splits{"valid", "test"};
};

struct BenchConfig {
    std::vector<int64_t> batch_sizes{1, 4};
    std::vector<std::string> dtypes{"fp32"};
    std::vector<std::string> devices{"cpu"};
    std::vector<std::string> variants{"dense", "masked", "pruned"};
    std::vector<std::vector<int64_t>> head_lists; // extra random-weight variants given by per-layer head counts
    int64_t steps = 10;                 // segments timed per repetition (memory carried between them)
    int64_t warmup = 2;                 // untimed segments before the first repetition
    int64_t repetitions = 5;
    bool with_loss = true;              // include the adaptive-softmax loss, as the reference's timing does
    bool cuda_graphs = true;            // on CUDA: capture a segment's layers once and replay them
};

struct DataConfig {
    std::string dir;                    // empty = $STUDIO_DATA, else ./data
    std::string dataset = "wikitext-2"; // sub-folder name; "wikitext-2" or "wikitext-103" (or any folder with wiki.*.tokens)
};

struct Config {
    std::string name = "run";
    std::vector<std::string> stages{"train"}; // any of train, gate, prune, eval, bench, in this order
    uint64_t seed = 87245;
    std::string device = "cpu";         // "cpu", "cuda" or "auto"
    int64_t gpus = 1;                   // ranks started on this machine (CUDA) or CPU ranks (Gloo) when device is cpu
    std::string runs_dir = "runs";
    std::string precision = "auto";     // "fp32", "bf16" (autocast, CUDA only) or "auto" = bf16 on CUDA, fp32 on CPU
    DataConfig data;
    ModelConfig model;
    StageConfig train;
    GateConfig gate;
    EvalConfig eval;
    BenchConfig bench;

    bool has_stage(const std::string & stage) const;
};

/// Parses and validates; throws ConfigError naming the field. Unknown keys are errors.
Config config_from_json(const nlohmann::json & j);
Config config_load(const std::string & path);
/// The file's JSON (comments allowed), unchecked; throws ConfigError naming the file when it is missing or malformed.
nlohmann::json config_read_json(const std::string & path);
/// The resolved config with every default filled in (written to the run's config.json).
nlohmann::json config_to_json(const Config & config);
nlohmann::json model_config_to_json(const ModelConfig & model);
ModelConfig model_config_from_json(const nlohmann::json & j);

/// Checks that need the outside world: the data folder exists, CUDA is there when asked for.
/// cuda_device_count is passed in so that this file stays free of LibTorch.
void config_check_environment(const Config & config, int64_t cuda_device_count);
/// Folder holding wiki.{train,valid,test}.tokens: data.dir, else $STUDIO_DATA, else ./data, then /dataset.
std::string config_data_folder(const Config & config);

} // namespace studio
