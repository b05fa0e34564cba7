#include "sweep.h"

#include <map>

namespace studio {

using nlohmann::json;

namespace {

std::vector<std::string> split_path(const std::string & path) {
    std::vector<std::string> parts;
    size_t start = 0;
    while (true) {
        const size_t dot = path.find('.', start);
        parts.push_back(path.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
        if (dot == std::string::npos) return parts;
        start = dot + 1;
    }
}

// Folder names must not hold '/' and should survive a shell unquoted.
std::string safe_name(const std::string & text) {
    std::string out;
    for (char c : text) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '+' || c == '-';
        out += ok ? c : '_';
    }
    return out;
}

std::string value_text(const json & value) {
    return value.is_string() ? value.get<std::string>() : value.dump();
}

// The field the sweep path names, looked up in the resolved config (which holds every key with its default).
const json & resolve_field(const json & resolved, const std::string & path) {
    const json * node = &resolved;
    for (const auto & part : split_path(path)) {
        if (part.empty() || !node->is_object() || !node->contains(part)) {
            config_fail("sweep." + path, "unknown config field (check the spelling; docs/config.md lists every key)");
        }
        node = &(*node)[part];
    }
    return *node;
}

// "config error: gate.l0_coefficient: must be >= 0, got -1" -> {"gate.l0_coefficient", "must be >= 0, got -1"}
std::pair<std::string, std::string> split_error(const std::string & what) {
    static const std::string prefix = "config error: ";
    std::string rest = what.rfind(prefix, 0) == 0 ? what.substr(prefix.size()) : what;
    const size_t colon = rest.find(": ");
    if (colon == std::string::npos) return {"", rest};
    return {rest.substr(0, colon), rest.substr(colon + 2)};
}

// Checks one value of one path on top of the base config, naming the list entry when it fails.
void check_value(const json & base, const std::string & path, size_t index, const json & value) {
    const std::string where = "sweep." + path + "[" + std::to_string(index) + "]";
    if (!value.is_number() && !value.is_string() && !value.is_boolean()) {
        config_fail(where, "expected a number, string or true/false, got " + config_type_name(value));
    }
    json trial = base;
    sweep_set(trial, path, value);
    try {
        config_from_json(trial);
    } catch (const ConfigError & e) {
        auto [field, message] = split_error(e.what());
        if (field == path) config_fail(where, message);
        config_fail(where, "with " + value_text(value) + ", " + field + ": " + message);
    }
}

} // namespace

bool sweep_present(const json & config) {
    return config.is_object() && config.contains("sweep");
}

void sweep_set(json & config, const std::string & path, const json & value) {
    json * node = &config;
    const auto parts = split_path(path);
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
        json & next = (*node)[parts[i]];
        if (!next.is_object()) next = json::object();
        node = &next;
    }
    (*node)[parts.back()] = value;
}

Sweep sweep_expand(const json & config) {
    Sweep sweep;
    const json & spec = config.at("sweep");
    if (!spec.is_object()) {
        config_fail("sweep", "expected an object of config fields and their values, e.g. {\"gate.l0_coefficient\": [0.002, 0.004]}, got " + config_type_name(spec));
    }
    if (spec.empty()) config_fail("sweep", "must name at least one config field, e.g. {\"gate.l0_coefficient\": [0.002, 0.004]}");

    // The base first, unprefixed: an error there is not the sweep's.
    json base = config;
    base.erase("sweep");
    sweep.base = config_from_json(base);
    const json resolved = config_to_json(sweep.base);

    size_t points = 1;
    for (auto it = spec.begin(); it != spec.end(); ++it) {
        const std::string & path = it.key();
        const std::string where = "sweep." + path;
        if (path == "name" || path == "runs_dir") config_fail(where, "is the same for every point (the points run in <runs_dir>/<name>/<name>-<label>/)");
        const json & field = resolve_field(resolved, path);
        if (field.is_object()) {
            std::string example;
            for (auto f = field.begin(); f != field.end() && example.empty(); ++f) if (f->is_primitive()) example = f.key();
            config_fail(where, "is a section; sweep one of its fields, e.g. \"" + path + "." + example + "\"");
        }
        if (field.is_array()) config_fail(where, "is a list field; a sweep sets number, string or true/false fields");
        const json & values = it.value();
        if (!values.is_array()) config_fail(where, "expected a list of values, got " + config_type_name(values));
        if (values.empty()) config_fail(where, "the list is empty");
        if (values.size() > kSweepMaxPoints) config_fail(where, std::to_string(values.size()) + " values; at most " + std::to_string(kSweepMaxPoints));
        std::map<std::string, size_t> seen;
        for (size_t i = 0; i < values.size(); ++i) {
            check_value(base, path, i, values[i]);
            const auto [first, inserted] = seen.emplace(safe_name(value_text(values[i])), i);
            if (!inserted) {
                config_fail(where + "[" + std::to_string(i) + "]", value_text(values[i]) + " gives the same point name as [" + std::to_string(first->second) +
                                                               "] (each point needs its own run directory)");
            }
        }
        points *= values.size();
        if (points > kSweepMaxPoints) config_fail("sweep", "more than " + std::to_string(kSweepMaxPoints) + " points (the product of the lists); split it");
        sweep.paths.push_back(path);
    }

    // A label names each path by its last part unless two paths share it (train.epochs and gate.epochs).
    std::map<std::string, int> last_parts;
    for (const auto & path : sweep.paths) ++last_parts[split_path(path).back()];
    std::vector<std::string> keys;
    for (const auto & path : sweep.paths) keys.push_back(last_parts[split_path(path).back()] > 1 ? path : split_path(path).back());

    std::vector<size_t> index(sweep.paths.size(), 0);
    for (size_t n = 0; n < points; ++n) {
        SweepPoint point;
        point.config = base;
        point.values = json::object();
        for (size_t p = 0; p < sweep.paths.size(); ++p) {
            const json & value = spec[sweep.paths[p]][index[p]];
            sweep_set(point.config, sweep.paths[p], value);
            point.values[sweep.paths[p]] = value;
            point.label += (p ? "_" : "") + safe_name(keys[p]) + "-" + safe_name(value_text(value));
        }
        point.name = sweep.base.name + "-" + point.label;
        point.config["name"] = point.name;
        try {
            config_from_json(point.config);
        } catch (const ConfigError & e) {
            auto [field, message] = split_error(e.what());
            config_fail("sweep", "point " + point.label + ": " + (field.empty() ? "" : field + ": ") + message);
        }
        sweep.points.push_back(std::move(point));
        // Odometer: the last path turns fastest.
        for (size_t p = sweep.paths.size(); p-- > 0;) {
            if (++index[p] < spec[sweep.paths[p]].size()) break;
            index[p] = 0;
        }
    }
    return sweep;
}

} // namespace studio
