#include "checkpoint.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fcntl.h>
#include <torch/torch.h>

#include "language_model.h"
#include "optimizer.h"
#include "run_dir.h"

namespace studio {

namespace fs = std::filesystem;
using nlohmann::json;

json training_state_to_json(const TrainingState & s) {
    return json{{"stage", s.stage}, {"step", s.step}, {"total_steps", s.total_steps}, {"epoch", s.epoch},
                {"batch_in_epoch", s.batch_in_epoch}, {"tokens", s.tokens}, {"elapsed_s", s.elapsed_s},
                {"complete", s.complete}, {"extra", s.extra}};
}

TrainingState training_state_from_json(const json & j, const std::string & source) {
    TrainingState s;
    try {
        s.stage = j.at("stage").get<std::string>();
        s.step = j.at("step").get<int64_t>();
        s.total_steps = j.at("total_steps").get<int64_t>();
        s.epoch = j.at("epoch").get<int64_t>();
        s.batch_in_epoch = j.at("batch_in_epoch").get<int64_t>();
        s.tokens = j.at("tokens").get<int64_t>();
        s.elapsed_s = j.at("elapsed_s").get<double>();
        s.complete = j.at("complete").get<bool>();
        s.extra = j.value("extra", json::object());
    } catch (const json::exception & e) {
        throw FormatError("checkpoint " + source + ": state.json lacks the training position (" + std::string(e.what()) + ")");
    }
    return s;
}

namespace {

// A staging folder is <run>/checkpoints/.<stage>-<step>.staging.
std::string staging_run_dir(const std::string & staging) { return fs::path(staging).parent_path().parent_path().string(); }
std::string staging_name(const std::string & staging) {
    std::string name = fs::path(staging).filename().string();
    if (!name.empty() && name[0] == '.') name.erase(0, 1);
    const auto suffix = name.rfind(".staging");
    return suffix == std::string::npos ? name : name.substr(0, suffix);
}

// A checkpoint that cannot be written (full disk, permissions) leaves no half-written staging folder behind: the
// space goes back to the disk, and nothing partial lies around for a later run to reuse. The message names the
// file that failed and the checkpoint a --resume would continue from.
[[noreturn]] void write_failed(const std::string & staging, const std::string & stage, const std::string & why) {
    std::error_code ec;
    fs::remove_all(staging, ec);
    const std::string run_dir = staging_run_dir(staging);
    const auto latest = run_latest_checkpoint(run_dir, stage);
    throw std::runtime_error("checkpoint " + staging_name(staging) + " not saved: " + why + "; " +
                             (latest ? "the last complete checkpoint " + latest->path + " is intact: continue from it with --resume"
                                     : std::string("this run has no complete checkpoint yet")));
}

// The staging folder, failing in the words of a failed file write: a disk without room (or without inodes) for one
// more folder says so plainly rather than in std::filesystem's terms.
void create_staging(const std::string & staging) {
    std::error_code ec;
    fs::create_directories(staging, ec);
    if (!ec) return;
    if (ec.value() == ENOSPC || ec.value() == EDQUOT) throw std::runtime_error("cannot create " + staging + ": no space left on device; free space on that disk");
    throw std::runtime_error("cannot create " + staging + ": " + ec.message());
}

std::string stage_of(const std::string & staging) {
    const std::string name = staging_name(staging);
    const auto dash = name.rfind('-');
    return dash == std::string::npos ? name : name.substr(0, dash);
}

// Puts `from` under the name `to`. When `to` exists (the same step checkpointed again, e.g. a SIGTERM right after an
// interval checkpoint) the two are swapped atomically, so at no moment is there no checkpoint under the final name.
void move_into_place(const std::string & from, const std::string & to) {
    if (fs::exists(to)) {
        if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_EXCHANGE) == 0) {
            std::error_code ec;
            fs::remove_all(from, ec); // now the replaced checkpoint, under the hidden staging name
            return;
        }
        if (errno != EINVAL && errno != ENOSYS) throw std::runtime_error("cannot replace " + to + ": " + std::strerror(errno));
        // A file system without RENAME_EXCHANGE: hide the old one first, so what lies under the final name is
        // never half-deleted.
        const std::string hidden = (fs::path(to).parent_path() / ("." + fs::path(to).filename().string() + ".deleting")).string();
        std::error_code ec;
        fs::remove_all(hidden, ec);
        fs::rename(to, hidden);
        fs::rename(from, to);
        fs::remove_all(hidden, ec);
        return;
    }
    fs::rename(from, to);
}

// Leftovers of runs killed mid-checkpoint: other staging folders, and half-deleted rotated checkpoints. Called by
// rank 0 after a commit, when every rank has finished writing into the current staging folder.
void remove_leftovers(const std::string & checkpoints_dir) {
    std::error_code ec;
    std::vector<fs::path> stale;
    for (const auto & entry : fs::directory_iterator(checkpoints_dir, ec)) {
        const std::string name = entry.path().filename().string();
        const auto ends_with = [&](const std::string & suffix) {
            return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
        };
        if (name[0] == '.' && (ends_with(".staging") || ends_with(".deleting"))) stale.push_back(entry.path());
    }
    for (const auto & path : stale) fs::remove_all(path, ec);
}

} // namespace

void checkpoint_create_staging(const std::string & staging) {
    try {
        // A run killed while writing this same checkpoint left its folder, maybe with more ranks' memory files than
        // this run has: they would enter the manifest. Start it empty.
        fs::remove_all(staging);
        create_staging(staging);
    } catch (const std::exception & e) {
        write_failed(staging, stage_of(staging), e.what());
    }
}

void checkpoint_write_memory(const std::string & staging, int64_t rank, const std::vector<torch::Tensor> & memory) {
    TensorMap tensors;
    for (size_t l = 0; l < memory.size(); ++l) tensors["layer_" + std::to_string(l)] = memory[l];
    try {
        create_staging(staging);
        file_write_atomic((fs::path(staging) / ("memory-rank" + std::to_string(rank) + ".safetensors")).string(), tensors_serialize(tensors));
    } catch (const std::exception & e) {
        write_failed(staging, stage_of(staging), e.what());
    }
}

std::string checkpoint_commit(const std::string & run_dir, const std::string & staging, const LanguageModelImpl & model,
                              const Optimizer * optimizer, const TrainingState & state, int64_t keep) {
    json manifest = json::object();
    auto write = [&](const std::string & name, const std::string & bytes) {
        file_write_atomic((fs::path(staging) / name).string(), bytes);
        manifest[name] = bytes_checksum(bytes);
    };
    const std::string final_path = (fs::path(run_checkpoints_dir(run_dir)) / checkpoint_dir_name(state.stage, state.step)).string();
    try {
        create_staging(staging);
        write("model.safetensors", tensors_serialize(module_state(model), {{"format", "head-pruning-studio"}}));
        if (optimizer) write("optimizer.safetensors", tensors_serialize(optimizer->state()));
        // checkpoint_create_staging started the folder empty, so a killed earlier attempt at this step left nothing
        // here: what is in it is this attempt's, every rank's write done.
        for (const auto & entry : fs::directory_iterator(staging)) {
            const std::string name = entry.path().filename().string();
            if (name.rfind("memory-rank", 0) == 0) manifest[name] = file_checksum(entry.path().string());
        }
        json j;
        j["format"] = "head-pruning-studio checkpoint";
        j["version"] = 1;
        j["state"] = training_state_to_json(state);
        j["model"] = model_config_to_json(model.config);
        j["manifest"] = manifest;
        file_write_atomic((fs::path(staging) / "state.json").string(), j.dump(2));
        move_into_place(staging, final_path);
    } catch (const std::exception & e) {
        write_failed(staging, state.stage, e.what());
    }
    folder_sync(run_checkpoints_dir(run_dir));

    auto existing = run_list_checkpoints(run_dir, state.stage);
    // The stage's final checkpoint is always kept; the rest rotate. A rotated checkpoint is hidden (renamed) before
    // it is deleted, so a kill mid-deletion never leaves a half-deleted folder under a checkpoint's name.
    std::error_code ec;
    for (size_t i = 0; i + (size_t) keep < existing.size(); ++i) {
        if (existing[i].path == final_path) continue;
        std::ifstream state_file((fs::path(existing[i].path) / "state.json").string());
        json other = json::parse(state_file, nullptr, false);
        const bool complete = !other.is_discarded() && other.is_object() && other.value("state", json::object()).value("complete", false);
        if (complete) continue;
        const fs::path old(existing[i].path);
        const fs::path hidden = old.parent_path() / ("." + old.filename().string() + ".deleting");
        fs::rename(old, hidden, ec);
        fs::remove_all(ec ? old : hidden, ec);
    }
    remove_leftovers(run_checkpoints_dir(run_dir));
    return final_path;
}

LoadedCheckpoint checkpoint_load(const std::string & path, int64_t rank, int64_t world_size) {
    LoadedCheckpoint c;
    c.path = path;
    const std::string state_path = (fs::path(path) / "state.json").string();
    std::ifstream in(state_path);
    if (!in) throw FormatError("checkpoint " + path + ": no state.json (not a checkpoint folder, or an incomplete one)");
    std::stringstream buffer;
    buffer << in.rdbuf();
    json j = json::parse(buffer.str(), nullptr, false);
    if (j.is_discarded() || !j.is_object()) throw FormatError("checkpoint " + path + ": state.json is corrupt (not JSON)");
    if (j.value("format", "") != "head-pruning-studio checkpoint") {
        throw FormatError("checkpoint " + path + ": not a Head Pruning Studio checkpoint (foreign file)");
    }
    c.state = training_state_from_json(j.value("state", json::object()), path);
    try {
        c.model_config = model_config_from_json(j.at("model"));
    } catch (const std::exception & e) {
        throw FormatError("checkpoint " + path + ": its model config is unreadable (" + std::string(e.what()) + ")");
    }
    const json manifest = j.value("manifest", json::object());
    auto read_verified = [&](const std::string & name, TensorMap & out, bool required) {
        const std::string file = (fs::path(path) / name).string();
        if (!fs::exists(file)) {
            if (required) throw FormatError("checkpoint " + path + ": " + name + " is missing");
            return;
        }
        std::ifstream f(file, std::ios::binary);
        std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        if (!manifest.contains(name) || manifest[name] != bytes_checksum(bytes)) {
            throw FormatError("checkpoint " + path + ": " + name + " does not match its checksum (corrupt or truncated)");
        }
        out = tensors_from_file(safetensors_parse(bytes, file), file);
    };
    read_verified("model.safetensors", c.model, true);
    read_verified("optimizer.safetensors", c.optimizer, false);
    if (rank >= 0) {
        // The memory rows of all ranks, in rank order, are the global batch's: re-cut them for this world size, so a
        // run resumes on any number of ranks that divides its batch.
        std::vector<TensorMap> shards;
        for (int64_t r = 0; fs::exists(fs::path(path) / ("memory-rank" + std::to_string(r) + ".safetensors")); ++r) {
            shards.emplace_back();
            read_verified("memory-rank" + std::to_string(r) + ".safetensors", shards.back(), true);
        }
        for (const auto & [name, first] : shards.empty() ? TensorMap{} : shards[0]) {
            std::vector<torch::Tensor> parts;
            for (const auto & shard : shards) {
                auto it = shard.find(name);
                if (it == shard.end()) throw FormatError("checkpoint " + path + ": memory " + name + " is missing from a rank's file");
                parts.push_back(it->second);
            }
            auto rows = torch::cat(parts, 0);                                   // (B,M,D), the global batch
            if (rows.size(0) % world_size != 0) {
                throw FormatError("checkpoint " + path + ": its memory holds " + std::to_string(rows.size(0)) + " rows, which " +
                                  std::to_string(world_size) + " ranks cannot share evenly; resume with a world size that divides the batch");
            }
            const int64_t per_rank = rows.size(0) / world_size;
            c.memory[name] = rows.narrow(0, rank * per_rank, per_rank).clone();
        }
    }
    return c;
}

void checkpoint_check_model(const LoadedCheckpoint & c, const ModelConfig & config) {
    const auto & m = c.model_config;
    auto refuse = [&](const std::string & what) { throw FormatError("checkpoint " + c.path + ": " + what); };
    auto type = [](ModelType t) { return std::string(t == ModelType::AllAttention ? "all_attention" : "transformer_xl"); };
    if (m.type != config.type) refuse("model type is " + type(m.type) + ", config says " + type(config.type));
    if (m.num_layers != config.num_layers) refuse("has " + std::to_string(m.num_layers) + " layers, config says " + std::to_string(config.num_layers));
    if (m.hidden_dim != config.hidden_dim) refuse("hidden_dim is " + std::to_string(m.hidden_dim) + ", config says " + std::to_string(config.hidden_dim));
    if (m.resolved_head_dim() != config.resolved_head_dim()) refuse("head_dim is " + std::to_string(m.resolved_head_dim()) + ", config says " + std::to_string(config.resolved_head_dim()));
    for (int64_t l = 0; l < m.num_layers; ++l) {
        if (m.heads_in_layer(l) != config.heads_in_layer(l)) {
            refuse("layer " + std::to_string(l) + " has " + std::to_string(m.heads_in_layer(l)) + " heads, config says " + std::to_string(config.heads_in_layer(l)));
        }
    }
    if (m.feedforward_dim != config.feedforward_dim) refuse("feedforward_dim is " + std::to_string(m.feedforward_dim) + ", config says " + std::to_string(config.feedforward_dim));
    if (m.vocab_size != config.vocab_size) refuse("vocabulary has " + std::to_string(m.vocab_size) + " words, config/dataset says " + std::to_string(config.vocab_size));
    if (m.cutoffs != config.cutoffs) refuse("adaptive softmax cutoffs differ from the config's");
    if (m.type == ModelType::AllAttention && m.max_len != config.max_len) refuse("max_len is " + std::to_string(m.max_len) + ", config says " + std::to_string(config.max_len));
}

namespace {
bool is_gate_tensor(const std::string & name) { return name.find("gate.log_alpha") != std::string::npos; }
} // namespace

void checkpoint_load_model(const LoadedCheckpoint & c, LanguageModelImpl & model, bool allow_missing_gates) {
    checkpoint_check_model(c, model.config);
    TensorMap state = c.model;
    if (!model.has_gates()) {
        for (auto it = state.begin(); it != state.end();) it = is_gate_tensor(it->first) ? state.erase(it) : std::next(it);
    }
    module_load_state(model, state, c.path, allow_missing_gates ? &is_gate_tensor : nullptr);
}

std::vector<torch::Tensor> checkpoint_memory(const LoadedCheckpoint & c, int64_t layers, const torch::Device & device) {
    std::vector<torch::Tensor> memory;
    if (c.memory.empty()) return memory;
    for (int64_t l = 0; l < layers; ++l) {
        auto it = c.memory.find("layer_" + std::to_string(l));
        if (it == c.memory.end()) throw FormatError("checkpoint " + c.path + ": memory of layer " + std::to_string(l) + " is missing");
        memory.push_back(it->second.to(device));
    }
    return memory;
}

} // namespace studio
