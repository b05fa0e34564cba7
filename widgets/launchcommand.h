// The engine's command lines, built in one place so that tests pin them down exactly.
#pragma once

#include <QString>
#include <QStringList>

namespace studio {

struct LaunchCommand {
    QString program;
    QStringList arguments;

    /// `studio --batch CONFIG --run-dir RUN_DIR`
    static LaunchCommand launch(const QString & studioExe, const QString & configFile, const QString & runDir);
    /// `studio --batch RUN_DIR/config.json --run-dir RUN_DIR --resume`
    static LaunchCommand resume(const QString & studioExe, const QString & runDir);
    /// `studio bench RUN_DIR`
    static LaunchCommand bench(const QString & studioExe, const QString & runDir);
    /// `studio devices --json`, which prints {"cuda_devices": N}
    static LaunchCommand devices(const QString & studioExe);

    /// Where a launch writes the edited config before starting: RUNS_DIR/NAME.launch.json.
    static QString launchConfigPath(const QString & runsDir, const QString & name);
    /// RUNS_DIR/NAME
    static QString runDirFor(const QString & runsDir, const QString & name);
};

} // namespace studio
