#include "sweep_summary.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>

#include "events.h"
#include "run_dir.h"
#include "safetensors.h"

namespace studio {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

int64_t sum_ints(const json & list) {
    int64_t n = 0;
    if (list.is_array()) for (const auto & v : list) if (v.is_number_integer()) n += v.get<int64_t>();
    return n;
}

std::string commas(int64_t value) {
    std::string digits = std::to_string(value), out;
    for (size_t i = 0; i < digits.size(); ++i) {
        if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
        out.push_back(digits[i]);
    }
    return out;
}

std::string format(const char * pattern, double value) {
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, pattern, value);
    return buffer;
}

// Cells of the markdown table; '|' and newlines would break the row.
std::string cell(std::string text) {
    for (auto & c : text) if (c == '|' || c == '\n') c = ' ';
    return text;
}

// The pruned model's speed-up at the headline batch and dtype (CUDA first), else at the largest batch measured.
json headline_speedup(const json & rows) {
    json best = nullptr;
    int best_rank = -1;
    for (const auto & r : rows) {
        if (r.value("variant", "") != "pruned" || !r.contains("speedup")) continue;
        const bool headline = r.value("batch", int64_t(0)) == kSweepSpeedupBatch && r.value("dtype", "") == kSweepSpeedupDtype;
        const int rank = (headline ? 1 << 30 : 0) + (r.value("device", "") == "cuda" ? 1 << 29 : 0) + (int) r.value("batch", int64_t(0));
        if (rank > best_rank) {
            best_rank = rank;
            best = {{"speedup", r["speedup"]}, {"batch", r.value("batch", int64_t(0))}, {"dtype", r.value("dtype", "")},
                    {"device", r.value("device", "")}, {"ideal_speedup", r.value("ideal_speedup", 0.0)}};
        }
    }
    return best;
}

} // namespace

json sweep_point_row(const std::string & run_dir) {
    json row = {{"status", "pending"}, {"error", nullptr}, {"model_type", nullptr}, {"heads_total", nullptr}, {"heads_kept", nullptr},
                {"heads_per_layer", nullptr}, {"sparsity", nullptr}, {"layer_params_dense", nullptr}, {"params_total_dense", nullptr},
                {"layer_params", nullptr}, {"params_total", nullptr}, {"ppl_model", nullptr}, {"valid_ppl", nullptr}, {"test_ppl", nullptr},
                {"gated_valid_ppl", nullptr}, {"gated_test_ppl", nullptr}, {"speedup", nullptr}, {"speedup_b32_bf16", nullptr},
                {"bench", json::array()}, {"wall_s", nullptr}};
    const std::string path = run_events_path(run_dir);
    if (!fs::exists(path)) return row;

    json last_gates, last_prune, bench_rows = json::array();
    std::map<std::string, std::map<std::string, double>> ppl; // model -> split -> ppl of the eval stage
    std::string status = "interrupted", error;
    double wall = 0, span_start = -1, last_time = -1;
    for (const auto & e : events_read_all(path)) {
        const std::string type = e.value("event", "");
        const double time = e.value("time", 0.0);
        if (type == "run_start") {
            // A resumed run: the time between the last event and this restart is not the run's.
            if (span_start >= 0) wall += last_time - span_start;
            span_start = time;
            status = "interrupted";
            error.clear();
            const json & model = e.value("model", json::object());
            row["model_type"] = model.value("type", "");
            row["heads_total"] = sum_ints(model.value("heads_per_layer", json::array()));
            row["layer_params_dense"] = model.value("params_layers", json());
            row["params_total_dense"] = model.value("params_total", json());
        } else if (type == "gates" && e.contains("open")) {
            last_gates = e;
        } else if (type == "prune") {
            last_prune = e;
        } else if (type == "eval" && e.value("stage", "") == "eval" && e.contains("ppl") && e["ppl"].is_number()) {
            ppl[e.value("model", "dense")][e.value("split", "")] = e["ppl"].get<double>();
        } else if (type == "bench" && e.contains("rows") && e["rows"].is_array()) {
            bench_rows = e["rows"];
        } else if (type == "error") {
            error = e.value("message", "error");
        } else if (type == "run_end") {
            status = e.value("status", "ok");
        }
        last_time = time;
    }
    if (span_start >= 0) wall += last_time - span_start;
    row["status"] = status;
    row["error"] = error.empty() ? json(nullptr) : json(error);
    row["wall_s"] = std::round(wall * 10) / 10;

    if (last_prune.is_object()) {
        row["heads_per_layer"] = last_prune.value("heads_per_layer", json::array());
        row["heads_kept"] = sum_ints(row["heads_per_layer"]);
        // The gated model the heads were removed from: the sparsity is counted against its heads.
        row["layer_params_dense"] = last_prune.value("layer_params_before", row["layer_params_dense"]);
        row["params_total_dense"] = last_prune.value("params_before", row["params_total_dense"]);
        row["layer_params"] = last_prune.value("layer_params_after", json());
        row["params_total"] = last_prune.value("params_after", json());
    } else if (last_gates.is_object()) {
        json per_layer = json::array();
        for (const auto & layer : last_gates["open"]) {
            int64_t open = 0;
            for (const auto & g : layer) open += g.is_boolean() && g.get<bool>();
            per_layer.push_back(open);
        }
        row["heads_per_layer"] = per_layer;
        row["heads_kept"] = sum_ints(per_layer);
    }
    if (row["heads_kept"].is_number() && row["heads_total"].is_number() && row["heads_total"].get<int64_t>() > 0) {
        row["sparsity"] = 1.0 - (double) row["heads_kept"].get<int64_t>() / (double) row["heads_total"].get<int64_t>();
    }
    for (const char * model : {"pruned", "gated", "dense"}) {
        if (!ppl.count(model)) continue;
        row["ppl_model"] = model;
        for (const char * split : {"valid", "test"}) {
            if (ppl[model].count(split)) row[std::string(split) + "_ppl"] = ppl[model][split];
        }
        break;
    }
    if (ppl.count("gated")) {
        for (const char * split : {"valid", "test"}) {
            if (ppl["gated"].count(split)) row["gated_" + std::string(split) + "_ppl"] = ppl["gated"][split];
        }
    }
    for (const auto & r : bench_rows) {
        row["bench"].push_back({{"variant", r.value("variant", "")}, {"batch", r.value("batch", int64_t(0))}, {"dtype", r.value("dtype", "")},
                                {"device", r.value("device", "")}, {"median_ms", r.value("median_ms", 0.0)},
                                {"tokens_per_s", r.value("tokens_per_s", 0.0)}, {"speedup", r.value("speedup", 0.0)}});
    }
    row["speedup"] = headline_speedup(bench_rows);
    if (row["speedup"].is_object() && row["speedup"]["batch"] == kSweepSpeedupBatch && row["speedup"]["dtype"] == kSweepSpeedupDtype) {
        row["speedup_b32_bf16"] = row["speedup"]["speedup"];
    }
    return row;
}

std::string sweep_markdown(const json & summary) {
    const json paths = summary.value("paths", json::array());
    std::string out = "# Sweep " + summary.value("name", std::string()) + "\n\n";
    out += "Status: " + summary.value("status", std::string("?")) + ". Perplexities of the pruned model (fp32 eval stage); sparsity = closed heads / all heads; "
           "speed-up = dense median / pruned median at batch " + std::to_string(kSweepSpeedupBatch) + " " + kSweepSpeedupDtype +
           " (else the setting shown).\n\n";
    out += "| point |";
    for (const auto & p : paths) out += " " + cell(p.get<std::string>()) + " |";
    out += " status | heads kept | sparsity | layer params | total params | valid ppl | test ppl | speed-up |\n|---|";
    for (size_t i = 0; i < paths.size(); ++i) out += "---|";
    out += "---|---:|---:|---:|---:|---:|---:|---:|\n";
    std::string errors;
    for (const auto & r : summary.value("points", json::array())) {
        out += "| " + cell(r.value("name", std::string())) + " |";
        const json values = r.value("values", json::object());
        for (const auto & p : paths) out += " " + cell(values.contains(p.get<std::string>()) ? values[p.get<std::string>()].dump() : "") + " |";
        out += " " + cell(r.value("status", std::string())) + " |";
        out += r["heads_kept"].is_number() ? " " + std::to_string(r["heads_kept"].get<int64_t>()) + " / " +
                                              (r["heads_total"].is_number() ? std::to_string(r["heads_total"].get<int64_t>()) : std::string("?")) + " |" : " |";
        out += r["sparsity"].is_number() ? " " + format("%.1f%%", 100 * r["sparsity"].get<double>()) + " |" : " |";
        out += r["layer_params"].is_number() ? " " + commas(r["layer_params"].get<int64_t>()) + " |" : " |";
        out += r["params_total"].is_number() ? " " + commas(r["params_total"].get<int64_t>()) + " |" : " |";
        out += r["valid_ppl"].is_number() ? " " + format("%.3f", r["valid_ppl"].get<double>()) + " |" : " |";
        out += r["test_ppl"].is_number() ? " " + format("%.3f", r["test_ppl"].get<double>()) + " |" : " |";
        const json & s = r["speedup"];
        if (s.is_object()) {
            out += " " + format("%.2fx", s["speedup"].get<double>());
            if (!(s["batch"] == kSweepSpeedupBatch && s["dtype"] == kSweepSpeedupDtype)) {
                out += " (b" + std::to_string(s["batch"].get<int64_t>()) + " " + s["dtype"].get<std::string>() + " " + s["device"].get<std::string>() + ")";
            }
        }
        out += " |\n";
        if (r["error"].is_string()) errors += "- " + r.value("name", std::string()) + ": " + r["error"].get<std::string>() + "\n";
    }
    if (!errors.empty()) out += "\nErrors:\n\n" + errors;
    return out;
}

void sweep_write_summary(const std::string & sweep_dir, const json & summary) {
    file_write_atomic((fs::path(sweep_dir) / "sweep.json").string(), summary.dump(2) + "\n");
    file_write_atomic((fs::path(sweep_dir) / "sweep.md").string(), sweep_markdown(summary));
}

} // namespace studio
