#include "model_info.h"

#include <sstream>

#include <torch/torch.h>

#include "language_model.h"

namespace studio {

using nlohmann::json;

std::string with_commas(int64_t value) {
    std::string digits = std::to_string(value < 0 ? -value : value), out;
    for (size_t i = 0; i < digits.size(); ++i) {
        if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
        out.push_back(digits[i]);
    }
    return value < 0 ? "-" + out : out;
}

json model_info(const ModelConfig & config) {
    torch::NoGradGuard no_grad;
    LanguageModel model(config);
    const auto c = model->parameter_counts();
    json layers = json::array();
    int64_t heads = 0;
    for (size_t l = 0; l < c.per_layer.size(); ++l) {
        layers.push_back({{"heads", c.heads[l]}, {"params", c.per_layer[l]}, {"params_per_head", c.per_head[l]}});
        heads += c.heads[l];
    }
    return json{{"type", config.type == ModelType::AllAttention ? "all_attention" : "transformer_xl"},
                {"num_layers", config.num_layers}, {"hidden_dim", config.hidden_dim}, {"head_dim", config.resolved_head_dim()},
                {"feedforward_dim", config.feedforward_dim}, {"vocab_size", config.vocab_size}, {"heads_total", heads},
                {"heads_per_layer", c.heads}, {"params_total", c.total}, {"params_layers", c.layers},
                {"params_embedding", c.embedding}, {"params_softmax", c.softmax}, {"params_other", c.other},
                {"params_gates", c.gates}, {"layers", layers}};
}

std::string model_info_text(const json & info) {
    std::ostringstream s;
    const bool all_attention = info["type"] == "all_attention";
    s << "model: " << info["type"].get<std::string>() << ", " << info["num_layers"].get<int64_t>() << " layers, "
      << info["heads_total"].get<int64_t>() << " heads, d_model " << info["hidden_dim"].get<int64_t>() << ", d_head "
      << info["head_dim"].get<int64_t>() << ", " << (all_attention ? "persistent vectors per head " : "d_inner ")
      << info["feedforward_dim"].get<int64_t>() << ", vocabulary " << with_commas(info["vocab_size"].get<int64_t>()) << "\n";
    auto row = [&](const char * name, int64_t value) {
        char line[96];
        std::snprintf(line, sizeof line, "  %-22s %14s\n", name, with_commas(value).c_str());
        s << line;
    };
    s << "parameters (tied tensors counted once):\n";
    row("total", info["params_total"]);
    row("transformer layers", info["params_layers"]);
    row("embedding", info["params_embedding"]);
    row("softmax (untied part)", info["params_softmax"]);
    row(all_attention ? "position table, u/v" : "shared u/v, final norm", info["params_other"]);
    row("gates (in layers)", info["params_gates"]);
    s << "per layer:\n  layer  heads       params   per head\n";
    int64_t l = 0;
    for (const auto & layer : info["layers"]) {
        char line[96];
        std::snprintf(line, sizeof line, "  %5lld  %5lld  %11s  %9s\n", (long long) l++, (long long) layer["heads"].get<int64_t>(),
                      with_commas(layer["params"]).c_str(), with_commas(layer["params_per_head"]).c_str());
        s << line;
    }
    return s.str();
}

} // namespace studio
