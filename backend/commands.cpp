#include "commands.h"

#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "checkpoint.h"
#include "device.h"
#include "model_info.h"
#include "prune.h"
#include "run_dir.h"
#include "wikitext.h"

namespace studio {

namespace fs = std::filesystem;
using nlohmann::json;

int info_command(const std::string & source, bool as_json) {
    try {
        Config config = config_load(source_config_path(source, "info", "a config file, a run folder or a pruned/ folder"));
        if (config.model.vocab_size == 0) {
            const std::string folder = config_data_folder(config);
            if (!fs::is_directory(folder)) {
                throw ConfigError("config error: model.vocab_size: 0 means \"from the dataset\", but " + folder + " does not exist; set vocab_size or data.dir");
            }
            config.model.vocab_size = corpus_load(folder).vocab.size();
        }
        json info = model_info(config.model);
        if (as_json) std::printf("%s\n", info.dump(2).c_str());
        else std::printf("%s", model_info_text(info).c_str());
        return 0;
    } catch (const ConfigError & e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 2;
    } catch (const std::exception & e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}

int prune_command(const std::string & source, const std::string & out_dir) {
    try {
        const std::string checkpoint = fs::exists(fs::path(source) / "state.json") ? source : [&] {
            if (auto gate = run_latest_checkpoint(source, "gate")) return gate->path;
            return resolve_checkpoint(source, "train");
        }();
        // The run's gate settings decide the eval rule and whether output scaling is folded.
        const fs::path run_dir = fs::path(checkpoint).parent_path().parent_path();
        Config config;
        if (fs::exists(run_config_path(run_dir.string()))) config = config_load(run_config_path(run_dir.string()));
        const std::string out = out_dir.empty() ? run_pruned_dir(run_dir.string()) : out_dir;
        prune_checkpoint(checkpoint, config, config_to_json(config), out);
        return 0;
    } catch (const std::exception & e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}

int validate_command(const std::string & path) {
    try {
        Config config = config_load(path);
        config_check_environment(config, cuda_device_count());
        std::printf("config ok: %s\n", path.c_str());
        return 0;
    } catch (const std::exception & e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 2;
    }
}

int devices_command(bool as_json) {
    const int64_t n = cuda_device_count();
    if (as_json) std::printf("%s\n", json{{"cuda_devices", n}, {"cpu_threads", torch::get_num_threads()}}.dump().c_str());
    else std::printf("CUDA devices: %lld\nCPU threads: %d\n", (long long) n, torch::get_num_threads());
    return 0;
}

} // namespace studio
