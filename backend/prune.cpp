#include "prune.h"

#include <filesystem>
#include <cstdio>
#include <fstream>

#include <torch/torch.h>

#include "checkpoint.h"
#include "model_info.h"
#include "tensor_io.h"

namespace studio {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<std::vector<int64_t>> open_heads(const LanguageModelImpl & model) {
    std::vector<std::vector<int64_t>> keep;
    for (const auto & layer : model.layer_list) {
        std::vector<int64_t> heads;
        const int64_t H = layer->attention->options.num_heads();
        if (layer->attention->gate) {
            auto open = layer->attention->gate->open_mask().to(torch::kCPU);
            for (int64_t h = 0; h < H; ++h) if (open[h].item<bool>()) heads.push_back(h);
        } else {
            for (int64_t h = 0; h < H; ++h) heads.push_back(h);
        }
        keep.push_back(heads);
    }
    return keep;
}

PrunedModel prune_heads(const LanguageModelImpl & gated, const std::vector<std::vector<int64_t>> & keep, bool output_scaling) {
    TORCH_CHECK((int64_t) keep.size() == gated.config.num_layers, "prune: ", keep.size(), " head lists for ", gated.config.num_layers, " layers");
    torch::NoGradGuard no_grad;
    ModelConfig config = gated.config;
    config.heads_per_layer.clear();
    for (const auto & heads : keep) config.heads_per_layer.push_back((int64_t) heads.size());
    config.head_gates = false;
    config.share_r_bias = false;   // heads differ per layer, so each layer gets its own slice of u/v
    config.output_scale_folded = output_scaling || gated.config.output_scale_folded;

    PrunedModel result;
    result.heads_kept = keep;
    result.model = LanguageModel(config);
    auto & pruned = *result.model;
    pruned.to(gated.io->emb[0].device());
    const int64_t dh = config.resolved_head_dim();

    // Everything outside the attention heads is copied as is.
    auto source = module_state(gated);
    for (auto & [name, tensor] : module_state(pruned)) {
        if (name.find(".attention.") != std::string::npos) continue;
        tensor.copy_(source.at(name));
    }
    for (int64_t l = 0; l < config.num_layers; ++l) {
        const auto & from = *gated.layer_list[(size_t) l]->attention;
        auto & to = *pruned.layer_list[(size_t) l]->attention;
        const int64_t H = from.options.num_heads();
        const auto & heads = keep[(size_t) l];
        to.o_bias.copy_(from.o_bias);
        if (heads.empty()) continue;
        std::vector<torch::Tensor> rows_index;
        for (auto h : heads) rows_index.push_back(torch::arange(h * dh, (h + 1) * dh, torch::kLong));
        auto rows = torch::cat(rows_index).to(from.q_weight.device());                    // (kept*dh,)
        auto head_index = torch::tensor(heads, torch::kLong).to(from.q_weight.device());  // (kept,)
        to.q_weight.copy_(from.q_weight.index_select(0, rows));
        to.k_weight.copy_(from.k_weight.index_select(0, rows));
        to.v_weight.copy_(from.v_weight.index_select(0, rows));
        to.r_weight.copy_(from.r_weight.index_select(0, rows));
        const auto & u = from.options.own_r_bias() ? from.u_bias : gated.u_bias;
        const auto & v = from.options.own_r_bias() ? from.v_bias : gated.v_bias;
        to.u_bias.copy_(u.index_select(0, rows));
        to.v_bias.copy_(v.index_select(0, rows));
        if (from.options.persistent() > 0) {
            to.mem_k.copy_(from.mem_k.index_select(0, head_index));
            to.mem_v.copy_(from.mem_v.index_select(0, head_index));
        }
        auto o_columns = from.o_weight.index_select(1, rows);                             // (D, kept*dh)
        if (output_scaling && from.gate) {
            // The gated model scaled the open heads by clamp(H / (H - closed + 1e-3), 1, H): fold it into W_o.
            const double closed = (double) (H - (int64_t) heads.size());
            const double factor = std::min((double) H, std::max(1.0, (double) H / ((double) H - closed + 1e-3)));
            o_columns = o_columns * factor;
        }
        to.o_weight.copy_(o_columns);
    }
    return result;
}

json prune_write(const std::string & out_dir, const PrunedModel & pruned, const LanguageModelImpl & original, const json & run_config) {
    fs::create_directories(out_dir);
    const json model_json = model_config_to_json(pruned.model->config);
    file_write_atomic((fs::path(out_dir) / "model.safetensors").string(),
                      tensors_serialize(module_state(*pruned.model), {{"format", "head-pruning-studio pruned model"}, {"model", model_json.dump()}}));
    const auto before = original.parameter_counts();
    const auto after = pruned.model->parameter_counts();
    json heads{{"heads_kept", pruned.heads_kept}, {"heads_per_layer", pruned.model->config.heads_per_layer},
               {"heads_total_before", [&] { int64_t n = 0; for (auto h : before.heads) n += h; return n; }()}};
    file_write_atomic((fs::path(out_dir) / "heads.json").string(), heads.dump(2));
    json config = run_config;
    config["model"] = model_json;
    file_write_atomic((fs::path(out_dir) / "config.json").string(), config.dump(2));
    return json{{"heads_kept", pruned.heads_kept}, {"heads_per_layer", pruned.model->config.heads_per_layer},
                {"params_before", before.total}, {"params_after", after.total},
                {"layer_params_before", before.layers}, {"layer_params_after", after.layers}, {"path", out_dir}};
}

json prune_checkpoint(const std::string & checkpoint, const Config & config, const json & run_config, const std::string & out_dir) {
    auto loaded = checkpoint_load(checkpoint);
    LanguageModel model(loaded.model_config);
    checkpoint_load_model(loaded, *model, false);
    model->configure_gates_constants_only(config.gate);
    const bool scaled = model->has_gates() && config.gate.output_scaling && !model->config.output_scale_folded;
    auto pruned = prune_heads(*model, open_heads(*model), scaled);
    json summary = prune_write(out_dir, pruned, *model, run_config);
    summary["source"] = checkpoint;
    auto heads = [](const ModelConfig & m) { int64_t n = 0; for (int64_t l = 0; l < m.num_layers; ++l) n += m.heads_in_layer(l); return n; };
    std::fprintf(stderr, "[prune] kept %lld of %lld heads: layer parameters %s -> %s, total %s -> %s (%s)\n",
                 (long long) heads(pruned.model->config), (long long) heads(model->config),
                 with_commas(summary["layer_params_before"]).c_str(), with_commas(summary["layer_params_after"]).c_str(),
                 with_commas(summary["params_before"]).c_str(), with_commas(summary["params_after"]).c_str(), out_dir.c_str());
    return summary;
}

LanguageModel pruned_load(const std::string & dir) {
    const std::string path = (fs::path(dir) / "model.safetensors").string();
    std::map<std::string, std::string> metadata;
    auto tensors = tensors_load(path, &metadata);
    if (!metadata.count("model")) throw FormatError("pruned model " + path + ": no model config in its metadata (not written by studio prune)");
    auto config_json = json::parse(metadata["model"], nullptr, false);
    if (config_json.is_discarded()) throw FormatError("pruned model " + path + ": its model config is corrupt");
    ModelConfig config;
    try {
        config = model_config_from_json(config_json);
    } catch (const std::exception & e) {
        throw FormatError("pruned model " + path + ": " + e.what());
    }
    LanguageModel model(config);
    module_load_state(*model, tensors, path);
    return model;
}

} // namespace studio
