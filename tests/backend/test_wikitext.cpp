// The WikiText reader on the real WikiText-2 files: exact published statistics, the reference's vocabulary order,
// the cache, and clear errors for missing or malformed files.
#include <QDir>
#include <QFile>
#include <QTemporaryDir>
#include <QTest>

#include <unordered_map>

#include "wikitext.h"

using studio::DataError;

class TestWikitext : public QObject {
    Q_OBJECT
    const std::string folder = std::string(STUDIO_TEST_DATA) + "/wikitext-2";

private Q_SLOTS:
    void wikitext2_statistics_are_exact() {
        auto corpus = studio::corpus_load(folder, /*use_cache=*/false);
        QCOMPARE((int64_t) corpus.train.size(), int64_t(2088628));
        QCOMPARE((int64_t) corpus.valid.size(), int64_t(217646));
        QCOMPARE((int64_t) corpus.test.size(), int64_t(245569));
        QCOMPARE(corpus.vocab.size(), int64_t(33278));
        // <unk> counts from the data README, proving ids map back to the right words.
        int64_t unk = 0;
        for (auto id : corpus.train) unk += id == studio::Vocabulary::unk;
        QCOMPARE(unk, int64_t(54625));
    }

    void vocabulary_order_is_the_references() {
        auto corpus = studio::corpus_load(folder);
        QCOMPARE(corpus.vocab.words[0], std::string("<unk>"));
        QCOMPARE(corpus.vocab.words[1], std::string("<eos>"));
        // Independently: count the train tokens and check the order is by descending frequency.
        std::unordered_map<int32_t, int64_t> count;
        for (auto id : corpus.train) ++count[id];
        for (int32_t id = 3; id < (int32_t) corpus.vocab.size(); ++id) {
            QVERIFY2(count[id - 1] >= count[id], corpus.vocab.words[(size_t) id].c_str());
        }
        QCOMPARE(corpus.vocab.words[2], std::string("the"));
        QCOMPARE(corpus.vocab.id("the"), 2);
        QCOMPARE(corpus.vocab.id("no-such-word-here"), studio::Vocabulary::unk);
    }

    void ties_keep_first_appearance() {
        auto vocab = studio::wikitext_build_vocabulary({"b", "a", "c", "a", "b", "<eos>", "d"});
        std::vector<std::string> expected{"<unk>", "<eos>", "b", "a", "c", "d"};
        QCOMPARE(vocab.words, expected);
    }

    void tokenizer_adds_eos_per_line_even_empty_ones() {
        auto tokens = studio::wikitext_tokenize(" = Title = \n \n a b\n", "x");
        std::vector<std::string> expected{"=", "Title", "=", "<eos>", "<eos>", "a", "b", "<eos>"};
        QCOMPARE(tokens, expected);
    }

    void cache_gives_identical_corpus() {
        QTemporaryDir cache;
        qputenv("STUDIO_CACHE", cache.path().toUtf8());
        auto first = studio::corpus_load(folder);
        QVERIFY(QFile::exists(QString::fromStdString(studio::corpus_cache_path(folder))));
        auto second = studio::corpus_load(folder);
        QCOMPARE(second.vocab.words, first.vocab.words);
        QVERIFY(second.train == first.train);
        QVERIFY(second.test == first.test);
        // A corrupt cache is ignored and rebuilt, never trusted.
        QFile f(QString::fromStdString(studio::corpus_cache_path(folder)));
        QVERIFY(f.open(QIODevice::ReadWrite));
        f.seek(40);
        f.write("garbage garbage garbage");
        f.close();
        auto third = studio::corpus_load(folder);
        QVERIFY(third.train == first.train);
    }

    void unigram_perplexity_is_the_floor() {
        auto corpus = studio::corpus_load(folder);
        const double ppl = studio::corpus_unigram_perplexity(corpus, "valid");
        QVERIFY2(ppl > 500 && ppl < 1500, std::to_string(ppl).c_str());
    }

    void missing_and_malformed_files_give_one_line() {
        try {
            studio::corpus_load("/nonexistent/wikitext-2");
            QFAIL("missing folder accepted");
        } catch (const DataError & e) {
            QCOMPARE(std::string(e.what()), std::string("data error: /nonexistent/wikitext-2: dataset folder not found (get WikiText with scripts/fetch-wikitext.sh (needs internet) or set data.dir / $STUDIO_DATA)"));
        }
        QTemporaryDir dir;
        auto write = [&](const char * name, const QByteArray & bytes) {
            QFile f(dir.path() + "/" + name);
            QVERIFY(f.open(QIODevice::WriteOnly));
            f.write(bytes);
        };
        write("wiki.train.tokens", " a b c \n");
        write("wiki.valid.tokens", " a \n");
        try {
            studio::corpus_load(dir.path().toStdString(), false);
            QFAIL("missing test split accepted");
        } catch (const DataError & e) {
            QCOMPARE(std::string(e.what()), "data error: " + dir.path().toStdString() + "/wiki.test.tokens: file not found (get WikiText with scripts/fetch-wikitext.sh (needs internet) or set data.dir / $STUDIO_DATA)");
        }
        write("wiki.test.tokens", QByteArray("\x00\x01\x02", 3));
        try {
            studio::corpus_load(dir.path().toStdString(), false);
            QFAIL("binary test split accepted");
        } catch (const DataError & e) {
            QCOMPARE(std::string(e.what()), "data error: " + dir.path().toStdString() + "/wiki.test.tokens: binary data in a text file, not a WikiText .tokens file (get WikiText with scripts/fetch-wikitext.sh (needs internet) or set data.dir / $STUDIO_DATA)");
        }
    }
};

QTEST_GUILESS_MAIN(TestWikitext)
#include "test_wikitext.moc"
