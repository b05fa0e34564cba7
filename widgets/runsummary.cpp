#include "runsummary.h"

#include <QDir>
#include <QFile>
#include <QFileInfo>

#include <cmath>
#include <fstream>

#include <events.h>
#include <nlohmann/json.hpp>

#include "jsonutil.h"

namespace studio {

QString RunSummary::status(bool processOurs, bool processAlive) const {
    if (endStatus == "ok") return QStringLiteral("finished");
    if (endStatus == "error") return QStringLiteral("error");
    if (endStatus == "stopped") return QStringLiteral("stopped");
    if (!endStatus.isEmpty()) return endStatus;
    if (processOurs) return processAlive ? QStringLiteral("running") : QStringLiteral("error");
    if (!errorMessage.isEmpty()) return QStringLiteral("error");
    // A headless run elsewhere: only its writes tell us it is alive.
    if (lastModified.isValid() && lastModified.secsTo(QDateTime::currentDateTime()) <= kRunFreshSeconds) return QStringLiteral("running");
    return QStringLiteral("stopped");
}

double RunSummary::sweepPpl(bool preferValid) const {
    if (preferValid) return std::isfinite(bestValidPpl) ? bestValidPpl : lastTestPpl;
    return std::isfinite(lastTestPpl) ? lastTestPpl : bestValidPpl;
}

struct RunScanner::State {
    explicit State(const QString & dir) : reader(QDir(dir).filePath("events.jsonl").toStdString()) {}
    EventReader reader;
    RunSummary summary;
    QDateTime configModified;
    QString configModelType;
};

RunScanner::RunScanner() = default;
RunScanner::~RunScanner() = default;

QVector<RunSummary> RunScanner::scan(const QString & runsDir) {
    QVector<RunSummary> out;
    QDir dir(runsDir);
    const auto entries = dir.entryInfoList(QDir::Dirs | QDir::NoDotAndDotDot, QDir::Name);
    for (const QFileInfo & info : entries) {
        QDir run(info.absoluteFilePath());
        // stdout.log alone: a run the studio just launched, before the engine wrote anything.
        if (!run.exists("config.json") && !run.exists("events.jsonl") && !run.exists("stdout.log")) continue;
        out.push_back(scanRun(info.absoluteFilePath()));
    }
    return out;
}

RunSummary RunScanner::scanRun(const QString & runDir) {
    const QString dir = QFileInfo(runDir).absoluteFilePath();
    auto & slot = states_[dir];
    if (!slot) {
        slot = std::make_unique<State>(dir);
        slot->summary.dir = dir;
        slot->summary.name = QFileInfo(dir).fileName();
    }
    State & st = *slot;
    RunSummary & s = st.summary;

    const QFileInfo configInfo(QDir(dir).filePath("config.json"));
    if (configInfo.exists() && configInfo.lastModified() != st.configModified) {
        st.configModified = configInfo.lastModified();
        std::ifstream in(configInfo.absoluteFilePath().toStdString());
        auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false, /*ignore_comments=*/true);
        if (j.is_object() && j.contains("model")) st.configModelType = jsonString(j["model"], "type");
    }

    const QFileInfo eventsInfo(QDir(dir).filePath("events.jsonl"));
    if (eventsInfo.exists()) s.lastModified = eventsInfo.lastModified();
    for (const auto & e : st.reader.poll()) {
        const QString type = jsonString(e, "event");
        if (type == "run_start") {
            s.started = true;
            s.endStatus.clear();
            s.errorMessage.clear();
            if (e.contains("model")) {
                const auto & m = e["model"];
                s.modelType = jsonString(m, "type", s.modelType);
                s.headsTotal = jsonIntListSum(m, "heads_per_layer");
                // An empty list means every layer has num_heads (config.h).
                if (s.headsTotal <= 0 && jsonInt(m, "num_layers") > 0) s.headsTotal = jsonInt(m, "num_layers") * jsonInt(m, "num_heads");
                // A prune seen before a resume still wins; run_start only fills what is unknown.
                if (s.headsKept < 0) s.headsKept = s.headsTotal;
                if (!std::isfinite(s.layerParams)) s.layerParams = jsonNumber(m, "params_layers");
            }
        } else if (type == "stage_start") {
            s.stage = jsonString(e, "stage", s.stage);
        } else if (type == "eval") {
            const double ppl = jsonNumber(e, "ppl");
            if (!std::isfinite(ppl)) continue;
            const QString split = jsonString(e, "split");
            if (split == "valid" && !(ppl >= s.bestValidPpl)) s.bestValidPpl = ppl;
            if (split == "test") s.lastTestPpl = ppl;
        } else if (type == "prune") {
            const long long kept = jsonIntListSum(e, "heads_per_layer");
            if (kept >= 0) s.headsKept = kept;
            const double after = jsonNumber(e, "layer_params_after");
            if (std::isfinite(after)) s.layerParams = after;
        } else if (type == "error") {
            s.errorMessage = jsonString(e, "message", QStringLiteral("error"));
        } else if (type == "run_end") {
            s.endStatus = jsonString(e, "status", QStringLiteral("ok"));
        }
    }
    if (!st.configModelType.isEmpty()) s.modelType = st.configModelType;
    return s;
}

} // namespace studio
