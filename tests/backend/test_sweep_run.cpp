// Sweeps end to end with the studio executable on tiny models: a gate sweep from a trained run (stopped, resumed,
// skipped when done), a Transformer-XL sweep with a failing point, and scripts/results.py's table, CSV and
// `studio plot-sweep`'s headless PNG from their outputs.
#include <QCoreApplication>
#include <QDir>
#include <QFile>
#include <QProcess>
#include <QStandardPaths>
#include <QTemporaryDir>
#include <QTest>

#include <map>
#include <vector>

#include <nlohmann/json.hpp>

#include "events.h"
#include "studio_process.h"

using nlohmann::json;
using namespace studio_test;

namespace {

// A config whose train stage makes the base model that the sweeps below gate.
json trained_base(const std::string & name, const std::string & type, const QString & data) {
    json config = tiny_config(name);
    config["data"] = {{"dir", data.toStdString()}};
    config["model"]["type"] = type;
    config["stages"] = {"train", "eval"};
    config["train"]["checkpoint_interval"] = 0;
    config["eval"]["splits"] = {"valid", "test"};
    return config;
}

} // namespace

class TestSweepRun : public QObject {
    Q_OBJECT
    QTemporaryDir dir;

private Q_SLOTS:
    // A sweep of the gate stage from one trained run: each l0 coefficient in its own run directory, a row each in
    // sweep.json and sweep.md. Stopped inside the first point, it stops; --resume finishes that point from its
    // checkpoint, runs the second, and a third call skips both.
    void sweep_gates_a_trained_run() {
        const QString data = small_wikitext(dir.path(), 3000, 300), trained = dir.path() + "/all-base";
        QVERIFY(!data.isEmpty());
        auto r = studio_run({"--batch", write_config(dir, trained_base("all-base", "all_attention", data)), "--run-dir", trained, "--no-progress"});
        QVERIFY2(r.code == 0, qPrintable(r.err));

        json config = tiny_config("gates");
        config["data"] = {{"dir", data.toStdString()}};
        config["stages"] = {"gate", "prune", "eval", "bench"};
        // Adam: LAMB scales each step by the gate vector's norm, so gates shrink towards 0 but take long to cross it.
        config["gate"] = {{"checkpoint", trained.toStdString()}, {"steps", 10}, {"l0_warmup", 2}, {"l0_unit", "steps"}, {"log_interval", 5},
                          {"gates_interval", 5}, {"optimizer", {{"name", "adam"}, {"lr", 0.05}}}};
        config["eval"]["splits"] = {"valid", "test"};
        config["bench"] = {{"batch_sizes", {2}}, {"variants", {"dense", "pruned"}}, {"steps", 2}, {"warmup", 0}, {"repetitions", 1}};
        config["sweep"] = {{"gate.l0_coefficient", {0.0, 2.0}}};
        const QString path = write_config(dir, config), root = dir.path() + "/gates";
        const QString first = root + "/gates-l0_coefficient-0.0", second = root + "/gates-l0_coefficient-2.0";

        r = studio_run({"validate", path});
        QVERIFY2(r.code == 0, qPrintable(r.err));
        r = studio_run({"--batch", path, "--run-dir", root, "--no-progress"}, {{"STUDIO_STOP_AT_STEP", "4"}});
        QCOMPARE(r.code, 3);
        QVERIFY2(r.err.contains("continue with: studio --batch " + path + " --run-dir " + root + " --resume"), qPrintable(r.err));
        json summary = read_json(root + "/sweep.json");
        JSON_COMPARE(summary["status"], json("stopped"));
        JSON_COMPARE(summary["points"][0]["status"], json("stopped"));
        JSON_COMPARE(summary["points"][0]["exit_code"], json(3));
        JSON_COMPARE(summary["points"][1]["status"], json("pending"));
        QVERIFY(!QDir(second).exists());

        r = studio_run({"--batch", path, "--run-dir", root});
        QCOMPARE(r.code, 2);
        QCOMPARE(r.err.trimmed(), "run error: " + root + " already holds a sweep; pass --resume to continue it, or choose another --run-dir or name");

        r = studio_run({"--batch", path, "--run-dir", root, "--resume", "--no-progress"});
        QVERIFY2(r.code == 0, qPrintable(r.err));
        QCOMPARE(count_events(first, "run_start"), 2);   // resumed, not restarted
        QCOMPARE(count_events(second, "run_start"), 1);
        std::vector<int64_t> gate_starts;
        for (const auto & e : studio::events_read_all((first + "/events.jsonl").toStdString())) {
            if (e["event"] == "stage_start" && e["stage"] == "gate") gate_starts.push_back(e["resumed_at"].get<int64_t>());
        }
        JSON_COMPARE(json(gate_starts), json({0, 4}));
        summary = read_json(root + "/sweep.json");
        JSON_COMPARE(summary["status"], json("ok"));
        JSON_COMPARE(summary["paths"], json({"gate.l0_coefficient"}));
        QCOMPARE((int) summary["points"].size(), 2);
        std::vector<int64_t> kept;
        for (int i = 0; i < 2; ++i) {
            const json & row = summary["points"][i];
            const QString run = i == 0 ? first : second;
            JSON_COMPARE(row["name"], json(i == 0 ? "gates-l0_coefficient-0.0" : "gates-l0_coefficient-2.0"));
            QCOMPARE(row["values"]["gate.l0_coefficient"].get<double>(), i == 0 ? 0.0 : 2.0);
            JSON_COMPARE(row["status"], json("ok"));
            JSON_COMPARE(row["exit_code"], json(0));
            JSON_COMPARE(row["model_type"], json("all_attention"));
            JSON_COMPARE(row["ppl_model"], json("pruned"));
            // Every number is the point's own, from its events.
            JSON_COMPARE(read_json(run + "/config.json")["gate"]["l0_coefficient"].get<double>(), i == 0 ? 0.0 : 2.0);
            json prune;
            std::map<std::string, double> pruned_ppl;
            json bench_rows;
            for (const auto & e : studio::events_read_all((run + "/events.jsonl").toStdString())) {
                if (e["event"] == "prune") prune = e;
                if (e["event"] == "eval" && e["stage"] == "eval" && e["model"] == "pruned") pruned_ppl[e["split"]] = e["ppl"];
                if (e["event"] == "bench") bench_rows = e["rows"];
            }
            int64_t heads = 0;
            for (auto h : prune["heads_per_layer"]) heads += h.get<int64_t>();
            kept.push_back(heads);
            QCOMPARE(row["heads_kept"].get<int64_t>(), heads);
            QCOMPARE(row["heads_total"].get<int64_t>(), int64_t(4));
            QCOMPARE(row["sparsity"].get<double>(), 1.0 - heads / 4.0);
            JSON_COMPARE(row["layer_params"], prune["layer_params_after"]);
            JSON_COMPARE(row["params_total"], prune["params_after"]);
            QCOMPARE(row["valid_ppl"].get<double>(), pruned_ppl.at("valid"));
            QCOMPARE(row["test_ppl"].get<double>(), pruned_ppl.at("test"));
            QCOMPARE((int) row["bench"].size(), 2);
            JSON_COMPARE(row["speedup"]["speedup"], bench_rows[1]["speedup"]);
            JSON_COMPARE(row["speedup"]["batch"], json(2));
            QVERIFY(row["speedup_b32_bf16"].is_null());   // a CPU bench at batch 2 has no b32 bf16 row
        }
        QVERIFY2(kept[1] < kept[0], qPrintable(QString("l0 2.0 kept %1 heads, l0 0 kept %2").arg(kept[1]).arg(kept[0])));
        const QString md = read_text(root + "/sweep.md");
        QVERIFY2(md.contains("| gates-l0_coefficient-2.0 | 2.0 | ok | " + QString::number(kept[1]) + " / 4 |"), qPrintable(md));

        // Both points done: a third call runs nothing.
        r = studio_run({"--batch", path, "--run-dir", root, "--resume", "--no-progress"});
        QCOMPARE(r.code, 0);
        QCOMPARE(r.err.count("finished before, skipped"), 2);
        QCOMPARE(count_events(first, "run_start"), 2);
    }

    // A Transformer-XL sweep whose first point diverges: the second still runs, the sweep exits 1 and names the error.
    void sweep_goes_on_after_a_failed_point() {
        const QString data = small_wikitext(dir.path(), 3000, 300), trained = dir.path() + "/txl-base";
        auto r = studio_run({"--batch", write_config(dir, trained_base("txl-base", "transformer_xl", data)), "--run-dir", trained, "--no-progress"});
        QVERIFY2(r.code == 0, qPrintable(r.err));
        json config = tiny_config("txl-gates");
        config["data"] = {{"dir", data.toStdString()}};
        config["model"]["type"] = "transformer_xl";
        config["stages"] = {"gate", "prune", "eval"};
        config["gate"] = {{"checkpoint", trained.toStdString()}, {"steps", 6}, {"l0_coefficient", 2.0}, {"l0_warmup", 2}, {"l0_unit", "steps"},
                          {"clip_grad_norm", 0}, {"optimizer", {{"name", "adam"}}}};
        config["eval"]["splits"] = {"valid", "test"};
        config["sweep"] = {{"gate.optimizer.lr", {1e30, 0.05}}};
        const QString root = dir.path() + "/txl-gates";
        r = studio_run({"--batch", write_config(dir, config), "--run-dir", root, "--no-progress"});
        QCOMPARE(r.code, 1);
        QVERIFY2(r.err.contains("[sweep] point 1/2 txl-gates-lr-1e+30: failed (exited with code 1); going on with the other points"), qPrintable(r.err));
        QVERIFY2(r.err.contains("[sweep] 1 of 2 points failed"), qPrintable(r.err));
        json summary = read_json(root + "/sweep.json");
        JSON_COMPARE(summary["status"], json("failed"));
        const json & bad = summary["points"][0];
        JSON_COMPARE(bad["status"], json("error"));
        JSON_COMPARE(bad["exit_code"], json(1));
        QVERIFY2(bad["error"].get<std::string>().rfind("gate: loss or gradient is not finite at step", 0) == 0, bad.dump().c_str());
        const json & good = summary["points"][1];
        JSON_COMPARE(good["status"], json("ok"));
        JSON_COMPARE(good["model_type"], json("transformer_xl"));
        QVERIFY(good["heads_kept"].get<int64_t>() < 4);
        QVERIFY(good["test_ppl"].get<double>() > 1);
        QVERIFY(good["layer_params"].get<int64_t>() < good["layer_params_dense"].get<int64_t>());
    }

    // scripts/results.py turns the two sweeps and their trained runs into the results table and the CSV that
    // `studio plot-sweep` draws as two series (headless PNG).
    void results_table_and_plot() {
        const QString python = QStandardPaths::findExecutable("python3");
        if (python.isEmpty()) QSKIP("python3 not installed");
        QVERIFY(QFile::exists(dir.path() + "/gates/sweep.json") && QFile::exists(dir.path() + "/txl-gates/sweep.json"));
        const QString csv = dir.path() + "/results.csv", md = dir.path() + "/results.md", png = dir.path() + "/results.png";
        // A serial re-bench of a point (scripts/repro-gpu.sh rebench) replaces the sweep's own speed-up: its batch 32
        // bf16 CUDA row, not the first pruned row.
        const json point = read_json(dir.path() + "/gates/sweep.json")["points"][1];
        QVERIFY(QDir().mkpath(dir.path() + "/gates/" + QString::fromStdString(point["name"].get<std::string>()) + "/bench-serial"));
        {
            QFile serial(dir.path() + "/gates/" + QString::fromStdString(point["name"].get<std::string>()) + "/bench-serial/bench.json");
            QVERIFY(serial.open(QIODevice::WriteOnly));
            const json rows = {{"rows", {{{"variant", "dense"}, {"batch", 32}, {"dtype", "bf16"}, {"device", "cuda"}, {"speedup", 1.0}},
                                         {{"variant", "pruned"}, {"batch", 4}, {"dtype", "bf16"}, {"device", "cuda"}, {"speedup", 0.5}},
                                         {{"variant", "pruned"}, {"batch", 32}, {"dtype", "bf16"}, {"device", "cuda"}, {"speedup", 1.625}}}}};
            serial.write(QByteArray::fromStdString(rows.dump()));
        }
        QProcess p;
        p.start(python, {STUDIO_SOURCE_DIR "/scripts/results.py", "--sweep", dir.path() + "/gates", "--sweep", dir.path() + "/txl-gates",
                         "--dense", dir.path() + "/all-base", "--dense", dir.path() + "/txl-base", "--csv", csv, "--md", md});
        QVERIFY(p.waitForFinished(60000));
        const QString err = QString::fromUtf8(p.readAllStandardError());
        QVERIFY2(p.exitCode() == 0, qPrintable(err));
        QVERIFY2(err.contains("txl-gates-lr-1e+30: status error, left out"), qPrintable(err));
        QFile f(csv);
        QVERIFY(f.open(QIODevice::ReadOnly));
        const QStringList lines = QString::fromUtf8(f.readAll()).trimmed().split('\n');
        QCOMPARE(lines.size(), 1 + 3 + 2);   // header; All-attention dense + 2 points; Transformer-XL dense + 1 point
        QVERIFY2(lines[0].startsWith("name,model_type,status,heads_kept,layer_params,best_valid_ppl,test_ppl,"), qPrintable(lines[0]));
        QVERIFY2(lines[1].startsWith("all-base,all_attention,finished,4,"), qPrintable(lines[1]));
        QVERIFY2(lines[3].startsWith(QString("gates-l0_coefficient-2.0,all_attention,finished,%1,%2,").arg(point["heads_kept"].get<int64_t>())
                                         .arg(point["layer_params"].get<int64_t>())), qPrintable(lines[3]));
        QVERIFY2(lines[4].startsWith("txl-base,transformer_xl,finished,4,"), qPrintable(lines[4]));
        QFile table(md);
        QVERIFY(table.open(QIODevice::ReadOnly));
        const QString text = QString::fromUtf8(table.readAll());
        QVERIFY2(text.contains(QString("| All-attention | 2 | %1 / 4 |").arg(point["heads_kept"].get<int64_t>())), qPrintable(text));
        QVERIFY2(text.contains(QString::asprintf("| %.2f | %.2f | 1.62x |", point["valid_ppl"].get<double>(), point["test_ppl"].get<double>())), qPrintable(text));
        QVERIFY2(text.contains("| Transformer-XL | dense | 4 / 4 | 0.0% |"), qPrintable(text));

        // --update rewrites only what lies between the markers of docs/results.md.
        const QString doc = dir.path() + "/results-doc.md";
        QVERIFY(QFile::copy(STUDIO_SOURCE_DIR "/docs/results.md", doc));
        QFile::setPermissions(doc, QFile::ReadOwner | QFile::WriteOwner);
        p.start(python, {STUDIO_SOURCE_DIR "/scripts/results.py", "--sweep", dir.path() + "/gates", "--sweep", dir.path() + "/txl-gates",
                         "--dense", dir.path() + "/all-base", "--dense", dir.path() + "/txl-base", "--update", doc});
        QVERIFY(p.waitForFinished(60000));
        QCOMPARE(p.exitCode(), 0);
        QFile updated(doc);
        QVERIFY(updated.open(QIODevice::ReadOnly));
        const QString after = QString::fromUtf8(updated.readAll());
        QVERIFY2(after.contains("<!-- results:table -->\n" + text.left(text.indexOf("\n\nAt matched")) + "\n<!-- /results:table -->"), qPrintable(after));
        QVERIFY2(after.contains("<!-- results:comparison -->\nAt matched layer parameters"), qPrintable(after));
        QVERIFY(after.contains("## What would make the comparison stronger"));

        auto r = studio_run({"plot-sweep", csv, "--out", png});
        QVERIFY2(r.code == 0, qPrintable(r.err));
        QVERIFY2(r.out.startsWith("wrote " + png + ": 5 runs"), qPrintable(r.out));
        QFile image(png);
        QVERIFY(image.open(QIODevice::ReadOnly));
        const QByteArray bytes = image.readAll();
        QVERIFY(bytes.startsWith("\x89PNG"));
        auto be32 = [&](int at) { return (uint32_t(uint8_t(bytes[at])) << 24) | (uint32_t(uint8_t(bytes[at + 1])) << 16) | (uint32_t(uint8_t(bytes[at + 2])) << 8) | uint8_t(bytes[at + 3]); };
        QCOMPARE(be32(16), uint32_t(900));
        QCOMPARE(be32(20), uint32_t(600));
    }

};

QTEST_GUILESS_MAIN(TestSweepRun)
#include "test_sweep_run.moc"
