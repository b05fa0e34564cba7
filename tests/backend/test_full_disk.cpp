// The [hardening] full-disk test: a run whose second checkpoint does not fit on its disk (a small tmpfs) stops with
// one line naming the file and the full disk, keeps its last complete checkpoint intact and leaves no half-written
// staging folder; once there is room again, --resume continues it to the losses of an uninterrupted run.
//
// Mounting needs root (CI runs as root). Without root, or where mount fails (a container without CAP_SYS_ADMIN), the
// test is skipped with the reason; ctest reports it as skipped (SKIP_REGULAR_EXPRESSION in CMakeLists.txt), never
// as passed.
#include <QDir>
#include <QProcess>
#include <QRegularExpression>
#include <QTemporaryDir>
#include <QTest>

#include <unistd.h>

#include "studio_process.h"

using namespace studio_test;

namespace {

// A tmpfs mounted for the life of this object.
class SmallDisk {
public:
    explicit SmallDisk(QString path) : path_(std::move(path)) { QDir().mkpath(path_); }
    ~SmallDisk() {
        if (mounted_ && !run({"umount", path_})) run({"umount", "-l", path_});
    }
    // Empty on success, else why not.
    // inodes: how many files and folders it holds, its own root included (0: the tmpfs default).
    QString mount(qint64 bytes, qint64 inodes = 0) {
        QString why;
        QString options = "size=" + QString::number(bytes);
        if (inodes > 0) options += ",nr_inodes=" + QString::number(inodes);
        if (!run({"mount", "-t", "tmpfs", "-o", options, "tmpfs", path_}, &why)) return why;
        mounted_ = true;
        return {};
    }
    QString resize(qint64 bytes) {
        QString why;
        return run({"mount", "-o", "remount,size=" + QString::number(bytes), path_}, &why) ? QString() : why;
    }

private:
    static bool run(const QStringList & command, QString * why = nullptr) {
        QProcess p;
        p.setProcessChannelMode(QProcess::MergedChannels);
        p.start(command[0], command.mid(1));
        const bool ok = p.waitForFinished(30000) && p.exitStatus() == QProcess::NormalExit && p.exitCode() == 0;
        if (!ok && why) *why = command.join(' ') + ": " + (p.error() == QProcess::FailedToStart ? QString("cannot start it") : QString::fromUtf8(p.readAll()).trimmed());
        return ok;
    }
    QString path_;
    bool mounted_ = false;
};

// A folder and everything under it, counted as a file system counts inodes.
qint64 entries_under(const QString & folder) {
    qint64 n = 1;
    for (const QFileInfo & f : QDir(folder).entryInfoList(QDir::AllEntries | QDir::Hidden | QDir::NoDotAndDotDot)) {
        n += f.isDir() ? entries_under(f.filePath()) : 1;
    }
    return n;
}

// What a folder's files take on a tmpfs: whole pages.
qint64 disk_usage(const QString & folder) {
    qint64 bytes = 0;
    for (const QFileInfo & f : QDir(folder).entryInfoList(QDir::Files | QDir::Hidden)) bytes += (f.size() + 4095) / 4096 * 4096;
    return bytes;
}

} // namespace

class TestFullDisk : public QObject {
    Q_OBJECT
    QTemporaryDir dir;

private Q_SLOTS:
    void full_disk_keeps_the_last_checkpoint_and_resume_continues() {
        if (::geteuid() != 0) QSKIP("needs root to mount a small tmpfs (CI runs as root)");
        const QString data = small_wikitext(dir.path());
        QVERIFY(!data.isEmpty());
        json c = small_config("disk", data);
        c["train"]["keep_checkpoints"] = 1;   // the old checkpoint goes only once the new one is complete
        const QString config = write_config(dir.path(), c);

        // The uninterrupted run: the losses to reach, and the size of one checkpoint.
        const QString reference = dir.path() + "/reference";
        auto whole = studio_run({"--batch", config, "--run-dir", reference, "--no-progress"});
        QVERIFY2(whole.code == 0, qPrintable(whole.err));
        const qint64 checkpoint = disk_usage(reference + "/checkpoints/train-00000012");
        QVERIFY2(checkpoint > 100000, qPrintable(QString::number(checkpoint)));

        // Room for config.json, events.jsonl and one checkpoint and a half: step 4's checkpoint fits, step 8's does not.
        SmallDisk disk(dir.path() + "/disk");
        const QString mount_error = disk.mount(checkpoint * 3 / 2 + 64 * 1024);
        if (!mount_error.isEmpty()) QSKIP(qPrintable("cannot mount a tmpfs here: " + mount_error));
        const QString run = dir.path() + "/disk/run", checkpoints = run + "/checkpoints";

        auto full = studio_run({"--batch", config, "--run-dir", run, "--no-progress"});
        QCOMPARE(full.code, 1);
        const QString expected = QString("error: checkpoint train-00000008 not saved: cannot write %1/.train-00000008.staging/"
                                         "(model|optimizer|memory-rank0).safetensors \\([0-9.]+ MB\\): no space left on device; free "
                                         "space on that disk; the last complete checkpoint %1/train-00000004 is intact: continue "
                                         "from it with --resume").arg(QRegularExpression::escape(checkpoints));
        QVERIFY2(QRegularExpression("^" + expected + "$").match(full.err.trimmed()).hasMatch(), qPrintable(full.err));
        // The complete checkpoint is untouched, and nothing half-written is left to be mistaken for one.
        QCOMPARE(QDir(checkpoints).entryList(QDir::AllEntries | QDir::Hidden | QDir::NoDotAndDotDot), QStringList{"train-00000004"});
        QCOMPARE(checkpoint_problem(checkpoints + "/train-00000004"), QString());
        // The run's history says how it ended (the space the failed checkpoint took is free again).
        auto events = studio::events_read_all((run + "/events.jsonl").toStdString());
        QVERIFY(events.size() >= 2);
        QCOMPARE(events[events.size() - 2]["event"].get<std::string>(), std::string("error"));
        QCOMPARE(QString::fromStdString(events[events.size() - 2]["message"].get<std::string>()), full.err.trimmed().mid(7));
        QCOMPARE(events.back()["status"].get<std::string>(), std::string("error"));
        QCOMPARE(events.back()["step"].get<int64_t>(), int64_t(4));   // where --resume continues

        // With room again, the run continues from step 4 and ends where the uninterrupted one did.
        const QString resize_error = disk.resize(checkpoint * 4 + 64 * 1024);
        QVERIFY2(resize_error.isEmpty(), qPrintable(resize_error));
        auto resumed = studio_run({"--batch", config, "--run-dir", run, "--resume", "--no-progress"});
        QVERIFY2(resumed.code == 0, qPrintable(resumed.err));
        QVERIFY2(resumed.err.contains("resuming train at step 4 from " + checkpoints + "/train-00000004\n"), qPrintable(resumed.err));
        const auto a = losses(reference, "train"), b = losses(run, "train");
        QCOMPARE((int) b.size(), 12);
        for (const auto & [step, loss] : a) QVERIFY2(std::abs(loss - b.at(step)) <= 1e-6, qPrintable(QString("step %1").arg(step)));
        QCOMPARE(checkpoint_problem(checkpoints + "/train-00000012"), QString());
        QCOMPARE(QDir(checkpoints).entryList(QDir::AllEntries | QDir::Hidden | QDir::NoDotAndDotDot), QStringList{"train-00000012"});
    }

    // Room for the bytes but not for one more folder: the run holds as many files and folders with one checkpoint as
    // at its end, so a disk of exactly that many inodes (plus its root) has none for step 8's staging folder.
    void no_inode_for_the_staging_folder_says_so() {
        if (::geteuid() != 0) QSKIP("needs root to mount a small tmpfs (CI runs as root)");
        const QString data = small_wikitext(dir.path());
        QVERIFY(!data.isEmpty());
        json c = small_config("inodes", data);
        c["train"]["keep_checkpoints"] = 1;
        const QString config = write_config(dir.path(), c);
        const QString reference = dir.path() + "/reference-inodes";
        auto whole = studio_run({"--batch", config, "--run-dir", reference, "--no-progress"});
        QVERIFY2(whole.code == 0, qPrintable(whole.err));

        SmallDisk disk(dir.path() + "/few-inodes");
        const QString mount_error = disk.mount(64 << 20, 1 + entries_under(reference));
        if (!mount_error.isEmpty()) QSKIP(qPrintable("cannot mount a tmpfs here: " + mount_error));
        const QString run = dir.path() + "/few-inodes/run", checkpoints = run + "/checkpoints";
        auto full = studio_run({"--batch", config, "--run-dir", run, "--no-progress"});
        QCOMPARE(full.code, 1);
        QCOMPARE(full.err.trimmed(), QString("error: checkpoint train-00000008 not saved: cannot create %1/.train-00000008.staging: no space "
                                             "left on device; free space on that disk; the last complete checkpoint %1/train-00000004 is "
                                             "intact: continue from it with --resume").arg(checkpoints));
        QCOMPARE(QDir(checkpoints).entryList(QDir::AllEntries | QDir::Hidden | QDir::NoDotAndDotDot), QStringList{"train-00000004"});
        auto events = studio::events_read_all((run + "/events.jsonl").toStdString());
        QCOMPARE(events.back()["status"].get<std::string>(), std::string("error"));
        QCOMPARE(events.back()["step"].get<int64_t>(), int64_t(4));
    }
};

QTEST_GUILESS_MAIN(TestFullDisk)
#include "test_full_disk.moc"
