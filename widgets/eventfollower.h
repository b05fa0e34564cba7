// Workers that read run directories off the GUI thread (Qt's mandelbrot pattern, style.md section 5): they live in a
// QThread, poll on their own timers and hand value snapshots to the GUI over queued signals.
#pragma once

#include <QObject>
#include <QStringList>
#include <QVector>

#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "runsummary.h"

class QTimer;

namespace studio {

class EventReader;

/// Parsed events handed from the follower to the GUI thread.
struct EventBatch {
    std::shared_ptr<const std::vector<nlohmann::json>> events;
    /// The file shrank (replaced or truncated) and is read again from its start: drop what was shown.
    bool restarted = false;
};

/// Follows one run's events.jsonl; every poll emits only the new complete lines.
class EventFollower : public QObject {
    Q_OBJECT
public:
    explicit EventFollower(QObject * parent = nullptr);
    ~EventFollower() override;

public Q_SLOTS:
    /// Starts following runDir/events.jsonl from its beginning; batches carry `generation` so the receiver can drop
    /// batches of a run it no longer shows.
    void follow(const QString & runDir, quint64 generation);
    void start(int intervalMs);
    void stop();
    void poll();

Q_SIGNALS:
    void eventsArrived(quint64 generation, const studio::EventBatch & batch);

private:
    QTimer * timer_ = nullptr;
    std::unique_ptr<EventReader> reader_;
    quint64 generation_ = 0;
    qint64 lastSize_ = 0;
    QString path_;
};

/// Rescans the runs folder (and runs opened from elsewhere) and emits a summary per run.
class RunScanWorker : public QObject {
    Q_OBJECT
public:
    explicit RunScanWorker(QObject * parent = nullptr);
    ~RunScanWorker() override;

public Q_SLOTS:
    void setRunsDir(const QString & dir);
    void addRunDir(const QString & dir);
    void start(int intervalMs);
    void stop();
    void scan();

Q_SIGNALS:
    void scanned(const QVector<studio::RunSummary> & summaries);

private:
    QTimer * timer_ = nullptr;
    std::unique_ptr<RunScanner> scanner_;
    QString runsDir_;
    QStringList extra_;
};

} // namespace studio

Q_DECLARE_METATYPE(studio::EventBatch)
