// Engine runs started by the studio: detached children (they outlive the window if the user wants), with stdout and
// stderr captured to RUN_DIR/stdout.log. The studio keeps their pids to stop them and to notice when they die.
#pragma once

#include <QHash>
#include <QString>

#include "launchcommand.h"

namespace studio {

class RunProcesses {
public:
    /// Starts the command detached, output appended to runDir/stdout.log (runDir is created). Returns false and sets
    /// *error when it cannot start.
    bool start(const LaunchCommand & command, const QString & runDir, QString * error = nullptr);
    /// SIGTERM: the engine checkpoints and writes run_end "stopped".
    bool stop(const QString & runDir);
    bool isOurs(const QString & runDir) const;
    bool isAlive(const QString & runDir) const;
    qint64 pid(const QString & runDir) const { return pids_.value(runDir, 0); }
    /// Run directories of children still alive.
    QStringList alive() const;
    QStringList all() const { return pids_.keys(); }

    static bool pidAlive(qint64 pid);
    /// Last non-empty line of runDir/stdout.log (progress lines end in '\r' too), for a run that died silently.
    static QString lastLogLine(const QString & runDir);

private:
    QHash<QString, qint64> pids_;
};

} // namespace studio
