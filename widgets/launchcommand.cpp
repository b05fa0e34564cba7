#include "launchcommand.h"

#include <QDir>

namespace studio {

LaunchCommand LaunchCommand::launch(const QString & studioExe, const QString & configFile, const QString & runDir) {
    return {studioExe, {QStringLiteral("--batch"), configFile, QStringLiteral("--run-dir"), runDir}};
}

LaunchCommand LaunchCommand::resume(const QString & studioExe, const QString & runDir) {
    return {studioExe, {QStringLiteral("--batch"), QDir(runDir).filePath(QStringLiteral("config.json")),
                        QStringLiteral("--run-dir"), runDir, QStringLiteral("--resume")}};
}

LaunchCommand LaunchCommand::bench(const QString & studioExe, const QString & runDir) {
    return {studioExe, {QStringLiteral("bench"), runDir}};
}

LaunchCommand LaunchCommand::devices(const QString & studioExe) {
    return {studioExe, {QStringLiteral("devices"), QStringLiteral("--json")}};
}

QString LaunchCommand::launchConfigPath(const QString & runsDir, const QString & name) {
    return QDir(runsDir).filePath(name + QStringLiteral(".launch.json"));
}

QString LaunchCommand::runDirFor(const QString & runsDir, const QString & name) {
    return QDir(runsDir).filePath(name);
}

} // namespace studio
