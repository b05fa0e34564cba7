// Strict JSON -> Config: every key known, every type checked, every impossible value named with its path.
#include "config.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "sweep.h"

namespace studio {

using nlohmann::json;

void config_fail(const std::string & path, const std::string & message) {
    throw ConfigError("config error: " + path + ": " + message);
}

std::string config_type_name(const json & value) {
    if (value.is_number_integer()) return "integer";
    if (value.is_number()) return "number";
    return value.type_name();
}

namespace {

// Reads one JSON object section, remembers which keys were consumed, and rejects the rest.
class Section {
public:
    Section(const json & object, std::string path) : object_(object), path_(std::move(path)) {
        if (!object_.is_object()) config_fail(path_.empty() ? "(top level)" : path_, "expected an object, got " + config_type_name(object_));
    }

    std::string field(const std::string & key) const { return path_.empty() ? key : path_ + "." + key; }

    const json * find(const std::string & key) {
        seen_.insert(key);
        auto it = object_.find(key);
        return it == object_.end() || it->is_null() ? nullptr : &*it;
    }

    void read(const std::string & key, int64_t & out) {
        if (auto * v = find(key)) {
            if (v->is_number_float()) {
                // 1e3 is an integer to a person; 1e300 is one no int64 holds (casting it is undefined behaviour).
                const double d = v->get<double>();
                if (std::floor(d) == d && d >= -9223372036854775808.0 && d < 9223372036854775808.0) { out = (int64_t) d; return; }
                if (std::floor(d) == d) config_fail(field(key), "integer out of range");
            }
            if (!v->is_number_integer()) config_fail(field(key), "expected an integer, got " + config_type_name(*v));
            if (v->is_number_unsigned() && v->get<uint64_t>() > (uint64_t) INT64_MAX) config_fail(field(key), "integer out of range");
            out = v->get<int64_t>();
        }
    }
    void read(const std::string & key, uint64_t & out) {
        int64_t value = (int64_t) out;
        read(key, value);
        if (value < 0) config_fail(field(key), "must be >= 0, got " + std::to_string(value));
        out = (uint64_t) value;
    }
    void read(const std::string & key, double & out) {
        if (auto * v = find(key)) {
            if (!v->is_number()) config_fail(field(key), "expected a number, got " + config_type_name(*v));
            out = v->get<double>();
            if (!std::isfinite(out)) config_fail(field(key), "must be finite");
        }
    }
    void read(const std::string & key, bool & out) {
        if (auto * v = find(key)) {
            if (!v->is_boolean()) config_fail(field(key), "expected true or false, got " + config_type_name(*v));
            out = v->get<bool>();
        }
    }
    void read(const std::string & key, std::string & out) {
        if (auto * v = find(key)) {
            if (!v->is_string()) config_fail(field(key), "expected a string, got " + config_type_name(*v));
            out = v->get<std::string>();
        }
    }
    void read(const std::string & key, std::optional<bool> & out) {
        if (auto * v = find(key)) { bool b = false; read(key, b); out = b; (void) v; }
    }
    void read(const std::string & key, std::optional<double> & out) {
        if (auto * v = find(key)) { double d = 0; read(key, d); out = d; (void) v; }
    }
    void read(const std::string & key, std::vector<int64_t> & out) {
        if (auto * v = find(key)) {
            out.clear();
            read_int_list(*v, field(key), out);
        }
    }
    void read(const std::string & key, std::vector<std::string> & out) {
        if (auto * v = find(key)) {
            if (!v->is_array()) config_fail(field(key), "expected a list of strings, got " + config_type_name(*v));
            out.clear();
            for (size_t i = 0; i < v->size(); ++i) {
                if (!(*v)[i].is_string()) config_fail(field(key) + "[" + std::to_string(i) + "]", "expected a string, got " + config_type_name((*v)[i]));
                out.push_back((*v)[i].get<std::string>());
            }
        }
    }
    void read(const std::string & key, std::vector<std::vector<int64_t>> & out) {
        if (auto * v = find(key)) {
            if (!v->is_array()) config_fail(field(key), "expected a list of lists of integers, got " + config_type_name(*v));
            out.clear();
            for (size_t i = 0; i < v->size(); ++i) {
                std::vector<int64_t> row;
                read_int_list((*v)[i], field(key) + "[" + std::to_string(i) + "]", row);
                out.push_back(row);
            }
        }
    }
    static void read_int_list(const json & v, const std::string & path, std::vector<int64_t> & out) {
        if (!v.is_array()) config_fail(path, "expected a list of integers, got " + config_type_name(v));
        for (size_t i = 0; i < v.size(); ++i) {
            if (!v[i].is_number_integer()) config_fail(path + "[" + std::to_string(i) + "]", "expected an integer, got " + config_type_name(v[i]));
            out.push_back(v[i].get<int64_t>());
        }
    }

    Section sub(const std::string & key) {
        static const json empty = json::object();
        const json * v = find(key);
        return Section(v ? *v : empty, field(key));
    }

    // Unknown keys are typos more often than not: refuse them, naming the closest path.
    void finish() const {
        for (auto it = object_.begin(); it != object_.end(); ++it) {
            if (!seen_.count(it.key()) && it.key().rfind("_comment", 0) != 0 && it.key() != "//") {
                config_fail(field(it.key()), "unknown key (check the spelling; docs/config.md lists every key)");
            }
        }
    }

private:
    const json & object_;
    std::string path_;
    std::set<std::string> seen_;
};

std::string number(double value) {
    std::ostringstream s;
    s << value;
    return s.str();
}

void one_of(const std::string & path, const std::string & value, const std::vector<std::string> & allowed) {
    for (const auto & a : allowed) if (a == value) return;
    std::string list;
    for (const auto & a : allowed) list += (list.empty() ? "" : ", ") + a;
    config_fail(path, "\"" + value + "\" is not one of " + list);
}

void positive(const std::string & path, double value) {
    if (!(value > 0)) { std::ostringstream s; s << "must be > 0, got " << value; config_fail(path, s.str()); }
}
void non_negative(const std::string & path, double value) {
    if (value < 0) { std::ostringstream s; s << "must be >= 0, got " << value; config_fail(path, s.str()); }
}
void probability(const std::string & path, double value) {
    if (value < 0 || value >= 1) { std::ostringstream s; s << "must be in [0, 1), got " << value; config_fail(path, s.str()); }
}

void read_model(Section s, ModelConfig & m) {
    std::string type = m.type == ModelType::AllAttention ? "all_attention" : "transformer_xl";
    s.read("type", type);
    one_of(s.field("type"), type, {"all_attention", "transformer_xl"});
    m.type = type == "all_attention" ? ModelType::AllAttention : ModelType::TransformerXL;
    s.read("num_layers", m.num_layers);
    s.read("num_heads", m.num_heads);
    s.read("heads_per_layer", m.heads_per_layer);
    s.read("hidden_dim", m.hidden_dim);
    s.read("head_dim", m.head_dim);
    s.read("feedforward_dim", m.feedforward_dim);
    s.read("vocab_size", m.vocab_size);
    s.read("max_len", m.max_len);
    s.read("tgt_len", m.tgt_len);
    s.read("mem_len", m.mem_len);
    s.read("same_length", m.same_length);
    s.read("attn_drop", m.attn_drop);
    s.read("proj_drop", m.proj_drop);
    s.read("input_drop", m.input_drop);
    s.read("output_drop", m.output_drop);
    s.read("word_drop", m.word_drop);
    s.read("ff_drop", m.ff_drop);
    s.read("cutoffs", m.cutoffs);
    s.read("div_value", m.div_value);
    s.read("tie_weight", m.tie_weight);
    s.read("tie_proj", m.tie_proj);
    s.read("share_r_bias", m.share_r_bias);
    s.read("head_gates", m.head_gates);
    s.read("output_scale_folded", m.output_scale_folded);
    s.finish();

    if (m.num_layers <= 0) config_fail(s.field("num_layers"), "must be at least 1, got " + std::to_string(m.num_layers));
    if (m.num_heads <= 0) config_fail(s.field("num_heads"), "must be at least 1, got " + std::to_string(m.num_heads));
    if (m.hidden_dim <= 0) config_fail(s.field("hidden_dim"), "must be at least 1, got " + std::to_string(m.hidden_dim));
    if (m.head_dim < 0) config_fail(s.field("head_dim"), "must be >= 0 (0 = hidden_dim / num_heads)");
    if (m.head_dim == 0 && m.hidden_dim % m.num_heads != 0) {
        config_fail(s.field("num_heads"), std::to_string(m.num_heads) + " does not divide hidden_dim " + std::to_string(m.hidden_dim));
    }
    if (!m.heads_per_layer.empty()) {
        if ((int64_t) m.heads_per_layer.size() != m.num_layers) {
            config_fail(s.field("heads_per_layer"), "has " + std::to_string(m.heads_per_layer.size()) + " entries, num_layers is " + std::to_string(m.num_layers));
        }
        for (size_t l = 0; l < m.heads_per_layer.size(); ++l) {
            if (m.heads_per_layer[l] < 0 || m.heads_per_layer[l] > m.num_heads) {
                config_fail(s.field("heads_per_layer") + "[" + std::to_string(l) + "]", "must be in [0, num_heads = " + std::to_string(m.num_heads) + "], got " + std::to_string(m.heads_per_layer[l]));
            }
        }
    }
    if (m.resolved_share_r_bias()) {
        for (size_t l = 0; l < m.heads_per_layer.size(); ++l) {
            if (m.heads_per_layer[l] != m.num_heads) {
                config_fail(s.field("share_r_bias"), "u/v biases shared by all layers need num_heads heads in every layer, layer " + std::to_string(l) +
                                                  " has " + std::to_string(m.heads_per_layer[l]) + "; set share_r_bias false");
            }
        }
    }
    if (m.feedforward_dim <= 0) config_fail(s.field("feedforward_dim"), "must be at least 1, got " + std::to_string(m.feedforward_dim));
    if (m.vocab_size < 0) config_fail(s.field("vocab_size"), "must be >= 0 (0 = from the dataset)");
    if (m.tgt_len <= 0) config_fail(s.field("tgt_len"), "must be at least 1, got " + std::to_string(m.tgt_len));
    if (m.mem_len < 0) config_fail(s.field("mem_len"), "must be >= 0, got " + std::to_string(m.mem_len));
    // Bounds first, so that no sum below can overflow.
    for (auto [name, value] : {std::make_pair("num_layers", m.num_layers), std::make_pair("num_heads", m.num_heads),
                               std::make_pair("hidden_dim", m.hidden_dim), std::make_pair("feedforward_dim", m.feedforward_dim),
                               std::make_pair("tgt_len", m.tgt_len), std::make_pair("mem_len", m.mem_len), std::make_pair("max_len", m.max_len)}) {
        if (value > (int64_t) 1 << 24) config_fail(s.field(name), std::to_string(value) + " is beyond any model this engine can hold");
    }
    if (m.type == ModelType::AllAttention && m.tgt_len + m.mem_len > m.max_len) {
        config_fail(s.field("max_len"), std::to_string(m.max_len) + " is shorter than tgt_len + mem_len = " + std::to_string(m.tgt_len + m.mem_len) + " (the position table needs a row per key)");
    }
    if (m.same_length && m.mem_len == 0) {
        config_fail(s.field("same_length"), "needs mem_len > 0 (with no memory every query would see only itself); set same_length false");
    }
    probability(s.field("attn_drop"), m.attn_drop);
    probability(s.field("proj_drop"), m.proj_drop);
    probability(s.field("input_drop"), m.input_drop);
    probability(s.field("output_drop"), m.output_drop);
    probability(s.field("word_drop"), m.word_drop);
    if (m.ff_drop >= 1) config_fail(s.field("ff_drop"), "must be < 1 (negative = proj_drop)");
    for (size_t i = 0; i < m.cutoffs.size(); ++i) {
        if (m.cutoffs[i] <= 0 || (i > 0 && m.cutoffs[i] <= m.cutoffs[i - 1])) {
            config_fail(s.field("cutoffs"), "must be positive and increasing");
        }
        if (m.vocab_size > 0 && m.cutoffs[i] >= m.vocab_size) {
            config_fail(s.field("cutoffs") + "[" + std::to_string(i) + "]", std::to_string(m.cutoffs[i]) + " is not below vocab_size " + std::to_string(m.vocab_size));
        }
    }
    if (m.div_value < 1) config_fail(s.field("div_value"), "must be >= 1");
    for (size_t i = 0; i < m.cutoffs.size(); ++i) {
        if ((int64_t) (m.hidden_dim / std::pow(m.div_value, (double) i + 1)) < 1) {
            config_fail(s.field("div_value"), "leaves tail cluster " + std::to_string(i) + " with width 0 at hidden_dim " + std::to_string(m.hidden_dim));
        }
    }
}

void read_optimizer(Section s, OptimizerConfig & o) {
    s.read("name", o.name);
    s.read("lr", o.lr);
    if (const json * betas = s.find("betas")) {
        if (!betas->is_array() || betas->size() != 2 || !(*betas)[0].is_number() || !(*betas)[1].is_number()) {
            config_fail(s.field("betas"), "expected two numbers, e.g. [0.9, 0.999]");
        }
        o.beta1 = (*betas)[0].get<double>();
        o.beta2 = (*betas)[1].get<double>();
    }
    s.read("eps", o.eps);
    s.read("weight_decay", o.weight_decay);
    s.finish();
    one_of(s.field("name"), o.name, {"lamb", "adam"});
    positive(s.field("lr"), o.lr);
    if (o.beta1 < 0 || o.beta1 >= 1 || o.beta2 < 0 || o.beta2 >= 1) config_fail(s.field("betas"), "each must be in [0, 1)");
    positive(s.field("eps"), o.eps);
    non_negative(s.field("weight_decay"), o.weight_decay);
}

void read_stage(Section & s, StageConfig & st) {
    s.read("steps", st.steps);
    s.read("epochs", st.epochs);
    s.read("batch_size", st.batch_size);
    s.read("roll", st.roll);
    read_optimizer(s.sub("optimizer"), st.optimizer);
    Section sched = s.sub("schedule");
    sched.read("name", st.schedule.name);
    sched.read("warmup_steps", st.schedule.warmup_steps);
    sched.read("min_lr", st.schedule.min_lr);
    sched.finish();
    one_of(sched.field("name"), st.schedule.name, {"cosine", "constant"});
    if (st.schedule.warmup_steps < 0) config_fail(sched.field("warmup_steps"), "must be >= 0");
    non_negative(sched.field("min_lr"), st.schedule.min_lr);
    if (st.schedule.min_lr > st.optimizer.lr) config_fail(sched.field("min_lr"), "is above optimizer.lr");
    s.read("clip_grad_norm", st.clip_grad_norm);
    s.read("eval_interval", st.eval_interval);
    s.read("log_interval", st.log_interval);
    s.read("checkpoint_interval", st.checkpoint_interval);
    s.read("keep_checkpoints", st.keep_checkpoints);
    s.read("nan_policy", st.nan_policy);
    s.read("cuda_graphs", st.cuda_graphs);
    if (st.steps < 0) config_fail(s.field("steps"), "must be >= 0 (0 = use epochs)");
    if (st.steps == 0) positive(s.field("epochs"), st.epochs);
    if (st.batch_size <= 0) config_fail(s.field("batch_size"), "must be at least 1, got " + std::to_string(st.batch_size));
    non_negative(s.field("clip_grad_norm"), st.clip_grad_norm);
    if (st.eval_interval < 0) config_fail(s.field("eval_interval"), "must be >= 0");
    if (st.log_interval <= 0) config_fail(s.field("log_interval"), "must be at least 1");
    if (st.checkpoint_interval < 0) config_fail(s.field("checkpoint_interval"), "must be >= 0");
    if (st.keep_checkpoints < 1) config_fail(s.field("keep_checkpoints"), "must be at least 1");
    one_of(s.field("nan_policy"), st.nan_policy, {"stop", "skip"});
}

} // namespace

int64_t ModelConfig::heads_in_layer(int64_t layer) const {
    return heads_per_layer.empty() ? num_heads : heads_per_layer.at((size_t) layer);
}

bool Config::has_stage(const std::string & stage) const {
    for (const auto & s : stages) if (s == stage) return true;
    return false;
}

ModelConfig model_config_from_json(const json & j) {
    ModelConfig m;
    read_model(Section(j, "model"), m);
    return m;
}

Config config_from_json(const json & j) {
    // A sweep is checked in full (every value, every point); on its own it stands for the config without it.
    if (sweep_present(j)) return sweep_expand(j).base;
    Config c;
    // The gate stage's own defaults (reference train_gating: LAMB 1e-4, constant schedule).
    c.gate.stage.optimizer.lr = 1e-4;
    c.gate.stage.schedule.name = "constant";
    c.gate.stage.epochs = 1.0;

    Section top(j, "");
    top.read("name", c.name);
    top.read("stages", c.stages);
    top.read("seed", c.seed);
    top.read("device", c.device);
    top.read("gpus", c.gpus);
    top.read("runs_dir", c.runs_dir);
    top.read("precision", c.precision);
    {
        Section d = top.sub("data");
        d.read("dir", c.data.dir);
        d.read("dataset", c.data.dataset);
        d.finish();
        if (c.data.dataset.empty()) config_fail("data.dataset", "must name the dataset folder, e.g. \"wikitext-2\"");
    }
    read_model(top.sub("model"), c.model);
    {
        Section t = top.sub("train");
        read_stage(t, c.train);
        t.finish();
    }
    {
        Section g = top.sub("gate");
        c.gate.stage.batch_size = c.train.batch_size; // gating runs on the train stage's batch unless told otherwise
        read_stage(g, c.gate.stage);
        g.read("checkpoint", c.gate.checkpoint);
        g.read("gate_lr_multiplier", c.gate.gate_lr_multiplier);
        g.read("l0_coefficient", c.gate.l0_coefficient);
        g.read("l0_start", c.gate.l0_start);
        g.read("l0_warmup", c.gate.l0_warmup);
        g.read("l0_unit", c.gate.l0_unit);
        g.read("init_log_alpha", c.gate.init_log_alpha);
        g.read("beta", c.gate.beta);
        g.read("gamma", c.gate.gamma);
        g.read("zeta", c.gate.zeta);
        g.read("output_scaling", c.gate.output_scaling);
        g.read("target_sparsity", c.gate.target_sparsity);
        g.read("lagrangian_lr", c.gate.lagrangian_lr);
        g.read("gates_interval", c.gate.gates_interval);
        g.finish();
        positive("gate.gate_lr_multiplier", c.gate.gate_lr_multiplier);
        non_negative("gate.l0_coefficient", c.gate.l0_coefficient);
        non_negative("gate.l0_start", c.gate.l0_start);
        non_negative("gate.l0_warmup", c.gate.l0_warmup);
        one_of("gate.l0_unit", c.gate.l0_unit, {"epochs", "steps"});
        positive("gate.beta", c.gate.beta);
        if (!(c.gate.gamma < 0)) config_fail("gate.gamma", "must be < 0 (the stretch interval is (gamma, zeta) around [0, 1])");
        if (!(c.gate.zeta > 1)) config_fail("gate.zeta", "must be > 1 (the stretch interval is (gamma, zeta) around [0, 1])");
        if (c.gate.target_sparsity && (*c.gate.target_sparsity < 0 || *c.gate.target_sparsity >= 1)) {
            config_fail("gate.target_sparsity", "must be in [0, 1), got " + number(*c.gate.target_sparsity));
        }
        positive("gate.lagrangian_lr", c.gate.lagrangian_lr);
        if (c.gate.gates_interval <= 0) config_fail("gate.gates_interval", "must be at least 1");
    }
    {
        Section e = top.sub("eval");
        e.read("batch_size", c.eval.batch_size);
        e.read("splits", c.eval.splits);
        e.finish();
        if (c.eval.batch_size <= 0) config_fail("eval.batch_size", "must be at least 1");
        for (const auto & split : c.eval.splits) one_of("eval.splits", split, {"train", "valid", "test"});
    }
    {
        Section b = top.sub("bench");
        b.read("batch_sizes", c.bench.batch_sizes);
        b.read("dtypes", c.bench.dtypes);
        b.read("devices", c.bench.devices);
        b.read("variants", c.bench.variants);
        b.read("head_lists", c.bench.head_lists);
        b.read("steps", c.bench.steps);
        b.read("warmup", c.bench.warmup);
        b.read("repetitions", c.bench.repetitions);
        b.read("with_loss", c.bench.with_loss);
        b.read("cuda_graphs", c.bench.cuda_graphs);
        b.finish();
        if (c.bench.batch_sizes.empty()) config_fail("bench.batch_sizes", "must list at least one batch size");
        for (auto bs : c.bench.batch_sizes) if (bs <= 0) config_fail("bench.batch_sizes", "every batch size must be at least 1");
        for (const auto & d : c.bench.dtypes) one_of("bench.dtypes", d, {"fp32", "bf16"});
        for (const auto & d : c.bench.devices) one_of("bench.devices", d, {"cpu", "cuda"});
        for (const auto & v : c.bench.variants) one_of("bench.variants", v, {"dense", "masked", "pruned"});
        for (size_t i = 0; i < c.bench.head_lists.size(); ++i) {
            const auto & list = c.bench.head_lists[i];
            const std::string path = "bench.head_lists[" + std::to_string(i) + "]";
            if ((int64_t) list.size() != c.model.num_layers) config_fail(path, "has " + std::to_string(list.size()) + " entries, model.num_layers is " + std::to_string(c.model.num_layers));
            for (auto h : list) if (h < 0 || h > c.model.num_heads) config_fail(path, "head counts must be in [0, model.num_heads = " + std::to_string(c.model.num_heads) + "]");
        }
        if (c.bench.steps <= 0) config_fail("bench.steps", "must be at least 1");
        if (c.bench.warmup < 0) config_fail("bench.warmup", "must be >= 0");
        if (c.bench.repetitions <= 0) config_fail("bench.repetitions", "must be at least 1");
    }
    top.finish();

    if (c.name.empty() || c.name.find('/') != std::string::npos) config_fail("name", "must be a non-empty name without '/'");
    if (c.stages.empty()) config_fail("stages", "must list at least one of train, gate, prune, eval, bench");
    static const std::vector<std::string> order{"train", "gate", "prune", "eval", "bench"};
    size_t last = 0;
    for (const auto & stage : c.stages) {
        one_of("stages", stage, order);
        size_t index = 0;
        while (order[index] != stage) ++index;
        if (index < last) config_fail("stages", "must keep the order train, gate, prune, eval, bench");
        last = index;
    }
    one_of("device", c.device, {"cpu", "cuda", "auto"});
    one_of("precision", c.precision, {"auto", "fp32", "bf16"});
    if (c.gpus < 1) config_fail("gpus", "must be at least 1, got " + std::to_string(c.gpus));
    if (c.precision == "bf16" && c.device == "cpu") config_fail("precision", "bf16 autocast needs device \"cuda\"; use \"fp32\" or \"auto\" on the CPU");
    if (c.train.batch_size % c.gpus != 0) {
        config_fail("train.batch_size", std::to_string(c.train.batch_size) + " is not divisible by gpus " + std::to_string(c.gpus) + " (each rank takes an equal share)");
    }
    if (c.gate.stage.batch_size % c.gpus != 0) {
        config_fail("gate.batch_size", std::to_string(c.gate.stage.batch_size) + " is not divisible by gpus " + std::to_string(c.gpus));
    }
    if (c.has_stage("gate") && !c.has_stage("train") && c.gate.checkpoint.empty()) {
        config_fail("gate.checkpoint", "the gate stage needs a trained model: add \"train\" to stages or name a checkpoint here");
    }
    return c;
}

Config config_load(const std::string & path) {
    return config_from_json(config_read_json(path));
}

json config_read_json(const std::string & path) {
    std::ifstream in(path);
    if (!in) throw ConfigError("config error: " + path + ": cannot open the file (check the path)");
    json j;
    try {
        j = json::parse(in, nullptr, true, /*ignore_comments=*/true);
    } catch (const json::parse_error & e) {
        std::string what = e.what();
        auto pos = what.find("parse error");
        throw ConfigError("config error: " + path + ": not valid JSON (" + (pos == std::string::npos ? what : what.substr(pos)) + ")");
    }
    return j;
}

std::string config_data_folder(const Config & config) {
    std::string root = config.data.dir;
    if (root.empty()) {
        const char * env = std::getenv("STUDIO_DATA");
        root = env && *env ? env : "data";
    }
    return (std::filesystem::path(root) / config.data.dataset).string();
}

void config_check_environment(const Config & config, int64_t cuda_device_count) {
    bool needs_data = config.has_stage("train") || config.has_stage("gate") || config.has_stage("eval");
    if (needs_data) {
        const std::string folder = config_data_folder(config);
        if (!std::filesystem::is_directory(folder)) {
            throw ConfigError("config error: data.dir: dataset folder " + folder +
                              " does not exist (set data.dir or $STUDIO_DATA; scripts/fetch-wikitext.sh downloads WikiText)");
        }
    }
    if (config.device == "cuda") {
        if (cuda_device_count == 0) {
            throw ConfigError("config error: device: \"cuda\" was asked for but this build or machine has no CUDA GPU; use \"cpu\" or \"auto\"");
        }
        if (config.gpus > cuda_device_count) {
            throw ConfigError("config error: gpus: " + std::to_string(config.gpus) + " asked for, this machine has " +
                              std::to_string(cuda_device_count) + " CUDA GPU(s)");
        }
    }
    for (const auto & d : config.bench.devices) {
        if (d == "cuda" && cuda_device_count == 0 && config.has_stage("bench")) {
            throw ConfigError("config error: bench.devices: \"cuda\" listed but no CUDA GPU is available; list only \"cpu\"");
        }
    }
}

} // namespace studio
