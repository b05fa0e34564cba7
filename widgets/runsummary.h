// One line of the runs list, kept up to date from a run directory's config.json and events.jsonl.
#pragma once

#include <QDateTime>
#include <QMetaType>
#include <QString>
#include <QVector>

#include <map>
#include <memory>

namespace studio {

class EventReader;

struct RunSummary {
    QString name;               // folder name
    QString dir;                // absolute path of the run directory
    QString modelType;          // config.json model.type, else run_start model.type
    QString stage;              // last stage_start
    QString endStatus;          // run_end status; empty while none
    QString errorMessage;       // last error event
    long long headsKept = -1;   // sum of heads_per_layer of the last prune, else of run_start's model; -1 unknown
    long long headsTotal = -1;  // run_start's model
    double bestValidPpl = qQNaN(); // min ppl of valid evals
    double lastTestPpl = qQNaN();  // ppl of the last test eval
    double layerParams = qQNaN();  // layer_params_after of the last prune, else run_start model.params_layers
    bool started = false;       // a run_start was seen
    QDateTime lastModified;     // of events.jsonl

    /// "finished", "error", "stopped" from run_end; else "running" if `live` (a process of ours or fresh writes),
    /// "error" after an error event or if the process we launched is gone, else "stopped".
    QString status(bool processOurs, bool processAlive) const;
    /// Test ppl if there is one, else the best valid ppl (for sweeps); preferValid swaps the order.
    double sweepPpl(bool preferValid = false) const;
};

/// Reads run directories incrementally: each call reads only what was appended since the last one.
class RunScanner {
public:
    RunScanner();
    ~RunScanner();
    /// Summaries of every run directory (a folder holding config.json, events.jsonl or stdout.log) directly under runsDir.
    QVector<RunSummary> scan(const QString & runsDir);
    /// One run directory.
    RunSummary scanRun(const QString & runDir);

private:
    struct State;
    std::map<QString, std::unique_ptr<State>> states_;
};

/// Seconds after which a run without run_end and without a process of ours no longer counts as running.
constexpr int kRunFreshSeconds = 120;

} // namespace studio

Q_DECLARE_METATYPE(studio::RunSummary)
