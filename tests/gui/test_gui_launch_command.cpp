// The exact command lines the studio runs for the engine.
#include <QTemporaryDir>
#include <QtTest>

#include <fstream>

#include "launchcommand.h"
#include "runprocess.h"

using studio::LaunchCommand;

class TestLaunchCommand : public QObject {
    Q_OBJECT
private Q_SLOTS:
    void launchArgs() {
        const LaunchCommand c = LaunchCommand::launch("/opt/studio", "runs/q.launch.json", "runs/q");
        QCOMPARE(c.program, QStringLiteral("/opt/studio"));
        QCOMPARE(c.arguments, QStringList({"--batch", "runs/q.launch.json", "--run-dir", "runs/q"}));
    }

    void resumeArgs() {
        const LaunchCommand c = LaunchCommand::resume("/opt/studio", "/data/runs/q");
        QCOMPARE(c.arguments, QStringList({"--batch", "/data/runs/q/config.json", "--run-dir", "/data/runs/q", "--resume"}));
    }

    void benchAndDevicesArgs() {
        QCOMPARE(LaunchCommand::bench("s", "runs/q").arguments, QStringList({"bench", "runs/q"}));
        QCOMPARE(LaunchCommand::devices("s").arguments, QStringList({"devices", "--json"}));
    }

    void paths() {
        QCOMPARE(LaunchCommand::launchConfigPath("runs", "q"), QStringLiteral("runs/q.launch.json"));
        QCOMPARE(LaunchCommand::runDirFor("/r", "q"), QStringLiteral("/r/q"));
    }

    // A child that dies without run_end: its last non-empty output line is what the studio shows.
    void detachedChildLogAndDeath() {
        QTemporaryDir dir;
        const QString run = dir.filePath("r");
        studio::RunProcesses processes;
        QString error;
        const LaunchCommand c{"/bin/sh", {"-c", "echo starting; printf 'step 1\\rstep 2\\r'; echo 'fatal: out of memory' >&2; echo; exit 3"}};
        QVERIFY2(processes.start(c, run, &error), qPrintable(error));
        QVERIFY(processes.isOurs(run));
        QVERIFY(processes.pid(run) > 0);
        QTRY_VERIFY_WITH_TIMEOUT(!processes.isAlive(run), 5000);
        QCOMPARE(studio::RunProcesses::lastLogLine(run), QStringLiteral("fatal: out of memory"));
        QVERIFY(processes.alive().isEmpty());
        QVERIFY(!processes.stop(run)); // nothing left to signal
    }

    void stopSendsSigterm() {
        QTemporaryDir dir;
        const QString run = dir.filePath("r");
        studio::RunProcesses processes;
        const LaunchCommand c{"/bin/sh", {"-c", "trap 'echo got TERM; exit 0' TERM; echo up; while true; do sleep 0.05; done"}};
        QVERIFY(processes.start(c, run));
        QTRY_COMPARE_WITH_TIMEOUT(studio::RunProcesses::lastLogLine(run), QStringLiteral("up"), 5000);
        QVERIFY(processes.isAlive(run));
        QVERIFY(processes.stop(run));
        QTRY_VERIFY_WITH_TIMEOUT(!processes.isAlive(run), 5000);
        QCOMPARE(studio::RunProcesses::lastLogLine(run), QStringLiteral("got TERM"));
    }
};

QTEST_MAIN(TestLaunchCommand)
#include "test_gui_launch_command.moc"
