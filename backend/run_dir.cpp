#include "run_dir.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "config.h"   // ConfigError

namespace studio {

namespace fs = std::filesystem;

std::string run_checkpoints_dir(const std::string & run_dir) { return (fs::path(run_dir) / "checkpoints").string(); }
std::string run_events_path(const std::string & run_dir) { return (fs::path(run_dir) / "events.jsonl").string(); }
std::string run_config_path(const std::string & run_dir) { return (fs::path(run_dir) / "config.json").string(); }
std::string run_pruned_dir(const std::string & run_dir) { return (fs::path(run_dir) / "pruned").string(); }
std::string run_bench_dir(const std::string & run_dir) { return (fs::path(run_dir) / "bench").string(); }

std::string source_config_path(const std::string & source, const std::string & command, const std::string & accepted) {
    if (!fs::is_directory(source)) return source;
    const std::string path = run_config_path(source);
    if (!fs::exists(path)) throw ConfigError(command + " error: " + source + " has no config.json (name " + accepted + ")");
    return path;
}

std::string checkpoint_dir_name(const std::string & stage, int64_t step) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%08lld", (long long) step);
    return stage + "-" + buffer;
}

std::string checkpoint_staging_dir(const std::string & run_dir, const std::string & stage, int64_t step) {
    return (fs::path(run_checkpoints_dir(run_dir)) / ("." + checkpoint_dir_name(stage, step) + ".staging")).string();
}

std::vector<CheckpointRef> run_list_checkpoints(const std::string & run_dir, const std::string & stage) {
    std::vector<CheckpointRef> found;
    std::error_code ec;
    for (const auto & entry : fs::directory_iterator(run_checkpoints_dir(run_dir), ec)) {
        if (!entry.is_directory()) continue;
        const std::string name = entry.path().filename().string();
        const auto dash = name.rfind('-');
        if (dash == std::string::npos || name[0] == '.') continue;
        const std::string s = name.substr(0, dash), digits = name.substr(dash + 1);
        if (digits.size() != 8 || !std::all_of(digits.begin(), digits.end(), ::isdigit)) continue;
        if (!stage.empty() && s != stage) continue;
        if (!fs::exists(entry.path() / "state.json")) continue;
        found.push_back({entry.path().string(), s, std::stoll(digits)});
    }
    std::sort(found.begin(), found.end(), [](const auto & a, const auto & b) { return a.step != b.step ? a.step < b.step : a.stage < b.stage; });
    return found;
}

std::optional<CheckpointRef> run_latest_checkpoint(const std::string & run_dir, const std::string & stage) {
    auto all = run_list_checkpoints(run_dir, stage);
    if (all.empty()) return std::nullopt;
    return all.back();
}

std::string bytes_checksum(const std::string & bytes) {
    uint64_t h = 14695981039346656037ull;
    for (unsigned char c : bytes) { h ^= c; h *= 1099511628211ull; }
    char buffer[17];
    std::snprintf(buffer, sizeof buffer, "%016llx", (unsigned long long) h);
    return buffer;
}

std::string file_checksum(const std::string & path) {
    std::ifstream in(path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return bytes_checksum(bytes);
}

} // namespace studio
