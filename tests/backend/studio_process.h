// Helpers for tests that run the studio executable as a user would: start it, read what it wrote.
#pragma once

#include <QFile>
#include <QMap>
#include <QProcess>
#include <QString>
#include <QStringList>
#include <QTemporaryDir>
#include <QTest>

#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "events.h"

// QCOMPARE cannot take nlohmann::json (its implicit conversions make QTest's overloads ambiguous): compare and print.
#define JSON_COMPARE(actual, expected)                                                                   \
    do {                                                                                                 \
        const nlohmann::json actual_ = (actual), expected_ = (expected);                                 \
        QVERIFY2(actual_ == expected_, (actual_.dump() + " != " + expected_.dump()).c_str());            \
    } while (0)

namespace studio_test {

struct Result {
    int code = -1;
    QString out, err;
};

/// Runs `studio ARGS` with STUDIO_DATA set to the test data (and `env` on top); waits up to 10 minutes.
inline Result studio_run(const QStringList & args, const QMap<QString, QString> & env = {}) {
    QProcess p;
    auto environment = QProcessEnvironment::systemEnvironment();
    environment.insert("STUDIO_DATA", STUDIO_TEST_DATA);
    for (auto it = env.begin(); it != env.end(); ++it) environment.insert(it.key(), it.value());
    p.setProcessEnvironment(environment);
    p.start(STUDIO_BINARY, args);
    p.waitForFinished(600000);
    return {p.exitStatus() == QProcess::NormalExit ? p.exitCode() : -1, QString::fromUtf8(p.readAllStandardOutput()),
            QString::fromUtf8(p.readAllStandardError())};
}

/// A 2-layer, 2-head All-attention model small enough to train in seconds on the CPU.
inline nlohmann::json tiny_config(const std::string & name) {
    return {{"name", name}, {"stages", {"train"}}, {"seed", 11}, {"device", "cpu"},
            {"model", {{"type", "all_attention"}, {"num_layers", 2}, {"num_heads", 2}, {"hidden_dim", 16}, {"feedforward_dim", 8},
                       {"max_len", 16}, {"tgt_len", 8}, {"mem_len", 8}, {"cutoffs", {1000, 5000}},
                       {"attn_drop", 0.1}, {"proj_drop", 0.1}, {"input_drop", 0.1}, {"output_drop", 0.1}, {"word_drop", 0.1}}},
            {"train", {{"steps", 12}, {"batch_size", 4}, {"log_interval", 1}, {"checkpoint_interval", 4},
                       {"optimizer", {{"lr", 0.01}}}, {"schedule", {{"warmup_steps", 2}, {"min_lr", 0.001}}}}},
            {"eval", {{"batch_size", 64}, {"splits", {"valid"}}}}};
}

/// Writes the config as <dir>/<name>.json and returns the path.
inline QString write_config(const QTemporaryDir & dir, const nlohmann::json & config) {
    const QString path = dir.path() + "/" + QString::fromStdString(config["name"].get<std::string>()) + ".json";
    std::ofstream(path.toStdString()) << config.dump(2);
    return path;
}

inline nlohmann::json read_json(const QString & path) {
    std::ifstream in(path.toStdString());
    return nlohmann::json::parse(in);
}

inline QString read_text(const QString & path) {
    QFile file(path);
    return file.open(QIODevice::ReadOnly) ? QString::fromUtf8(file.readAll()) : QString();
}

/// Events of one type in a run directory's events.jsonl.
inline int count_events(const QString & run_dir, const std::string & type) {
    int n = 0;
    for (const auto & e : studio::events_read_all((run_dir + "/events.jsonl").toStdString())) n += e["event"] == type;
    return n;
}

} // namespace studio_test
