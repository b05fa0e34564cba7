// The [hardening] kill test: a run SIGKILLed at random moments, many of them inside checkpoint writes, always
// resumes from its last complete checkpoint and ends with the per-step losses of an uninterrupted run.
//
// Kill moments are drawn from a seeded RNG (printed; STUDIO_KILL_SEED=<seed> replays a run's plan, though the exact
// instant a kill lands still depends on the machine's timing). Most kills wait for a random training step's
// progress line and then a random fraction of a step: that line is printed just before the step's checkpoint is
// written, so those kills land before, inside or just after the write. Some land at a random moment of start-up
// (loading the corpus, the checkpoint, the model). Every fourth kill is aimed at a write: it watches for that step's
// staging folder and strikes once the folder holds a chosen number of entries, so the count of kills inside a write
// does not hang on how long a write takes on the machine. STUDIO_KILLS=<n> asks for more than the default 20.
//
// A kill "inside a checkpoint write" is one after which the run left a staging folder (checkpoints/.<name>.staging)
// that was not there before it started; a kill "inside a rotation" left a hidden .deleting folder.
#include <QDir>
#include <QElapsedTimer>
#include <QProcess>
#include <QRegularExpression>
#include <QTemporaryDir>
#include <QTest>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <random>
#include <thread>

#include "studio_process.h"

using namespace studio_test;

namespace {

constexpr int64_t kSteps = 150;

json kill_config(const QString & data_dir) {
    json config = small_config("kill", data_dir);
    config["train"]["steps"] = kSteps;
    config["train"]["checkpoint_interval"] = 1;   // every step writes a checkpoint, so kills often land in one
    config["train"]["keep_checkpoints"] = 2;      // and every step deletes one (rotation)
    return config;
}

// A studio --batch process whose progress lines ("[train] step K/N ...") are followed as they arrive.
class Watched {
public:
    Watched(const QString & config, const QString & run_dir, bool resume) {
        QStringList args{"--batch", config, "--run-dir", run_dir};
        if (resume) args << "--resume";
        // One thread: on a loaded 2-core machine OpenMP's spinning threads make step times erratic (and 4x slower).
        process_.setProcessEnvironment(studio_environment({{"OMP_NUM_THREADS", "1"}}));
        process_.setProcessChannelMode(QProcess::MergedChannels); // one pipe: nothing can block on a full other one
        clock_.start();
        process_.start(STUDIO_BINARY, args);
    }
    ~Watched() {
        if (process_.state() != QProcess::NotRunning) {
            process_.kill();
            process_.waitForFinished();
        }
    }

    // Reads output until a progress line for step >= target arrives (true) or the process ends (false).
    bool wait_for_step(int64_t target) {
        while (last_step_ < target) {
            if (process_.state() == QProcess::NotRunning) return false;
            process_.waitForReadyRead(20);
            read();
        }
        return true;
    }
    void finish() {
        process_.waitForFinished(600000);
        read();
    }
    void kill() {
        process_.kill(); // SIGKILL
        finish();
    }
    bool running() const { return process_.state() != QProcess::NotRunning; }
    bool killed() const { return process_.exitStatus() == QProcess::CrashExit; }
    int exit_code() const { return process_.exitStatus() == QProcess::NormalExit ? process_.exitCode() : -1; }
    const QString & output() const { return output_; }
    int64_t last_step() const { return last_step_; }
    qint64 first_step_ms() const { return first_step_ms_; }
    qint64 last_step_ms() const { return last_step_ms_; }
    // The "resuming train at step N from PATH" line, if the run got that far.
    std::optional<std::pair<int64_t, QString>> resumed_from() const {
        static const QRegularExpression re("^resuming train at step (\\d+) from (\\S+)$", QRegularExpression::MultilineOption);
        auto m = re.match(output_);
        if (!m.hasMatch()) return std::nullopt;
        return std::make_pair(m.captured(1).toLongLong(), m.captured(2));
    }

private:
    void read() {
        static const QRegularExpression progress("^\\[train\\] step (\\d+)/");
        pending_ += QString::fromUtf8(process_.readAll());
        int nl;
        while ((nl = pending_.indexOf('\n')) >= 0) {
            const QString line = pending_.left(nl);
            pending_.remove(0, nl + 1);
            output_ += line + "\n";
            auto m = progress.match(line);
            if (!m.hasMatch()) continue;
            last_step_ = m.captured(1).toLongLong();
            last_step_ms_ = clock_.elapsed();
            if (first_step_ms_ < 0) first_step_ms_ = last_step_ms_;
        }
    }

    QProcess process_;
    QElapsedTimer clock_;
    QString output_, pending_;
    int64_t last_step_ = 0;
    qint64 first_step_ms_ = -1, last_step_ms_ = -1;
};

// Hidden entries of checkpoints/ with what they hold (names, sizes, times): a changed signature after a kill means
// the killed run was writing there.
QMap<QString, QString> hidden_entries(const QString & run_dir) {
    QMap<QString, QString> found;
    QDir dir(run_dir + "/checkpoints");
    for (const QFileInfo & entry : dir.entryInfoList(QDir::AllEntries | QDir::Hidden | QDir::NoDotAndDotDot)) {
        if (!entry.fileName().startsWith('.')) continue;
        QString signature;
        for (const QFileInfo & f : QDir(entry.filePath()).entryInfoList(QDir::Files | QDir::Hidden)) {
            signature += f.fileName() + ":" + QString::number(f.size()) + ":" + QString::number(f.lastModified().toMSecsSinceEpoch()) + ";";
        }
        found[entry.fileName()] = signature;
    }
    return found;
}

// Follows <run>/checkpoints/.<train-step>.staging from outside: true once it exists and holds at least `entries`
// entries, false if the process ends or that step's checkpoint (or a later one) is committed first: the write went
// by unseen, and the kill lands wherever the run has got to.
bool wait_inside_write(const QString & run_dir, int64_t step, int entries, const Watched & process) {
    namespace fs = std::filesystem;
    const fs::path staging = studio::checkpoint_staging_dir(run_dir.toStdString(), "train", step);
    QElapsedTimer waited;
    waited.start();
    while (waited.elapsed() < 60000 && process.running()) {
        const auto latest = studio::run_latest_checkpoint(run_dir.toStdString(), "train");
        if (latest && latest->step >= step) return false;
        std::error_code ec;
        int found = 0;
        for (auto it = fs::directory_iterator(staging, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) ++found;
        if (!ec && found >= entries) return true;
    }
    return false;
}

QString all_checkpoints_problem(const QString & run_dir) {
    for (const auto & c : studio::run_list_checkpoints(run_dir.toStdString(), "")) {
        const QString problem = checkpoint_problem(QString::fromStdString(c.path));
        if (!problem.isEmpty()) return problem;
    }
    return {};
}

} // namespace

class TestKill : public QObject {
    Q_OBJECT
    QTemporaryDir dir;

private Q_SLOTS:
    void sigkilled_run_resumes_from_its_last_checkpoint_with_the_same_losses() {
        QElapsedTimer total;
        total.start();
        const QString data = small_wikitext(dir.path());
        QVERIFY(!data.isEmpty());
        const QString config = write_config(dir.path(), kill_config(data));
        const QString reference = dir.path() + "/uninterrupted", run = dir.path() + "/killed";

        // Tokenise the small dataset into the corpus cache first, so the reference measures a start-up like the others.
        QCOMPARE(studio_run({"info", config}).code, 0);
        Watched whole(config, reference, false);
        whole.wait_for_step(kSteps);
        whole.finish();
        QVERIFY2(whole.exit_code() == 0, qPrintable(whole.output()));
        const auto expected = losses(reference, "train");
        QCOMPARE((int64_t) expected.size(), kSteps);
        // Start-up (process start to the first step) and one step with its checkpoint, as this machine runs them now.
        const double startup_ms = (double) whole.first_step_ms();
        const double step_ms = (double) (whole.last_step_ms() - whole.first_step_ms()) / (double) (kSteps - 1);

        const char * seed_env = std::getenv("STUDIO_KILL_SEED");
        const uint64_t seed = seed_env && *seed_env ? std::strtoull(seed_env, nullptr, 10) : std::random_device{}();
        const char * kills_env = std::getenv("STUDIO_KILLS");
        const int wanted = std::max(20, kills_env && *kills_env ? std::atoi(kills_env) : 20);
        qInfo("kill test: seed %llu (STUDIO_KILL_SEED=%llu replays it), %d kills; reference run: start-up %.0f ms, %.1f ms per step",
              (unsigned long long) seed, (unsigned long long) seed, wanted, startup_ms, step_ms);
        std::mt19937_64 rng(seed);
        auto uniform = [&](double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); };

        int kills = 0, in_write = 0, in_rotation = 0, in_startup = 0, aimed_in_write = 0, resumes_checked = 0;
        for (int attempt = 0;; ++attempt) {
            QVERIFY2(attempt < 4 * wanted, "the run makes no progress between kills");
            const auto before = studio::run_latest_checkpoint(run.toStdString(), "train");
            const auto hidden_before = hidden_entries(run);
            Watched w(config, run, attempt > 0);
            // A kill after the final checkpoint would leave nothing to interrupt: the next start just ends.
            if (kills < wanted && !(before && before->step == kSteps)) {
                bool aimed = false;
                const int64_t from = before ? before->step : 0;
                // A write to aim at must come after the resumed run's first commit, which clears what earlier kills
                // left (a leftover staging folder of the same name would be seen before this run writes it).
                const int64_t aim_step = from + 2 + (int64_t) uniform(0, 4);
                if (kills % 4 == 1 && aim_step < kSteps) {
                    QVERIFY2(w.wait_for_step(aim_step), qPrintable("ended before its kill:\n" + w.output()));
                    // From the empty folder up to its third entry (the memory, model and optimizer files come in turn).
                    aimed = true;
                    wait_inside_write(run, aim_step, (int) uniform(0, 4), w);
                } else if (uniform(0, 1) < 0.2) {
                    // Somewhere in start-up: reading the config, the corpus cache, the checkpoint.
                    std::this_thread::sleep_for(std::chrono::microseconds((int64_t) (uniform(0, startup_ms) * 1000)));
                    ++in_startup;
                } else {
                    // A step in the next stretch, sized so that the wanted kills spread over the whole run and the
                    // last one still comes before its end.
                    const int64_t stretch = std::max<int64_t>(1, (kSteps - from) / (wanted - kills + 1));
                    const int64_t target = from + 1 + (int64_t) uniform(0, (double) (2 * stretch - 1));
                    QVERIFY2(w.wait_for_step(std::min(target, kSteps - 1)), qPrintable("ended before its kill:\n" + w.output()));
                    std::this_thread::sleep_for(std::chrono::microseconds((int64_t) (uniform(0, 1.5 * step_ms) * 1000)));
                }
                w.kill();
                QVERIFY2(w.killed(), qPrintable("ended by itself before the kill:\n" + w.output()));
                ++kills;
                const auto hidden_after = hidden_entries(run);
                for (auto it = hidden_after.begin(); it != hidden_after.end(); ++it) {
                    if (hidden_before.value(it.key()) == it.value()) continue;
                    if (it.key().endsWith(".staging")) {
                        ++in_write;
                        if (aimed) ++aimed_in_write;
                    }
                    if (it.key().endsWith(".deleting")) ++in_rotation;
                }
            } else {
                w.finish();
                QVERIFY2(w.exit_code() == 0, qPrintable(w.output()));
            }
            QVERIFY2(!w.output().contains("error"), qPrintable(w.output()));
            // The run continued from the newest checkpoint under a final name (or from scratch without one).
            if (const auto resumed = w.resumed_from()) {
                QVERIFY2(before, qPrintable("resumed without a checkpoint: " + resumed->second));
                QCOMPARE(resumed->first, before->step);
                QCOMPARE(resumed->second, QString::fromStdString(before->path));
                ++resumes_checked;
            } else {
                // Killed before it got that far, or the stage had already finished (its final checkpoint is complete).
                QVERIFY2(!before || w.killed() || before->step == kSteps,
                         qPrintable("did not resume from " + QString::fromStdString(before ? before->path : "") + ":\n" + w.output()));
            }
            // Whatever the kill interrupted, every checkpoint under a final name is whole.
            const QString problem = all_checkpoints_problem(run);
            QVERIFY2(problem.isEmpty(), qPrintable(QString("after kill %1: %2\n%3").arg(kills).arg(problem, w.output())));
            if (!w.killed()) break;
        }

        // The finished run stands on the same losses as the uninterrupted one, step by step.
        const auto got = losses(run, "train");
        QCOMPARE((int64_t) got.size(), kSteps);
        double worst = 0;
        for (const auto & [step, loss] : expected) {
            const double after = got.count(step) ? got.at(step) : NAN;
            const double diff = std::abs(loss - after);
            worst = std::max(worst, diff);
            QVERIFY2(diff <= 1e-6, qPrintable(QString("step %1: %2 uninterrupted, %3 after kills").arg(step).arg(loss, 0, 'g', 17).arg(after, 0, 'g', 17)));
        }
        const double ppl_a = last_valid_ppl(reference), ppl_b = last_valid_ppl(run);
        QVERIFY2(std::abs(ppl_a - ppl_b) <= 1e-6 * ppl_a, qPrintable(QString("valid ppl %1 vs %2").arg(ppl_a).arg(ppl_b)));
        // The last commit cleared every leftover of the killed writes; the final checkpoint is the finished stage's.
        QCOMPARE(hidden_entries(run).keys(), QStringList());
        const auto last = studio::run_latest_checkpoint(run.toStdString(), "train");
        QVERIFY(last && last->step == kSteps);

        qInfo("kill test: %d kills (%d inside a checkpoint write, %d of them aimed there; %d inside a rotation, %d in start-up), "
              "%d resumes checked, largest loss difference %g, %.1f s in all", kills, in_write, aimed_in_write, in_rotation,
              in_startup, resumes_checked, worst, (double) total.elapsed() / 1000.0);
        QVERIFY(kills >= 20);
        QVERIFY2(in_write >= 3, qPrintable(QString("only %1 kills landed inside a checkpoint write").arg(in_write)));
        QVERIFY(resumes_checked >= 10);
    }
};

QTEST_GUILESS_MAIN(TestKill)
#include "test_kill.moc"
