// Helpers shared by the tests that run the studio executable (test_pipeline, test_kill, test_full_disk): start it,
// write a tiny config, read the losses back, and check checkpoints the way the engine does when it loads them.
#pragma once

#include <QDir>
#include <QTemporaryDir>
#include <QTest>
#include <QFile>
#include <QMap>
#include <QProcess>
#include <QString>
#include <QStringList>

#include <cmath>
#include <fstream>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "events.h"
#include "run_dir.h"

// QCOMPARE cannot take nlohmann::json (its implicit conversions make QTest's overloads ambiguous): compare and print.
#define JSON_COMPARE(actual, expected)                                                                   \
    do {                                                                                                 \
        const nlohmann::json actual_ = (actual), expected_ = (expected);                                 \
        QVERIFY2(actual_ == expected_, (actual_.dump() + " != " + expected_.dump()).c_str());            \
    } while (0)

namespace studio_test {

using nlohmann::json;

struct Result {
    int code = -1;
    QString out, err;
};

inline QProcessEnvironment studio_environment(const QMap<QString, QString> & env = {}) {
    auto environment = QProcessEnvironment::systemEnvironment();
    environment.insert("STUDIO_DATA", STUDIO_TEST_DATA);
    for (auto it = env.begin(); it != env.end(); ++it) environment.insert(it.key(), it.value());
    return environment;
}

inline Result studio_run(const QStringList & args, const QMap<QString, QString> & env = {}) {
    QProcess p;
    p.setProcessEnvironment(studio_environment(env));
    p.start(STUDIO_BINARY, args);
    p.waitForFinished(600000);
    return {p.exitStatus() == QProcess::NormalExit ? p.exitCode() : -1, QString::fromUtf8(p.readAllStandardOutput()),
            QString::fromUtf8(p.readAllStandardError())};
}

// Two layers, hidden 16, WikiText-2's vocabulary, every dropout on (so an exact resume must restore the RNG too).
inline json tiny_config(const std::string & name) {
    return {{"name", name}, {"stages", {"train"}}, {"seed", 11}, {"device", "cpu"},
            {"model", {{"type", "all_attention"}, {"num_layers", 2}, {"num_heads", 2}, {"hidden_dim", 16}, {"feedforward_dim", 8},
                       {"max_len", 16}, {"tgt_len", 8}, {"mem_len", 8}, {"cutoffs", {1000, 5000}},
                       {"attn_drop", 0.1}, {"proj_drop", 0.1}, {"input_drop", 0.1}, {"output_drop", 0.1}, {"word_drop", 0.1}}},
            {"train", {{"steps", 12}, {"batch_size", 4}, {"log_interval", 1}, {"checkpoint_interval", 4},
                       {"optimizer", {{"lr", 0.01}}}, {"schedule", {{"warmup_steps", 2}, {"min_lr", 0.001}}}}},
            {"eval", {{"batch_size", 64}, {"splits", {"valid"}}}}};
}

inline QString write_config(const QString & dir, const json & config) {
    const QString path = dir + "/" + QString::fromStdString(config["name"].get<std::string>()) + ".json";
    std::ofstream(path.toStdString()) << config.dump(2);
    return path;
}

inline QString write_config(const QTemporaryDir & dir, const json & config) { return write_config(dir.path(), config); }

inline json read_json(const QString & path) {
    std::ifstream in(path.toStdString());
    return json::parse(in);
}

inline QString read_text(const QString & path) {
    QFile file(path);
    return file.open(QIODevice::ReadOnly) ? QString::fromUtf8(file.readAll()) : QString();
}

/// How many events of `type` a run directory's events.jsonl holds (only those of `stage`, when one is named).
inline int count_events(const QString & run_dir, const std::string & type, const std::string & stage = "") {
    int n = 0;
    for (const auto & e : studio::events_read_all((run_dir + "/events.jsonl").toStdString()))
        n += e["event"] == type && (stage.empty() || e.value("stage", "") == stage);
    return n;
}

// The first lines of WikiText-2's splits as a dataset of their own (~28k train tokens, a ~4.8k-word vocabulary), for
// tests that start the studio dozens of times: loading it and evaluating on it take milliseconds, not seconds.
// Returns the folder to use as data.dir.
inline QString small_wikitext(const QString & dir, int train_lines = 600, int other_lines = 150) {
    const QString folder = dir + "/small-data";
    QDir().mkpath(folder + "/wikitext-2");
    for (const auto & [split, lines] : {std::pair<QString, int>{"train", train_lines}, {"valid", other_lines}, {"test", other_lines}}) {
        QFile in(QString(STUDIO_TEST_DATA) + "/wikitext-2/wiki." + split + ".tokens");
        QFile out(folder + "/wikitext-2/wiki." + split + ".tokens");
        if (!in.open(QIODevice::ReadOnly) || !out.open(QIODevice::WriteOnly)) return {};
        for (int i = 0; i < lines && !in.atEnd(); ++i) out.write(in.readLine());
    }
    return folder;
}

inline json small_config(const std::string & name, const QString & data_dir) {
    json config = tiny_config(name);
    config["data"] = {{"dir", data_dir.toStdString()}};
    config["model"]["cutoffs"] = {500, 2000};
    return config;
}

// Last logged loss of every step of a stage: a resumed run logs the steps after its checkpoint again, and the last
// line for a step is the one the finished run stands on.
inline std::map<int64_t, double> losses(const QString & run_dir, const std::string & stage) {
    std::map<int64_t, double> by_step;
    for (const auto & e : studio::events_read_all((run_dir + "/events.jsonl").toStdString())) {
        if (e["event"] == "train" && e["stage"] == stage) by_step[e["step"].get<int64_t>()] = e["loss"].get<double>();
    }
    return by_step;
}

inline double last_valid_ppl(const QString & run_dir) {
    double ppl = 0;
    for (const auto & e : studio::events_read_all((run_dir + "/events.jsonl").toStdString())) {
        if (e["event"] == "eval" && e["split"] == "valid") ppl = e["ppl"].get<double>();
    }
    return ppl;
}

// Empty when the checkpoint folder is one the engine would load: our state.json, and every file its manifest names
// present with the recorded checksum. Otherwise what is wrong.
inline QString checkpoint_problem(const QString & path) {
    std::ifstream in((path + "/state.json").toStdString());
    if (!in) return path + ": no state.json";
    json state = json::parse(in, nullptr, false);
    if (state.is_discarded() || !state.is_object() || state.value("format", "") != "head-pruning-studio checkpoint") {
        return path + ": state.json is not a checkpoint's";
    }
    if (!state.contains("manifest") || !state["manifest"].contains("model.safetensors")) return path + ": manifest lacks the model";
    for (auto it = state["manifest"].begin(); it != state["manifest"].end(); ++it) {
        const QString file = path + "/" + QString::fromStdString(it.key());
        if (!QFile::exists(file)) return file + " is missing";
        if (studio::file_checksum(file.toStdString()) != it.value().get<std::string>()) return file + " does not match its checksum";
    }
    for (const QString & name : QDir(path).entryList(QDir::Files | QDir::Hidden | QDir::NoDotAndDotDot)) {
        if (name != "state.json" && !state["manifest"].contains(name.toStdString())) return path + ": unexpected file " + name;
    }
    return {};
}

} // namespace studio_test
