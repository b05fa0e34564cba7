// Everything the live views draw for one run, built from its events in order. Plain data: the widgets copy from
// here, and tests feed it JSON events directly.
#pragma once

#include <QString>
#include <QStringList>
#include <QVector>

#include <map>
#include <vector>

#include <nlohmann/json.hpp>

#include "gatematrix.h"

namespace studio {

struct Series {
    QVector<double> x;
    QVector<double> y;
    void append(double xv, double yv) { x.push_back(xv); y.push_back(yv); }
    bool isEmpty() const { return x.isEmpty(); }
    int size() const { return x.size(); }
};

class RunHistory {
public:
    /// Takes events in file order. Unknown event types are ignored.
    void ingest(const nlohmann::json & event);
    void ingest(const std::vector<nlohmann::json> & events) { for (const auto & e : events) ingest(e); }
    void clear() { *this = RunHistory(); }

    // Train / gate stage curves; x is the step on the run's whole timeline (see globalStep).
    Series loss, trainPpl, learningRate, tokensPerSecond;
    Series expectedSparsity, hardSparsity, targetSparsity, l0Coefficient;
    Series validPpl, validLoss, testPpl;

    /// Every gates event, in order; the heatmap's step slider replays them.
    QVector<GateMatrix> gates;
    /// (global step, stage) where a train or gate stage begins.
    QVector<QPair<double, QString>> stageStarts;

    QString name;
    QString modelType;
    QString lastStage;
    QString endStatus;          // run_end status ("ok", "error", "stopped"); empty while none
    QString errorMessage;       // last error event's message
    nlohmann::json model;       // run_start "model"
    nlohmann::json lastPrune;   // last prune event, or null
    nlohmann::json benchRows;   // rows of the last bench event, or null
    long long eventCount = 0;

    /// The step on the run's timeline: each train/gate stage starts where the steps seen so far end, and keeps that
    /// offset when a resumed run starts it again.
    double globalStep(const QString & stage, double step) const;

private:
    double offsetFor(const QString & stage);
    std::map<QString, double> stageOffset_;
    double maxGlobalStep_ = 0;
};

/// The curves in long form, "series,step,value" per line, for spreadsheets.
QString historyCsv(const RunHistory & history);

} // namespace studio
