#include "eventfollower.h"

#include <QDir>
#include <QFileInfo>
#include <QTimer>

#include <events.h>

namespace studio {

EventFollower::EventFollower(QObject * parent) : QObject(parent) {
    qRegisterMetaType<studio::EventBatch>();
}

EventFollower::~EventFollower() = default;

void EventFollower::follow(const QString & runDir, quint64 generation) {
    generation_ = generation;
    lastSize_ = 0;
    path_ = QDir(runDir).filePath("events.jsonl");
    reader_ = runDir.isEmpty() ? nullptr : std::make_unique<EventReader>(path_.toStdString());
    poll();
}

void EventFollower::start(int intervalMs) {
    if (!timer_) {
        // Created here, in the worker's thread, so that its timeouts run there.
        timer_ = new QTimer(this);
        connect(timer_, &QTimer::timeout, this, &EventFollower::poll);
    }
    timer_->start(intervalMs);
}

void EventFollower::stop() {
    if (timer_) timer_->stop();
}

void EventFollower::poll() {
    if (!reader_) return;
    // EventReader starts over by itself when the file shrinks; the receiver must then start over too.
    const qint64 size = QFileInfo(path_).size();
    const bool restarted = size < lastSize_;
    lastSize_ = size;
    auto events = std::make_shared<std::vector<nlohmann::json>>(reader_->poll());
    if (events->empty() && !restarted) return;
    Q_EMIT eventsArrived(generation_, EventBatch{std::move(events), restarted});
}

RunScanWorker::RunScanWorker(QObject * parent) : QObject(parent), scanner_(std::make_unique<RunScanner>()) {
    qRegisterMetaType<QVector<studio::RunSummary>>();
}

RunScanWorker::~RunScanWorker() = default;

void RunScanWorker::setRunsDir(const QString & dir) {
    runsDir_ = dir;
    scan();
}

void RunScanWorker::addRunDir(const QString & dir) {
    const QString abs = QFileInfo(dir).absoluteFilePath();
    if (!extra_.contains(abs)) extra_.push_back(abs);
    scan();
}

void RunScanWorker::start(int intervalMs) {
    if (!timer_) {
        timer_ = new QTimer(this);
        connect(timer_, &QTimer::timeout, this, &RunScanWorker::scan);
    }
    timer_->start(intervalMs);
}

void RunScanWorker::stop() {
    if (timer_) timer_->stop();
}

void RunScanWorker::scan() {
    QVector<RunSummary> out = runsDir_.isEmpty() ? QVector<RunSummary>() : scanner_->scan(runsDir_);
    for (const QString & dir : extra_) {
        bool listed = false;
        for (const auto & s : out) listed = listed || s.dir == dir;
        if (!listed) out.push_back(scanner_->scanRun(dir));
    }
    Q_EMIT scanned(out);
}

} // namespace studio
