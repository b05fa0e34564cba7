#include "wikitext.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

namespace studio {

namespace fs = std::filesystem;

namespace {

const char * kHowToGet = "get WikiText with scripts/fetch-wikitext.sh (needs internet) or set data.dir / $STUDIO_DATA";
constexpr uint64_t kCacheMagic = 0x31574b4957445453ull; // "STDWIKW1"

std::string read_file(const std::string & path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw DataError("data error: " + path + ": file not found (" + kHowToGet + ")");
    std::ostringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
}

std::string split_path(const std::string & folder, const std::string & split) {
    return (fs::path(folder) / ("wiki." + split + ".tokens")).string();
}

// Identifies the source files so a stale cache is never used.
std::string files_signature(const std::string & folder) {
    std::ostringstream sig;
    for (const char * split : {"train", "valid", "test"}) {
        const std::string path = split_path(folder, split);
        std::error_code ec;
        auto size = fs::file_size(path, ec);
        auto time = fs::last_write_time(path, ec);
        sig << split << ':' << (ec ? 0 : size) << ':' << (ec ? 0 : (long long) time.time_since_epoch().count()) << ';';
    }
    return sig.str();
}

std::vector<int32_t> to_ids(const Vocabulary & vocab, const std::vector<std::string> & tokens) {
    std::vector<int32_t> ids;
    ids.reserve(tokens.size());
    for (const auto & t : tokens) ids.push_back(vocab.id(t));
    return ids;
}

template <typename T> void put(std::ofstream & out, const T & value) { out.write((const char *) &value, sizeof(T)); }
template <typename T> bool get(std::ifstream & in, T & value) { return (bool) in.read((char *) &value, sizeof(T)); }

void put_string(std::ofstream & out, const std::string & s) {
    put(out, (uint64_t) s.size());
    out.write(s.data(), (std::streamsize) s.size());
}
bool get_string(std::ifstream & in, std::string & s, uint64_t limit) {
    uint64_t n = 0;
    if (!get(in, n) || n > limit) return false;
    s.resize(n);
    return (bool) in.read(s.data(), (std::streamsize) n);
}
void put_ids(std::ofstream & out, const std::vector<int32_t> & ids) {
    put(out, (uint64_t) ids.size());
    out.write((const char *) ids.data(), (std::streamsize) (ids.size() * sizeof(int32_t)));
}
bool get_ids(std::ifstream & in, std::vector<int32_t> & ids, uint64_t limit, int64_t vocab) {
    uint64_t n = 0;
    if (!get(in, n) || n > limit / sizeof(int32_t)) return false;
    ids.resize(n);
    if (!in.read((char *) ids.data(), (std::streamsize) (n * sizeof(int32_t)))) return false;
    for (auto id : ids) if (id < 0 || id >= vocab) return false;
    return true;
}

bool cache_read(const std::string & path, const std::string & signature, Corpus & corpus) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return false;
    std::error_code ec;
    const uint64_t file_size = fs::file_size(path, ec);
    uint64_t magic = 0, words = 0;
    std::string sig;
    if (!get(in, magic) || magic != kCacheMagic || !get_string(in, sig, 4096) || sig != signature) return false;
    // Every word needs at least its 8-byte length: a corrupt count must not make us allocate beyond the file.
    if (!get(in, words) || words > file_size / 8) return false;
    corpus.vocab.words.resize(words);
    for (auto & w : corpus.vocab.words) if (!get_string(in, w, file_size)) return false;
    corpus.vocab.ids.clear();
    for (size_t i = 0; i < corpus.vocab.words.size(); ++i) corpus.vocab.ids.emplace(corpus.vocab.words[i], (int32_t) i);
    const int64_t v = corpus.vocab.size();
    return get_ids(in, corpus.train, file_size, v) && get_ids(in, corpus.valid, file_size, v) && get_ids(in, corpus.test, file_size, v);
}

void cache_write(const std::string & path, const std::string & signature, const Corpus & corpus) {
    std::error_code ec;
    fs::create_directories(fs::path(path).parent_path(), ec);
    const std::string tmp = path + ".tmp" + std::to_string(::getpid());
    {
        std::ofstream out(tmp, std::ios::binary);
        if (!out) return; // a cache is an optimisation: no writable cache folder is not an error
        put(out, kCacheMagic);
        put_string(out, signature);
        put(out, (uint64_t) corpus.vocab.words.size());
        for (const auto & w : corpus.vocab.words) put_string(out, w);
        put_ids(out, corpus.train);
        put_ids(out, corpus.valid);
        put_ids(out, corpus.test);
        if (!out) { out.close(); fs::remove(tmp, ec); return; }
    }
    fs::rename(tmp, path, ec);
    if (ec) fs::remove(tmp, ec);
}

} // namespace

int32_t Vocabulary::id(const std::string & word) const {
    auto it = ids.find(word);
    return it == ids.end() ? unk : it->second;
}

const std::vector<int32_t> & Corpus::split(const std::string & name) const {
    if (name == "train") return train;
    if (name == "valid") return valid;
    if (name == "test") return test;
    throw DataError("data error: unknown split \"" + name + "\" (use train, valid or test)");
}

std::vector<std::string> wikitext_tokenize(const std::string & text, const std::string & source) {
    if (text.empty()) throw DataError("data error: " + source + ": file is empty (" + kHowToGet + ")");
    if (std::memchr(text.data(), '\0', text.size()) != nullptr) {
        throw DataError("data error: " + source + ": binary data in a text file, not a WikiText .tokens file (" + kHowToGet + ")");
    }
    std::vector<std::string> tokens;
    tokens.reserve(text.size() / 5);
    size_t i = 0;
    const size_t n = text.size();
    while (i < n) {
        size_t line_end = text.find('\n', i);
        if (line_end == std::string::npos) line_end = n;
        size_t j = i;
        while (j < line_end) {
            while (j < line_end && std::isspace((unsigned char) text[j])) ++j;
            size_t k = j;
            while (k < line_end && !std::isspace((unsigned char) text[k])) ++k;
            if (k > j) tokens.emplace_back(text, j, k - j);
            j = k;
        }
        tokens.emplace_back("<eos>");
        i = line_end + 1;
    }
    return tokens;
}

Vocabulary wikitext_build_vocabulary(const std::vector<std::string> & train_tokens) {
    struct Entry { int64_t count = 0; int64_t first = 0; };
    std::unordered_map<std::string, Entry> counts;
    counts.reserve(1 << 16);
    for (size_t i = 0; i < train_tokens.size(); ++i) {
        auto [it, inserted] = counts.try_emplace(train_tokens[i]);
        if (inserted) it->second.first = (int64_t) i;
        ++it->second.count;
    }
    std::vector<std::pair<std::string, Entry>> order;
    order.reserve(counts.size());
    for (auto & [word, entry] : counts) if (word != "<unk>" && word != "<eos>") order.emplace_back(word, entry);
    std::sort(order.begin(), order.end(), [](const auto & a, const auto & b) {
        return a.second.count != b.second.count ? a.second.count > b.second.count : a.second.first < b.second.first;
    });
    Vocabulary vocab;
    vocab.words = {"<unk>", "<eos>"};
    for (auto & [word, entry] : order) vocab.words.push_back(word);
    for (size_t i = 0; i < vocab.words.size(); ++i) vocab.ids.emplace(vocab.words[i], (int32_t) i);
    return vocab;
}

std::string corpus_cache_path(const std::string & folder) {
    std::string root;
    if (const char * env = std::getenv("STUDIO_CACHE"); env && *env) root = env;
    else if (const char * xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) root = std::string(xdg) + "/head-pruning-studio";
    else if (const char * home = std::getenv("HOME"); home && *home) root = std::string(home) + "/.cache/head-pruning-studio";
    else root = "/tmp/head-pruning-studio";
    std::error_code ec;
    const auto absolute = fs::weakly_canonical(fs::path(folder), ec);
    const std::string key = (ec ? fs::path(folder) : absolute).string();
    return (fs::path(root) / ("corpus-" + std::to_string(std::hash<std::string>{}(key)) + ".bin")).string();
}

Corpus corpus_load(const std::string & folder, bool use_cache) {
    if (!fs::is_directory(folder)) {
        throw DataError("data error: " + folder + ": dataset folder not found (" + kHowToGet + ")");
    }
    for (const char * split : {"train", "valid", "test"}) {
        if (!fs::exists(split_path(folder, split))) {
            throw DataError("data error: " + split_path(folder, split) + ": file not found (" + kHowToGet + ")");
        }
    }
    Corpus corpus;
    corpus.folder = folder;
    const std::string signature = files_signature(folder);
    const std::string cache = corpus_cache_path(folder);
    if (use_cache && cache_read(cache, signature, corpus)) return corpus;

    const auto train_tokens = wikitext_tokenize(read_file(split_path(folder, "train")), split_path(folder, "train"));
    corpus.vocab = wikitext_build_vocabulary(train_tokens);
    corpus.train = to_ids(corpus.vocab, train_tokens);
    corpus.valid = to_ids(corpus.vocab, wikitext_tokenize(read_file(split_path(folder, "valid")), split_path(folder, "valid")));
    corpus.test = to_ids(corpus.vocab, wikitext_tokenize(read_file(split_path(folder, "test")), split_path(folder, "test")));
    if (use_cache) cache_write(cache, signature, corpus);
    return corpus;
}

double corpus_unigram_perplexity(const Corpus & corpus, const std::string & split) {
    std::vector<double> counts((size_t) corpus.vocab.size(), 1.0); // add-one smoothing
    for (auto id : corpus.train) counts[(size_t) id] += 1.0;
    double total = 0;
    for (double c : counts) total += c;
    double nll = 0;
    const auto & ids = corpus.split(split);
    for (auto id : ids) nll -= std::log(counts[(size_t) id] / total);
    return std::exp(nll / (double) ids.size());
}

} // namespace studio
