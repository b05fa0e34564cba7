// The fuzz harnesses' bodies, shared by the libFuzzer entry points (fuzz_*.cpp) and the Qt Test that replays
// tests/fuzz/regressions/ without libFuzzer (test_fuzz_regressions.cpp). No LibTorch, no Qt: studio_core only.
//
// Contract checked for every input:
//  * only the documented exception types leave the parsers (ConfigError, DataError, FormatError); anything else
//    propagates out of the harness and libFuzzer reports it as a crash ("deadly signal" after std::terminate);
//  * the round trips described per harness hold; a broken one throws fuzz::Finding (the fuzzer aborts on it,
//    the Qt Test fails with its message);
//  * ASan/UBSan/LSan stay silent (built with -fno-sanitize-recover=undefined, so UB is a crash too).
#pragma once

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "config.h"
#include "events.h"
#include "safetensors.h"
#include "wikitext.h"

namespace fuzz {

/// A broken invariant (not a crash by itself): the harness reports it and the fuzzer aborts.
struct Finding : std::logic_error {
    using std::logic_error::logic_error;
};

inline void require(bool ok, const std::string & what) {
    if (!ok) throw Finding(what);
}

// ---- small file helpers -------------------------------------------------------------------------------------

inline std::string make_temp_dir(const char * tag) {
    std::string pattern = (std::filesystem::temp_directory_path() / (std::string("studio-fuzz-") + tag + "-XXXXXX")).string();
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("fuzz: cannot create a temporary folder " + pattern);
    return pattern;
}

/// Removes the folder at exit (the harnesses create one per process).
inline void remove_at_exit(const std::string & dir) {
    static std::vector<std::string> dirs;
    static bool registered = false;
    dirs.push_back(dir);
    if (!registered) {
        registered = true;
        std::atexit([] {
            std::error_code ec;
            for (const auto & d : dirs) std::filesystem::remove_all(d, ec);
        });
    }
}

inline void write_bytes(const std::string & path, const std::string & bytes, bool append) {
    std::ofstream out(path, std::ios::binary | (append ? std::ios::app : std::ios::trunc));
    out.write(bytes.data(), (std::streamsize) bytes.size());
    out.close();
    if (!out) throw std::runtime_error("fuzz: cannot write " + path);
}

inline std::string read_bytes(const std::string & path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
}

inline std::string shorten(const std::string & s, size_t n = 300) {
    return s.size() <= n ? s : s.substr(0, n) + "...";
}

// ---- fuzz_config ----------------------------------------------------------------------------------------------
// bytes -> json (comments allowed, no exceptions) -> config_from_json; an accepted config must survive
// config_to_json -> dump -> parse -> config_from_json unchanged, and its model section must survive
// model_config_to_json -> model_config_from_json (the path pruned checkpoints take).

inline void config_one(const uint8_t * data, size_t size) {
    const auto j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false, /*ignore_comments=*/true);
    if (j.is_discarded()) return;
    studio::Config config;
    try {
        config = studio::config_from_json(j);
    } catch (const studio::ConfigError &) {
        return; // documented refusal
    }
    const std::string first = studio::config_to_json(config).dump();
    studio::Config again;
    try {
        again = studio::config_from_json(nlohmann::json::parse(first));
    } catch (const studio::ConfigError & e) {
        throw Finding(std::string("config_to_json output refused by config_from_json: ") + e.what() + "\n  dump: " + shorten(first, 2000));
    }
    const std::string second = studio::config_to_json(again).dump();
    require(first == second, "config round trip changed the config:\n  first:  " + shorten(first, 2000) + "\n  second: " + shorten(second, 2000));

    const auto model_json = studio::model_config_to_json(config.model);
    studio::ModelConfig model;
    try {
        model = studio::model_config_from_json(model_json);
    } catch (const studio::ConfigError & e) {
        throw Finding(std::string("model_config_to_json output refused by model_config_from_json: ") + e.what() + "\n  model: " + shorten(model_json.dump(), 2000));
    }
    require(studio::model_config_to_json(model) == model_json, "model config round trip changed the model: " + shorten(model_json.dump(), 2000));
}

// ---- fuzz_events ----------------------------------------------------------------------------------------------
// Input: 2 bytes little-endian split position, then the file. The file is written in two chunks split there; an
// EventReader polls after each; the two polls together must equal one fresh reader (and events_read_all) on the
// whole file, skipped-line counts included. (Both drop a half-written last line, so this holds with or without a
// final newline.)

inline const std::string & events_path() {
    static const std::string path = [] {
        const std::string dir = make_temp_dir("events");
        remove_at_exit(dir);
        return dir + "/events.jsonl";
    }();
    return path;
}

inline void events_one(const uint8_t * data, size_t size) {
    if (size < 2) return;
    const std::string payload((const char *) data + 2, size - 2);
    const size_t split = ((size_t) data[0] | ((size_t) data[1] << 8)) % (payload.size() + 1);
    const std::string & path = events_path();

    write_bytes(path, payload.substr(0, split), /*append=*/false);
    studio::EventReader reader(path);
    auto events = reader.poll();
    write_bytes(path, payload.substr(split), /*append=*/true);
    auto more = reader.poll();
    events.insert(events.end(), std::make_move_iterator(more.begin()), std::make_move_iterator(more.end()));
    require(reader.poll().empty(), "a third poll with no new bytes returned events");

    studio::EventReader whole(path);
    const auto all = whole.poll();
    for (const auto & e : all) require(e.is_object(), "EventReader returned a non-object event");
    require(events.size() == all.size(), "two polls returned " + std::to_string(events.size()) + " events, one poll of the whole file " +
                                             std::to_string(all.size()) + " (split at byte " + std::to_string(split) + ")");
    require(events == all, "two polls and one poll of the whole file disagree (split at byte " + std::to_string(split) + ")");
    require(reader.skipped_lines() == whole.skipped_lines(), "skipped_lines differs: two polls " + std::to_string(reader.skipped_lines()) +
                                                                 ", one poll " + std::to_string(whole.skipped_lines()));
    require(studio::events_read_all(path) == all, "events_read_all disagrees with EventReader::poll");
}

// ---- fuzz_wikitext --------------------------------------------------------------------------------------------
// First byte selects the mode:
//   0: the rest is a .tokens text -> wikitext_tokenize + wikitext_build_vocabulary, with the vocabulary invariants;
//   1: the rest replaces the corpus cache file of a tiny valid dataset, then corpus_load;
//   2: the cache becomes the valid magic + signature followed by the rest (reaches the vocabulary/ids readers);
//   3: the valid cache cut at a position given by the next 2 bytes, followed by the remaining bytes.
// corpus_load must never throw (the dataset is valid) and must give the reference corpus unless the cache it read
// starts with the valid magic + signature (a cache that passes those checks is trusted by design).

struct WikiEnv {
    std::string folder;
    std::string cache;        // corpus_cache_path(folder)
    std::string valid_cache;  // the cache corpus_load wrote for it
    size_t prefix = 0;        // bytes of magic + signature at its start
    studio::Corpus reference;
};

inline WikiEnv & wiki_env() {
    static WikiEnv env = [] {
        WikiEnv e;
        const std::string dir = make_temp_dir("wikitext");
        remove_at_exit(dir);
        ::setenv("STUDIO_CACHE", (dir + "/cache").c_str(), 1);
        e.folder = dir + "/wikitext-tiny";
        std::filesystem::create_directories(e.folder);
        write_bytes(e.folder + "/wiki.train.tokens", " \n = Title = \n \n the cat sat on the mat . \n the dog <unk> @-@ ran \n", false);
        write_bytes(e.folder + "/wiki.valid.tokens", " \n the cat ran . \n", false);
        write_bytes(e.folder + "/wiki.test.tokens", " \n a dog sat \n\n", false);
        e.reference = studio::corpus_load(e.folder, /*use_cache=*/true);
        e.cache = studio::corpus_cache_path(e.folder);
        e.valid_cache = read_bytes(e.cache);
        if (e.valid_cache.size() < 16) throw std::runtime_error("fuzz: corpus_load wrote no cache at " + e.cache);
        uint64_t sig = 0;
        for (int i = 0; i < 8; ++i) sig |= (uint64_t) (uint8_t) e.valid_cache[8 + (size_t) i] << (8 * i);
        e.prefix = 16 + (size_t) sig;
        return e;
    }();
    return env;
}

inline bool same_corpus(const studio::Corpus & a, const studio::Corpus & b) {
    return a.vocab.words == b.vocab.words && a.train == b.train && a.valid == b.valid && a.test == b.test;
}

inline void wikitext_text_one(const std::string & text) {
    std::vector<std::string> tokens;
    try {
        tokens = studio::wikitext_tokenize(text, "fuzz");
    } catch (const studio::DataError &) {
        return; // documented: empty or binary input
    }
    size_t lines = 0;
    for (size_t i = 0; i < text.size(); ++i) lines += text[i] == '\n';
    if (!text.empty() && text.back() != '\n') ++lines;
    size_t eos = 0;
    for (const auto & t : tokens) {
        require(!t.empty(), "empty token");
        for (char ch : t) require(!std::isspace((unsigned char) ch), "token with whitespace: \"" + shorten(t) + "\"");
        eos += t == "<eos>";
    }
    require(eos >= lines, "fewer <eos> tokens (" + std::to_string(eos) + ") than lines (" + std::to_string(lines) + ")");
    const auto vocab = studio::wikitext_build_vocabulary(tokens);
    require(vocab.words.size() >= 2 && vocab.words[0] == "<unk>" && vocab.words[1] == "<eos>", "vocabulary does not start with <unk>, <eos>");
    require(vocab.ids.size() == vocab.words.size(), "vocabulary has duplicate words");
    for (size_t i = 0; i < vocab.words.size(); ++i) require(vocab.id(vocab.words[i]) == (int32_t) i, "ids and words disagree at " + std::to_string(i));
    for (const auto & t : tokens) require(t == "<unk>" || vocab.id(t) != studio::Vocabulary::unk, "train token missing from the vocabulary: " + shorten(t));
}

inline void wikitext_one(const uint8_t * data, size_t size) {
    if (size == 0) return;
    const int mode = data[0] % 4;
    const std::string rest((const char *) data + 1, size - 1);
    if (mode == 0) {
        wikitext_text_one(rest);
        return;
    }
    WikiEnv & env = wiki_env();
    std::string cache;
    if (mode == 1) {
        cache = rest;
    } else if (mode == 2) {
        cache = env.valid_cache.substr(0, env.prefix) + rest;
    } else {
        if (rest.size() < 2) return;
        const size_t cut = ((size_t) (uint8_t) rest[0] | ((size_t) (uint8_t) rest[1] << 8)) % (env.valid_cache.size() + 1);
        cache = env.valid_cache.substr(0, cut) + rest.substr(2);
    }
    write_bytes(env.cache, cache, /*append=*/false);
    studio::Corpus corpus;
    try {
        corpus = studio::corpus_load(env.folder, /*use_cache=*/true);
    } catch (const studio::DataError & e) {
        throw Finding(std::string("corpus_load threw DataError on a valid dataset with a corrupt cache: ") + e.what());
    }
    const int64_t v = corpus.vocab.size();
    for (const auto * split : {&corpus.train, &corpus.valid, &corpus.test}) {
        for (auto id : *split) require(id >= 0 && id < v, "token id " + std::to_string(id) + " outside the vocabulary of " + std::to_string(v));
    }
    if (!same_corpus(corpus, env.reference)) {
        require(cache.compare(0, env.prefix, env.valid_cache, 0, env.prefix) == 0,
                "corpus_load trusted a cache without the valid magic and signature");
    }
}

// ---- fuzz_safetensors -----------------------------------------------------------------------------------------
// bytes -> safetensors_parse; an accepted file is re-serialised with safetensors_serialize and parsed again, and
// the two must agree tensor by tensor (dtype, shape, bytes) and in metadata. Every accepted shape is >= 0.

inline void safetensors_one(const uint8_t * data, size_t size) {
    const std::string bytes((const char *) data, size);
    studio::SafeTensorFile file;
    try {
        file = studio::safetensors_parse(bytes, "fuzz");
    } catch (const studio::FormatError &) {
        return; // documented refusal
    }
    std::map<std::string, studio::SafeTensorView> views;
    for (const auto & [name, t] : file.tensors) {
        for (auto d : t.shape) require(d >= 0, "tensor " + shorten(name) + " accepted with dimension " + std::to_string(d) + " (negative as int64)");
        views[name] = studio::SafeTensorView{t.dtype, t.shape, t.data.data(), (uint64_t) t.data.size()};
    }
    std::string again;
    try {
        again = studio::safetensors_serialize(views, file.metadata);
    } catch (const std::exception & e) {
        throw Finding(std::string("safetensors_serialize refused what safetensors_parse accepted: ") + e.what());
    }
    studio::SafeTensorFile reread;
    try {
        reread = studio::safetensors_parse(again, "fuzz-round-trip");
    } catch (const studio::FormatError & e) {
        throw Finding(std::string("safetensors_parse refused safetensors_serialize's output: ") + e.what());
    }
    require(reread.metadata == file.metadata, "metadata changed in the round trip");
    require(reread.tensors.size() == file.tensors.size(), "tensor count changed in the round trip");
    for (const auto & [name, t] : file.tensors) {
        auto it = reread.tensors.find(name);
        require(it != reread.tensors.end(), "tensor " + shorten(name) + " lost in the round trip");
        require(it->second.dtype == t.dtype && it->second.shape == t.shape && it->second.data == t.data, "tensor " + shorten(name) + " changed in the round trip");
    }
}

} // namespace fuzz
