#include "runprocess.h"

#include <QDir>
#include <QFile>
#include <QFileInfo>
#include <QProcess>
#include <QRegularExpression>

#include <csignal>
#include <sys/types.h>
#include <signal.h>

namespace studio {

bool RunProcesses::start(const LaunchCommand & command, const QString & runDir, QString * error) {
    const QString dir = QFileInfo(runDir).absoluteFilePath();
    if (!QDir().mkpath(dir)) {
        if (error) *error = QStringLiteral("cannot create %1").arg(dir);
        return false;
    }
    const QString log = QDir(dir).filePath(QStringLiteral("stdout.log"));
    QProcess process;
    process.setProgram(command.program);
    process.setArguments(command.arguments);
    process.setStandardOutputFile(log, QIODevice::Append);
    process.setStandardErrorFile(log, QIODevice::Append);
    process.setStandardInputFile(QProcess::nullDevice());
    qint64 pid = 0;
    if (!process.startDetached(&pid)) {
        if (error) *error = QStringLiteral("cannot start %1: %2").arg(command.program, process.errorString());
        return false;
    }
    pids_[dir] = pid;
    return true;
}

bool RunProcesses::stop(const QString & runDir) {
    const qint64 pid = pids_.value(QFileInfo(runDir).absoluteFilePath(), 0);
    if (pid <= 0 || !pidAlive(pid)) return false;
    return ::kill((pid_t) pid, SIGTERM) == 0;
}

bool RunProcesses::isOurs(const QString & runDir) const {
    return pids_.contains(QFileInfo(runDir).absoluteFilePath());
}

bool RunProcesses::isAlive(const QString & runDir) const {
    return pidAlive(pids_.value(QFileInfo(runDir).absoluteFilePath(), 0));
}

QStringList RunProcesses::alive() const {
    QStringList out;
    for (auto it = pids_.constBegin(); it != pids_.constEnd(); ++it) if (pidAlive(it.value())) out << it.key();
    return out;
}

bool RunProcesses::pidAlive(qint64 pid) {
    if (pid <= 0 || ::kill((pid_t) pid, 0) != 0) return false;
    // A zombie (exited, not yet reaped) still answers kill(pid, 0).
    QFile stat(QStringLiteral("/proc/%1/stat").arg(pid));
    if (stat.open(QIODevice::ReadOnly)) {
        const QByteArray text = stat.readAll();
        const int close = text.lastIndexOf(')');
        if (close >= 0 && close + 2 < text.size() && text[close + 2] == 'Z') return false;
    }
    return true;
}

QString RunProcesses::lastLogLine(const QString & runDir) {
    QFile file(QDir(runDir).filePath(QStringLiteral("stdout.log")));
    if (!file.open(QIODevice::ReadOnly)) return {};
    const qint64 tail = 16384;
    if (file.size() > tail) file.seek(file.size() - tail);
    const QString text = QString::fromUtf8(file.readAll());
    const QStringList lines = text.split(QRegularExpression(QStringLiteral("[\r\n]")), Qt::SkipEmptyParts);
    for (int i = lines.size() - 1; i >= 0; --i) {
        const QString line = lines[i].trimmed();
        if (!line.isEmpty()) return line;
    }
    return {};
}

} // namespace studio
