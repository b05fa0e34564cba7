// WikiText reader: whitespace tokens, one <eos> per line (empty lines too), a vocabulary ordered as the reference
// orders it (<unk> = 0, <eos> = 1, then by descending train-set frequency, ties by first appearance), and a binary
// cache of the token ids so WikiText-103 is read once. No LibTorch: the fuzzers link this alone.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace studio {

/// A missing or malformed dataset file; what() is one line naming the file and how to get WikiText.
struct DataError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Vocabulary {
    std::vector<std::string> words;                   // id -> word
    std::unordered_map<std::string, int32_t> ids;     // word -> id
    static constexpr int32_t unk = 0;
    static constexpr int32_t eos = 1;
    int64_t size() const { return (int64_t) words.size(); }
    int32_t id(const std::string & word) const;       // <unk> for unknown words
};

struct Corpus {
    std::string folder;
    Vocabulary vocab;
    std::vector<int32_t> train, valid, test;
    /// "train", "valid" or "test"; throws DataError for anything else.
    const std::vector<int32_t> & split(const std::string & name) const;
};

/// Tokenizes one split's text (whitespace words, "<eos>" after every line). `source` names it in errors.
std::vector<std::string> wikitext_tokenize(const std::string & text, const std::string & source);
/// Builds the vocabulary from the train tokens in the reference order.
Vocabulary wikitext_build_vocabulary(const std::vector<std::string> & train_tokens);
/// Reads folder/wiki.{train,valid,test}.tokens (through the cache when use_cache and the cache is valid).
Corpus corpus_load(const std::string & folder, bool use_cache = true);
/// Where the cache for this folder lives ($STUDIO_CACHE, else $XDG_CACHE_HOME or ~/.cache, /head-pruning-studio/).
std::string corpus_cache_path(const std::string & folder);
/// Perplexity of a split under the train set's unigram distribution (add-one smoothed): the floor any LM must beat.
double corpus_unigram_perplexity(const Corpus & corpus, const std::string & split);

} // namespace studio
