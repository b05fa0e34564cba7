// The studio executable end to end on WikiText-2: exact resume after a stop, config and input errors with their
// exit codes, a non-finite loss, and train -> gate -> prune -> eval with the pruned model's perplexity equal to the
// gated model's.
#include <QCoreApplication>
#include <QDir>
#include <QElapsedTimer>
#include <QFile>
#include <QProcess>
#include <QRegularExpression>
#include <QTemporaryDir>
#include <QTest>

#include <cmath>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "events.h"
#include "studio_process.h"

using nlohmann::json;
using namespace studio_test;

namespace {

// 20 steps without dropout: N ranks with B/N rows each must then follow one rank with B rows.
json ranks_config() {
    json config = tiny_config("ranks");
    config["train"]["steps"] = 20;
    config["train"]["checkpoint_interval"] = 10;
    for (const char * p : {"attn_drop", "proj_drop", "input_drop", "output_drop", "word_drop"}) config["model"][p] = 0.0;
    return config;
}

// Two ranks of one run started by hand with torchrun's variables (not studio's own spawner).
void start_two_ranks(QProcess (&ranks)[2], const QString & config, const QString & run_dir, const QString & port) {
    for (int r = 0; r < 2; ++r) {
        auto env = QProcessEnvironment::systemEnvironment();
        env.insert("STUDIO_DATA", STUDIO_TEST_DATA);
        env.insert("RANK", QString::number(r));
        env.insert("LOCAL_RANK", QString::number(r));
        env.insert("WORLD_SIZE", "2");
        env.insert("MASTER_ADDR", "127.0.0.1");
        env.insert("MASTER_PORT", port);
        ranks[r].setProcessEnvironment(env);
        ranks[r].start(STUDIO_BINARY, {"--batch", config, "--run-dir", run_dir, "--no-progress"});
    }
}

} // namespace

class TestPipeline : public QObject {
    Q_OBJECT
    QTemporaryDir dir;

private Q_SLOTS:
    void info_prints_the_reference_counts() {
        auto r = studio_run({"info", STUDIO_SOURCE_DIR "/configs/wt103_all_16l_train.json"});
        QCOMPARE(r.code, 0);
        QVERIFY(r.out.contains("transformer layers         54,567,040"));
        QVERIFY(r.out.contains("total                      74,170,642"));
        auto j = studio_run({"info", STUDIO_SOURCE_DIR "/configs/wt103_txl_16l_train.json", "--json"});
        auto info = json::parse(j.out.toStdString());
        QCOMPARE(info["params_layers"].get<int64_t>(), int64_t(54607872));
        QCOMPARE(info["params_total"].get<int64_t>(), int64_t(73951378));
        auto no_config = studio_run({"info", dir.path()});
        QCOMPARE(no_config.code, 2);
        QCOMPARE(no_config.err.trimmed(), "info error: " + dir.path() + " has no config.json (name a config file, a run folder or a pruned/ folder)");
    }

    void bad_input_stops_before_work() {
        json bad = tiny_config("bad");
        bad["model"]["num_heads"] = 3;
        auto r = studio_run({"--batch", write_config(dir.path(), bad), "--run-dir", dir.path() + "/bad"});
        QCOMPARE(r.code, 2);
        QCOMPARE(r.err.trimmed(), QString("config error: model.num_heads: 3 does not divide hidden_dim 16"));
        QVERIFY(!QDir(dir.path() + "/bad").exists());

        json missing = tiny_config("nodata");
        missing["data"] = {{"dir", "/nonexistent"}};
        r = studio_run({"--batch", write_config(dir.path(), missing)});
        QCOMPARE(r.code, 2);
        QCOMPARE(r.err.trimmed(), QString("config error: data.dir: dataset folder /nonexistent/wikitext-2 does not exist (set data.dir or $STUDIO_DATA; scripts/fetch-wikitext.sh downloads WikiText)"));

        json gpu = tiny_config("gpu");
        gpu["device"] = "cuda";
        r = studio_run({"--batch", write_config(dir.path(), gpu)});
        QCOMPARE(r.code, 2);
        QVERIFY(r.err.startsWith("config error: device: \"cuda\" was asked for but this build or machine has no CUDA GPU"));

        json vocab = tiny_config("vocab");
        vocab["model"]["vocab_size"] = 267735;
        vocab["model"]["cutoffs"] = {20000, 40000};
        r = studio_run({"--batch", write_config(dir.path(), vocab), "--run-dir", dir.path() + "/vocab"});
        QCOMPARE(r.code, 2);
        QVERIFY2(r.err.startsWith("config error: model.vocab_size: 267735 does not match the 33278-word vocabulary of"), qPrintable(r.err));

        // A run folder given as the config: the line says how to continue a run; a parse error is bad input too.
        r = studio_run({"--batch", dir.path()});
        QCOMPARE(r.code, 2);
        QCOMPARE(r.err.split('\n').first(), "--batch: " + dir.path() + " is a folder; give a config file (to continue a run: --batch "
                                             "RUN/config.json --run-dir RUN --resume)");

        r = studio_run({"validate", write_config(dir.path(), bad)});
        QCOMPARE(r.code, 2);
        r = studio_run({"validate", write_config(dir.path(), tiny_config("good"))});
        QCOMPARE(r.code, 0);
    }

    void stopped_run_resumes_exactly() {
        const QString config = write_config(dir.path(), tiny_config("resume"));
        const QString whole = dir.path() + "/whole", split = dir.path() + "/split";
        QCOMPARE(studio_run({"--batch", config, "--run-dir", whole, "--no-progress"}).code, 0);
        auto stopped = studio_run({"--batch", config, "--run-dir", split, "--no-progress"}, {{"STUDIO_STOP_AT_STEP", "6"}});
        QCOMPARE(stopped.code, 3);
        QVERIFY(stopped.err.contains("--resume"));
        // Without --resume the run directory is protected.
        auto refused = studio_run({"--batch", config, "--run-dir", split});
        QCOMPARE(refused.code, 2);
        QVERIFY(refused.err.contains("already holds a run; pass --resume"));
        QCOMPARE(studio_run({"--batch", config, "--run-dir", split, "--resume", "--no-progress"}).code, 0);
        auto a = losses(whole, "train"), b = losses(split, "train");
        QCOMPARE((int) a.size(), 12);
        QCOMPARE((int) b.size(), 12);
        for (auto & [step, loss] : a) QVERIFY2(std::abs(loss - b[step]) <= 1e-6, qPrintable(QString("step %1: %2 vs %3").arg(step).arg(loss).arg(b[step])));
        // And the end states agree: the same validation perplexity.
        double ppl_a = 0, ppl_b = 0;
        for (auto & e : studio::events_read_all((whole + "/events.jsonl").toStdString())) if (e["event"] == "eval") ppl_a = e["ppl"];
        for (auto & e : studio::events_read_all((split + "/events.jsonl").toStdString())) if (e["event"] == "eval") ppl_b = e["ppl"];
        QVERIFY(std::abs(ppl_a - ppl_b) <= 1e-6 * ppl_a);
    }

    // A stop that comes between stages: after the last one the run is whole (exit 0, run_end ok); before another
    // the run stops, and its resume runs only what is left, no finished stage twice.
    void stop_between_stages() {
        json config = tiny_config("between");
        config["stages"] = {"train", "gate", "prune", "eval"};
        config["gate"] = {{"steps", 4}, {"l0_coefficient", 0.5}, {"log_interval", 2}, {"optimizer", {{"lr", 0.01}}}};
        const QString path = write_config(dir.path(), config), run = dir.path() + "/between";
        auto stopped = studio_run({"--batch", path, "--run-dir", run, "--no-progress"}, {{"STUDIO_STOP_AFTER_STAGE", "prune"}});
        QVERIFY2(stopped.code == 3, qPrintable(stopped.err));
        QCOMPARE(count_events(run, "prune"), 1);
        QCOMPARE(count_events(run, "eval", "eval"), 0);
        auto resumed = studio_run({"--batch", path, "--run-dir", run, "--resume", "--no-progress"}, {{"STUDIO_STOP_AFTER_STAGE", "eval"}});
        QVERIFY2(resumed.code == 0, qPrintable(resumed.err));
        QVERIFY2(resumed.err.contains("prune: finished before from this checkpoint, skipped"), qPrintable(resumed.err));
        QCOMPARE(count_events(run, "prune"), 1);
        QCOMPARE(count_events(run, "eval", "eval"), 2);   // the gated and the pruned model, valid split
        std::vector<std::string> ends;
        for (auto & e : studio::events_read_all((run + "/events.jsonl").toStdString()))
            if (e["event"] == "run_end") ends.push_back(e["status"].get<std::string>());
        QCOMPARE(ends, (std::vector<std::string>{"stopped", "ok"}));
        // Resuming the whole run again repeats nothing.
        auto again = studio_run({"--batch", path, "--run-dir", run, "--resume", "--no-progress"});
        QVERIFY2(again.code == 0, qPrintable(again.err));
        QCOMPARE(count_events(run, "prune"), 1);
        QCOMPARE(count_events(run, "eval", "eval"), 2);
    }

    void two_gloo_ranks_follow_one_rank() {
        // Ranks started by hand with torchrun's variables (not studio's own spawner), batch 4 split 2 + 2.
        json config = ranks_config();
        const QString path = write_config(dir.path(), config);
        const QString one = dir.path() + "/one-rank", two = dir.path() + "/two-ranks";
        QCOMPARE(studio_run({"--batch", path, "--run-dir", one, "--no-progress"}).code, 0);
        const QString port = QString::number(29600 + (QCoreApplication::applicationPid() % 300));
        QProcess ranks[2];
        start_two_ranks(ranks, path, two, port);
        for (auto & p : ranks) {
            QVERIFY(p.waitForFinished(300000));
            QVERIFY2(p.exitCode() == 0, p.readAllStandardError().constData());
        }
        auto a = losses(one, "train"), b = losses(two, "train");
        QCOMPARE((int) b.size(), 20);
        for (auto & [step, loss] : a) QVERIFY2(std::abs(loss - b[step]) <= 1e-5, qPrintable(QString("step %1: %2 vs %3").arg(step).arg(loss).arg(b[step])));

        // "gpus": 2 on the CPU: studio starts both ranks itself, with the same result.
        config["gpus"] = 2;
        const QString spawned = dir.path() + "/spawned";
        auto r = studio_run({"--batch", write_config(dir.path(), config), "--run-dir", spawned, "--no-progress"});
        QVERIFY2(r.code == 0, qPrintable(r.err));
        auto c = losses(spawned, "train");
        for (auto & [step, loss] : a) QVERIFY2(std::abs(loss - c[step]) <= 1e-5, qPrintable(QString("spawned step %1").arg(step)));

        // And four ranks of one row each ([scale-8gpu] as far as CPUs go: the same code splits the batch 4 ways).
        config["gpus"] = 4;
        const QString four = dir.path() + "/four-ranks";
        r = studio_run({"--batch", write_config(dir.path(), config), "--run-dir", four, "--no-progress"});
        QVERIFY2(r.code == 0, qPrintable(r.err));
        auto f = losses(four, "train");
        QCOMPARE((int) f.size(), 20);
        for (auto & [step, loss] : a) QVERIFY2(std::abs(loss - f[step]) <= 1e-5, qPrintable(QString("4 ranks, step %1: %2 vs %3").arg(step).arg(loss).arg(f[step])));
    }

    void resume_with_another_world_size() {
        // 2 ranks stop at step 10 and 1 rank finishes, and the other way round; the memory rows are re-cut, so every
        // step still follows the single-rank run of two_gloo_ranks_follow_one_rank (dropout off).
        json config = ranks_config();
        const QString one = dir.path() + "/one-rank";
        if (!QFile::exists(one + "/events.jsonl")) QCOMPARE(studio_run({"--batch", write_config(dir.path(), config), "--run-dir", one, "--no-progress"}).code, 0);
        auto a = losses(one, "train");
        for (const auto & [first, second] : {std::make_pair(2, 1), std::make_pair(1, 2)}) {
            const QString run = dir.path() + QString("/resize-%1-%2").arg(first).arg(second);
            config["gpus"] = first;
            auto stopped = studio_run({"--batch", write_config(dir.path(), config), "--run-dir", run, "--no-progress"}, {{"STUDIO_STOP_AT_STEP", "10"}});
            QVERIFY2(stopped.code == 3, qPrintable(stopped.err));
            config["gpus"] = second;
            auto resumed = studio_run({"--batch", write_config(dir.path(), config), "--run-dir", run, "--resume", "--no-progress"});
            QVERIFY2(resumed.code == 0, qPrintable(resumed.err));
            auto d = losses(run, "train");
            QCOMPARE((int) d.size(), 20);
            for (auto & [step, loss] : a) {
                QVERIFY2(std::abs(loss - d[step]) <= 1e-5, qPrintable(QString("%1 -> %2 ranks, step %3: %4 vs %5").arg(first).arg(second).arg(step).arg(loss).arg(d[step])));
            }
        }
    }

    void a_dead_rank_stops_the_others() {
        json config = tiny_config("killed");
        config["train"]["steps"] = 100000;
        config["train"]["checkpoint_interval"] = 5;
        const QString path = write_config(dir.path(), config), run = dir.path() + "/killed";
        const QString port = QString::number(29900 + (QCoreApplication::applicationPid() % 90));
        QProcess ranks[2];
        start_two_ranks(ranks, path, run, port);
        QTRY_VERIFY_WITH_TIMEOUT(QDir(run + "/checkpoints").entryList({"train-*"}, QDir::Dirs).size() >= 2, 120000);
        ranks[1].kill();   // SIGKILL: no chance to say goodbye
        QElapsedTimer timer;
        timer.start();
        QVERIFY(ranks[0].waitForFinished(60000));
        QVERIFY(timer.elapsed() < 60000);
        QCOMPARE(ranks[0].exitCode(), 1);
        const QString err = QString::fromUtf8(ranks[0].readAllStandardError());
        QVERIFY2(err.contains("error: distributed: rank 0 lost contact with the other ranks"), qPrintable(err));
        // The last complete checkpoint is intact: every file its manifest names is there.
        const auto left = QDir(run + "/checkpoints").entryList({"train-*"}, QDir::Dirs, QDir::Name);
        QVERIFY(!left.isEmpty());
        const QString last = run + "/checkpoints/" + left.last();
        auto state = json::parse(std::ifstream((last + "/state.json").toStdString()));
        for (auto it = state["manifest"].begin(); it != state["manifest"].end(); ++it) QVERIFY(QFile::exists(last + "/" + QString::fromStdString(it.key())));
    }

    void bench_train_measures_both_variants() {
        json config = tiny_config("train-bench");
        config["model"]["vocab_size"] = 200;
        config["model"]["cutoffs"] = {50, 100};
        config["bench"] = {{"batch_sizes", {2}}, {"devices", {"cpu"}}, {"dtypes", {"fp32"}}, {"steps", 2}, {"warmup", 1}, {"repetitions", 2}};
        const QString path = write_config(dir.path(), config), out = dir.path() + "/train-bench";
        auto r = studio_run({"bench", "--train", path, "--out", out, "-o", "csv"});
        QVERIFY2(r.code == 0, qPrintable(r.err));
        const QStringList lines = r.out.trimmed().split('\n');
        QCOMPARE(lines.size(), 3);
        QVERIFY(lines[1].startsWith("ungated,2,8,8,fp32,cpu,"));
        QVERIFY(lines[2].startsWith("gated,2,8,8,fp32,cpu,"));
        for (const char * f : {"/train-bench.md", "/train-bench.csv", "/train-bench.json"}) QVERIFY(QFile::exists(out + f));
    }

    void bench_refuses_bad_input_before_work() {
        json config = tiny_config("bench-refusals");
        config["model"]["vocab_size"] = 200;
        config["model"]["cutoffs"] = {50, 100};
        const QString path = write_config(dir.path(), config);
        auto bad = studio_run({"bench", "--train", path, "--train-variants", "masked"});
        QCOMPARE(bad.code, 2);
        QCOMPARE(bad.err.trimmed(), QString("bench error: --train-variants: \"masked\" is not one of ungated, gated"));
        const QString not_a_run = dir.path() + "/not-a-run";
        QVERIFY(QDir().mkpath(not_a_run));
        auto no_run = studio_run({"bench", not_a_run});
        QCOMPARE(no_run.code, 2);
        QCOMPARE(no_run.err.trimmed(), "bench error: " + not_a_run + " has no config.json (name a run folder or a config file)");
        auto zero_batch = studio_run({"bench", path, "--batch-sizes", "4,0"});
        QCOMPARE(zero_batch.code, 2);
        QCOMPARE(zero_batch.err.trimmed(), QString("config error: bench.batch_sizes: every batch size must be at least 1"));
        // This CPU LibTorch has no CUDA: a GPU asked for stops before any work, naming the fix.
        auto no_gpu = studio_run({"bench", path, "--devices", "cuda"});
        QCOMPARE(no_gpu.code, 2);
        QCOMPARE(no_gpu.err.trimmed(), QString("bench error: devices: \"cuda\" was asked for (--devices or the config's bench.devices) but "
                                               "this build or machine has no CUDA GPU; use --devices cpu"));
    }

    void non_finite_loss_stops_with_the_step() {
        json config = tiny_config("nan");
        config["train"]["optimizer"] = {{"name", "adam"}, {"lr", 1e30}};
        config["train"]["schedule"] = {{"name", "constant"}};
        config["train"]["clip_grad_norm"] = 0;
        auto r = studio_run({"--batch", write_config(dir.path(), config), "--run-dir", dir.path() + "/nan", "--no-progress"});
        QCOMPARE(r.code, 1);
        const QRegularExpression message("error: train: loss or gradient is not finite at step (\\d+) \\(last good checkpoint: .*\\); lower the learning rate");
        const auto at_once = message.match(r.err);
        QVERIFY2(at_once.hasMatch(), qPrintable(r.err));
        bool error_event = false;
        for (auto & e : studio::events_read_all((dir.path() + "/nan/events.jsonl").toStdString())) {
            if (e["event"] == "run_end") QCOMPARE(e["status"].get<std::string>(), std::string("error"));
            if (e["event"] == "error") error_event = true;
        }
        QVERIFY(error_event);

        // Between log lines the host judges each step a step later (the GPU keeps one queued): the same step is named.
        config["name"] = "nan-late";
        config["train"]["log_interval"] = 5;
        auto late = studio_run({"--batch", write_config(dir.path(), config), "--run-dir", dir.path() + "/nan-late", "--no-progress"});
        QCOMPARE(late.code, 1);
        const auto judged_late = message.match(late.err);
        QVERIFY2(judged_late.hasMatch(), qPrintable(late.err));
        QCOMPARE(judged_late.captured(1), at_once.captured(1));

        // nan_policy "skip": every non-finite step is reported once, by its own number, the last one after the loop.
        config["name"] = "nan-skip";
        config["train"]["nan_policy"] = "skip";
        auto skipped = studio_run({"--batch", write_config(dir.path(), config), "--run-dir", dir.path() + "/nan-skip", "--no-progress"});
        QVERIFY2(skipped.code == 0, qPrintable(skipped.err));
        std::vector<int64_t> skipped_steps;
        for (auto & e : studio::events_read_all((dir.path() + "/nan-skip/events.jsonl").toStdString())) {
            if (e["event"] != "error") continue;
            skipped_steps.push_back(e["step"].get<int64_t>());
            QCOMPARE(e["message"].get<std::string>(), "non-finite loss or gradient at step " + std::to_string(skipped_steps.back()) + "; step skipped");
        }
        QVERIFY(!skipped_steps.empty());
        QCOMPARE(QString::number(skipped_steps.front()), at_once.captured(1));
        for (size_t i = 1; i < skipped_steps.size(); ++i) QCOMPARE(skipped_steps[i], skipped_steps[i - 1] + 1);
        QCOMPARE(skipped_steps.back(), int64_t(11));   // the last of the 12 steps, judged after the loop
    }

    void train_gate_prune_eval() {
        json config = tiny_config("gated");
        config["stages"] = {"train", "gate", "prune", "eval"};
        config["train"]["checkpoint_interval"] = 0;
        config["gate"] = {{"steps", 30}, {"l0_coefficient", 0.5}, {"l0_warmup", 5}, {"l0_unit", "steps"}, {"log_interval", 5},
                          {"gates_interval", 10}, {"optimizer", {{"lr", 0.01}}}};
        const QString run = dir.path() + "/gated";
        auto r = studio_run({"--batch", write_config(dir.path(), config), "--run-dir", run, "--no-progress"});
        QVERIFY2(r.code == 0, qPrintable(r.err));
        std::map<std::string, double> ppl;
        json prune;
        int gates_events = 0;
        for (auto & e : studio::events_read_all((run + "/events.jsonl").toStdString())) {
            if (e["event"] == "eval" && e["stage"] == "eval") ppl[e["model"].get<std::string>()] = e["ppl"];
            if (e["event"] == "prune") prune = e;
            if (e["event"] == "gates") {
                ++gates_events;
                QCOMPARE((int) e["log_alpha"].size(), 2);
                QCOMPARE((int) e["p_open"][1].size(), 2);
            }
            if (e["event"] == "train" && e["stage"] == "gate") {
                QVERIFY(e.contains("expected_sparsity") && e.contains("hard_sparsity") && e["l0"].get<double>() > 0);
            }
        }
        QVERIFY(gates_events >= 3);
        QVERIFY(ppl.count("gated") && ppl.count("pruned"));
        QVERIFY2(std::abs(ppl["gated"] - ppl["pruned"]) <= 1e-4 * ppl["gated"], qPrintable(QString("%1 vs %2").arg(ppl["gated"]).arg(ppl["pruned"])));
        QVERIFY(prune["layer_params_after"].get<int64_t>() <= prune["layer_params_before"].get<int64_t>());
        QVERIFY(QFile::exists(run + "/pruned/model.safetensors"));
        QVERIFY(QFile::exists(run + "/pruned/heads.json"));
        // studio info on the pruned folder counts the smaller model.
        auto info = json::parse(studio_run({"info", run + "/pruned", "--json"}).out.toStdString());
        QCOMPARE(info["params_layers"].get<int64_t>(), prune["layer_params_after"].get<int64_t>());
        // studio prune gives the same model from the run folder.
        auto again = studio_run({"prune", run, "--out", dir.path() + "/pruned-again"});
        QCOMPARE(again.code, 0);
        QFile a(run + "/pruned/model.safetensors"), b(dir.path() + "/pruned-again/model.safetensors");
        QVERIFY(a.open(QIODevice::ReadOnly) && b.open(QIODevice::ReadOnly));
        QCOMPARE(a.readAll(), b.readAll());
    }
};

QTEST_GUILESS_MAIN(TestPipeline)
#include "test_pipeline.moc"
