// Sweeps without LibTorch: expansion into points, the exact one-line error for each kind of bad sweep, and the
// summary row read back from a point's events.
#include <QDir>
#include <QFile>
#include <QTemporaryDir>
#include <QTest>

#include <fstream>

#include <nlohmann/json.hpp>

#include "config.h"
#include "studio_process.h"
#include "sweep.h"
#include "sweep_summary.h"

using nlohmann::json;
using studio::ConfigError;

namespace {

json base_config() {
    return {{"name", "t"}, {"stages", {"gate", "prune", "eval"}}, {"gate", {{"checkpoint", "runs/trained"}}},
            {"model", {{"num_layers", 2}, {"num_heads", 4}, {"hidden_dim", 64}, {"vocab_size", 1000},
                       {"cutoffs", json::array({100, 500})}, {"max_len", 64}, {"tgt_len", 16}, {"mem_len", 16}}}};
}

std::string error_for(const json & patch) {
    json config = base_config();
    config.merge_patch(patch);
    try {
        studio::sweep_expand(config);
        return "";
    } catch (const ConfigError & e) {
        return e.what();
    }
}

void write_lines(const QString & path, const std::vector<json> & events) {
    std::ofstream out(path.toStdString());
    for (const auto & e : events) out << e.dump() << "\n";
}

} // namespace

class TestSweep : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void one_field_gives_one_point_per_value() {
        json config = base_config();
        config["sweep"] = {{"gate.l0_coefficient", {0.0005, 0.001, 0.004}}};
        const auto sweep = studio::sweep_expand(config);
        JSON_COMPARE(json(sweep.paths), json({"gate.l0_coefficient"}));
        QCOMPARE((int) sweep.points.size(), 3);
        QCOMPARE(sweep.points[0].label, std::string("l0_coefficient-0.0005"));
        QCOMPARE(sweep.points[2].name, std::string("t-l0_coefficient-0.004"));
        JSON_COMPARE(sweep.points[1].values, json({{"gate.l0_coefficient", 0.001}}));
        QCOMPARE(sweep.points[1].config["gate"]["l0_coefficient"].get<double>(), 0.001);
        JSON_COMPARE(sweep.points[1].config["gate"]["checkpoint"], json("runs/trained")); // the base's other keys stay
        QVERIFY(!sweep.points[1].config.contains("sweep"));
        JSON_COMPARE(studio::config_from_json(sweep.points[1].config).gate.l0_coefficient, 0.001);
        JSON_COMPARE(studio::config_from_json(sweep.points[1].config).name, std::string("t-l0_coefficient-0.001"));
        // The config alone stands for its base: what `studio validate` and the GUI's validator see.
        const auto base = studio::config_from_json(config);
        QCOMPARE(base.gate.l0_coefficient, 0.02);
        QCOMPARE(base.name, std::string("t"));
    }

    void several_fields_give_the_product() {
        json config = base_config();
        // Written in this order; the points follow the alphabetical order of the paths, the last varying fastest.
        config["sweep"] = {{"gate.l0_coefficient", {0.01, 0.02}}, {"gate.epochs", {1, 2.5}}};
        const auto sweep = studio::sweep_expand(config);
        JSON_COMPARE(json(sweep.paths), json({"gate.epochs", "gate.l0_coefficient"}));
        std::vector<std::string> labels;
        for (const auto & p : sweep.points) labels.push_back(p.label);
        JSON_COMPARE(json(labels), json({"epochs-1_l0_coefficient-0.01", "epochs-1_l0_coefficient-0.02",
                                         "epochs-2.5_l0_coefficient-0.01", "epochs-2.5_l0_coefficient-0.02"}));
        QCOMPARE(sweep.points[3].config["gate"]["epochs"].get<double>(), 2.5);
        QCOMPARE(sweep.points[3].config["gate"]["l0_coefficient"].get<double>(), 0.02);
    }

    void labels_stay_unique_and_safe() {
        json config = base_config();
        config["sweep"] = {{"train.epochs", {1}}, {"gate.epochs", {2}}, {"gate.target_sparsity", {0.3}}, {"device", {"auto"}}};
        const auto sweep = studio::sweep_expand(config);
        QCOMPARE(sweep.points.size(), size_t(1));
        // Two paths end in "epochs": both are named in full. target_sparsity defaults to null and still takes numbers.
        QCOMPARE(sweep.points[0].label, std::string("device-auto_gate.epochs-2_target_sparsity-0.3_train.epochs-1"));
        JSON_COMPARE(*studio::config_from_json(sweep.points[0].config).gate.target_sparsity, 0.3);
        config["sweep"] = {{"data.dir", {"/data/a b"}}};
        QCOMPARE(studio::sweep_expand(config).points[0].label, std::string("dir-_data_a_b"));
    }

    void bad_sweeps_name_the_entry_data() {
        QTest::addColumn<QString>("patch");
        QTest::addColumn<QString>("message");
        auto row = [](const char * name, const json & patch, const char * message) {
            QTest::newRow(name) << QString::fromStdString(patch.dump()) << QString(message);
        };
        row("not an object", {{"sweep", {1, 2}}},
            "config error: sweep: expected an object of config fields and their values, e.g. {\"gate.l0_coefficient\": [0.002, 0.004]}, got array");
        row("no field", {{"sweep", json::object()}},
            "config error: sweep: must name at least one config field, e.g. {\"gate.l0_coefficient\": [0.002, 0.004]}");
        row("unknown field", {{"sweep", {{"gate.l0_coeficient", {0.1}}}}},
            "config error: sweep.gate.l0_coeficient: unknown config field (check the spelling; docs/config.md lists every key)");
        row("empty path part", {{"sweep", {{"gate..l0_coefficient", {0.1}}}}},
            "config error: sweep.gate..l0_coefficient: unknown config field (check the spelling; docs/config.md lists every key)");
        row("section", {{"sweep", {{"gate.optimizer", {0.1}}}}},
            "config error: sweep.gate.optimizer: is a section; sweep one of its fields, e.g. \"gate.optimizer.eps\"");
        row("list field", {{"sweep", {{"stages", {"train"}}}}},
            "config error: sweep.stages: is a list field; a sweep sets number, string or true/false fields");
        row("name", {{"sweep", {{"name", {"a", "b"}}}}},
            "config error: sweep.name: is the same for every point (the points run in <runs_dir>/<name>/<name>-<label>/)");
        row("not a list", {{"sweep", {{"gate.l0_coefficient", 0.01}}}},
            "config error: sweep.gate.l0_coefficient: expected a list of values, got number");
        row("empty list", {{"sweep", {{"gate.l0_coefficient", json::array()}}}},
            "config error: sweep.gate.l0_coefficient: the list is empty");
        row("wrong type", {{"sweep", {{"gate.l0_coefficient", {0.01, "0.02"}}}}},
            "config error: sweep.gate.l0_coefficient[1]: expected a number, got string");
        row("null value", {{"sweep", {{"gate.l0_coefficient", {0.01, nullptr}}}}},
            "config error: sweep.gate.l0_coefficient[1]: expected a number, string or true/false, got null");
        row("fraction for an integer", {{"sweep", {{"gate.steps", {10, 1.5}}}}},
            "config error: sweep.gate.steps[1]: expected an integer, got number");
        row("invalid value", {{"sweep", {{"gate.l0_coefficient", {0.01, -1}}}}},
            "config error: sweep.gate.l0_coefficient[1]: must be >= 0, got -1");
        row("invalid string", {{"sweep", {{"gate.optimizer.name", {"lamb", "sgd"}}}}},
            "config error: sweep.gate.optimizer.name[1]: \"sgd\" is not one of lamb, adam");
        row("breaks another field", {{"sweep", {{"model.mem_len", {16, 0}}}}},
            "config error: sweep.model.mem_len[1]: with 0, model.same_length: needs mem_len > 0 (with no memory every query would see only itself); set same_length false");
        row("listed twice", {{"sweep", {{"gate.l0_coefficient", {0.01, 0.02, 0.010}}}}},
            "config error: sweep.gate.l0_coefficient[2]: 0.01 gives the same point name as [0] (each point needs its own run directory)");
        row("same folder name", {{"sweep", {{"data.dir", {"a/b", "a_b"}}}}},
            "config error: sweep.data.dir[1]: a_b gives the same point name as [0] (each point needs its own run directory)");
        row("combination", {{"sweep", {{"model.num_heads", {4, 8}}, {"model.hidden_dim", {64, 36}}}}},
            "config error: sweep: point hidden_dim-36_num_heads-8: model.num_heads: 8 does not divide hidden_dim 36");
        row("too many points", {{"sweep", {{"gate.l0_coefficient", json::array()}, {"seed", json::array()}}}},
            ""); // replaced below
        row("base error is the base's", {{"model", {{"num_heads", 7}}}, {"sweep", {{"gate.l0_coefficient", {0.01}}}}},
            "config error: model.num_heads: 7 does not divide hidden_dim 64");
    }
    void bad_sweeps_name_the_entry() {
        QFETCH(QString, patch);
        QFETCH(QString, message);
        json p = json::parse(patch.toStdString());
        if (QString(QTest::currentDataTag()) == "too many points") {
            for (int i = 0; i < 20; ++i) {
                p["sweep"]["gate.l0_coefficient"].push_back(0.001 * (i + 1));
                p["sweep"]["seed"].push_back(i);
            }
            message = "config error: sweep: more than 256 points (the product of the lists); split it";
        }
        QCOMPARE(QString::fromStdString(error_for(p)), message);
        // The same line from config_from_json, which `studio validate` and the GUI use.
        json config = base_config();
        config.merge_patch(p);
        try {
            studio::config_from_json(config);
            QFAIL("the bad sweep was accepted");
        } catch (const ConfigError & e) {
            QCOMPARE(QString(e.what()), message);
        }
    }

    // The [repro] sweeps gate the models the train configs make: same model section, at least four coefficients
    // (issue #8) placed for each model's own sparsities, bench at batch 32 bf16 on CUDA only.
    void shipped_sweeps_match_their_trained_runs_data() {
        QTest::addColumn<QString>("model");
        QTest::addColumn<std::vector<double>>("coefficients");
        QTest::newRow("all") << "all" << std::vector<double>{0.0005, 0.002, 0.004, 0.007, 0.01, 0.014};
        QTest::newRow("txl") << "txl" << std::vector<double>{0.0005, 0.002, 0.003, 0.004, 0.007, 0.01};
    }
    void shipped_sweeps_match_their_trained_runs() {
        QFETCH(QString, model);
        QFETCH(std::vector<double>, coefficients);
        const std::string configs = STUDIO_SOURCE_DIR "/configs/wt2_" + model.toStdString() + "_16l_";
        const auto sweep = studio::sweep_expand(studio::config_read_json(configs + "sweep.json"));
        const auto trained = studio::config_load(configs + "train.json");
        JSON_COMPARE(studio::config_to_json(sweep.base)["model"], studio::config_to_json(trained)["model"]);
        QCOMPARE(sweep.base.gate.checkpoint, "runs-gpu/" + trained.name);
        QCOMPARE(sweep.base.name, trained.name + "-sweep");
        JSON_COMPARE(json(sweep.base.stages), json({"gate", "prune", "eval", "bench"}));
        JSON_COMPARE(json(sweep.base.bench.batch_sizes), json({32}));
        JSON_COMPARE(json(sweep.base.bench.dtypes), json({"bf16"}));
        JSON_COMPARE(json(sweep.base.bench.devices), json({"cuda"}));
        JSON_COMPARE(json(sweep.base.bench.variants), json({"dense", "pruned"}));
        std::vector<double> l0;
        for (const auto & p : sweep.points) l0.push_back(p.values["gate.l0_coefficient"].get<double>());
        JSON_COMPARE(json(l0), json(coefficients));
        QCOMPARE(sweep.points[0].name, trained.name + "-sweep-l0_coefficient-0.0005");
        // Reference dropout in both.
        QCOMPARE(trained.model.attn_drop, 0.2);
        QCOMPARE(trained.model.resolved_ff_drop(), 0.1);
        QCOMPARE(trained.model.num_layers * trained.model.num_heads, int64_t(128));
        QCOMPARE(trained.model.feedforward_dim, int64_t(2048));
    }

    void point_row_reads_the_events() {
        QTemporaryDir dir;
        const QString run = dir.path() + "/p";
        JSON_COMPARE(studio::sweep_point_row(run.toStdString())["status"], json("pending"));
        QVERIFY(QDir().mkpath(run));
        const json model = {{"type", "all_attention"}, {"num_layers", 2}, {"heads_per_layer", {4, 4}}, {"params_total", 900}, {"params_layers", 500}};
        auto bench = [](const char * variant, int64_t batch, const char * dtype, const char * device, double speedup) {
            return json{{"variant", variant}, {"batch", batch}, {"dtype", dtype}, {"device", device}, {"median_ms", 10.0 / speedup},
                        {"tokens_per_s", 100.0 * speedup}, {"speedup", speedup}, {"ideal_speedup", 2.0}};
        };
        std::vector<json> events = {
            {{"event", "run_start"}, {"time", 100.0}, {"model", model}},
            {{"event", "gates"}, {"time", 110.0}, {"stage", "gate"}, {"open", {{true, false, true, true}, {true, true, true, true}}}},
            {{"event", "run_end"}, {"time", 130.0}, {"status", "stopped"}},
        };
        write_lines(run + "/events.jsonl", events);
        json row = studio::sweep_point_row(run.toStdString());
        JSON_COMPARE(row["status"], json("stopped"));
        JSON_COMPARE(row["heads_kept"], json(7)); // from the open gates: no prune yet
        QCOMPARE(row["sparsity"].get<double>(), 1.0 / 8.0);
        QVERIFY(row["layer_params"].is_null());

        // Resumed, then pruned, evaluated and benchmarked.
        events.push_back({{"event", "run_start"}, {"time", 500.0}, {"model", model}, {"resumed", true}});
        events.push_back({{"event", "eval"}, {"time", 501.0}, {"stage", "gate"}, {"model", "gated"}, {"split", "valid"}, {"ppl", 99.0}});
        events.push_back({{"event", "prune"}, {"time", 502.0}, {"heads_per_layer", {1, 3}}, {"layer_params_before", 510}, {"layer_params_after", 200},
                          {"params_before", 910}, {"params_after", 600}});
        for (const char * m : {"gated", "pruned"}) {
            events.push_back({{"event", "eval"}, {"time", 503.0}, {"stage", "eval"}, {"model", m}, {"split", "valid"}, {"ppl", m[0] == 'g' ? 50.5 : 50.25}});
            events.push_back({{"event", "eval"}, {"time", 504.0}, {"stage", "eval"}, {"model", m}, {"split", "test"}, {"ppl", m[0] == 'g' ? 40.5 : 40.25}});
        }
        events.push_back({{"event", "bench"}, {"time", 505.0}, {"rows", {bench("dense", 32, "bf16", "cuda", 1.0), bench("pruned", 32, "bf16", "cuda", 1.5),
                                                                           bench("pruned", 128, "fp32", "cuda", 1.7), bench("pruned", 32, "bf16", "cpu", 1.1)}}});
        events.push_back({{"event", "run_end"}, {"time", 520.0}, {"status", "ok"}});
        write_lines(run + "/events.jsonl", events);
        row = studio::sweep_point_row(run.toStdString());
        JSON_COMPARE(row["status"], json("ok"));
        QVERIFY(row["error"].is_null());
        JSON_COMPARE(row["model_type"], json("all_attention"));
        JSON_COMPARE(row["heads_total"], json(8));
        JSON_COMPARE(row["heads_kept"], json(4));
        JSON_COMPARE(row["heads_per_layer"], json({1, 3}));
        QCOMPARE(row["sparsity"].get<double>(), 0.5);
        JSON_COMPARE(row["layer_params"], json(200));
        JSON_COMPARE(row["params_total"], json(600));
        JSON_COMPARE(row["layer_params_dense"], json(510));
        JSON_COMPARE(row["params_total_dense"], json(910));
        JSON_COMPARE(row["ppl_model"], json("pruned"));
        QCOMPARE(row["valid_ppl"].get<double>(), 50.25);
        QCOMPARE(row["test_ppl"].get<double>(), 40.25);
        QCOMPARE(row["gated_test_ppl"].get<double>(), 40.5);
        QCOMPARE(row["speedup_b32_bf16"].get<double>(), 1.5);  // the CUDA row, not the CPU one or the larger batch
        JSON_COMPARE(row["speedup"]["device"], json("cuda"));
        QCOMPARE((int) row["bench"].size(), 4);
        QCOMPARE(row["wall_s"].get<double>(), 30.0 + 20.0);   // 100-130 and 500-520; not the pause between

        json summary = {{"name", "s"}, {"status", "failed"}, {"paths", {"gate.l0_coefficient"}}, {"points", json::array()}};
        json point = row;
        point["name"] = "s-l0_coefficient-0.004";
        point["values"] = {{"gate.l0_coefficient", 0.004}};
        summary["points"].push_back(point);
        json failed = studio::sweep_point_row((dir.path() + "/missing").toStdString());
        failed["name"] = "s-l0_coefficient-0.008";
        failed["values"] = {{"gate.l0_coefficient", 0.008}};
        failed["status"] = "error";
        failed["error"] = "gate: no | checkpoint";
        summary["points"].push_back(failed);
        const std::string md = studio::sweep_markdown(summary);
        QVERIFY2(md.find("| point | gate.l0_coefficient | status | heads kept | sparsity | layer params | total params | valid ppl | test ppl | speed-up |\n") != std::string::npos, md.c_str());
        QVERIFY2(md.find("| s-l0_coefficient-0.004 | 0.004 | ok | 4 / 8 | 50.0% | 200 | 600 | 50.250 | 40.250 | 1.50x |\n") != std::string::npos, md.c_str());
        QVERIFY2(md.find("| s-l0_coefficient-0.008 | 0.008 | error | | | | | | | |\n") != std::string::npos, md.c_str());
        QVERIFY2(md.find("Errors:\n\n- s-l0_coefficient-0.008: gate: no | checkpoint\n") != std::string::npos, md.c_str());

        // Without a batch-32 bf16 row the speed-up shown names its setting.
        events.push_back({{"event", "bench"}, {"time", 600.0}, {"rows", {bench("dense", 2, "fp32", "cpu", 1.0), bench("pruned", 2, "fp32", "cpu", 1.25)}}});
        write_lines(run + "/events.jsonl", events);
        row = studio::sweep_point_row(run.toStdString());
        QVERIFY(row["speedup_b32_bf16"].is_null());
        point = row;
        point["name"] = "x";
        summary["points"] = json::array({point});
        QVERIFY2(studio::sweep_markdown(summary).find("| 1.25x (b2 fp32 cpu) |\n") != std::string::npos, studio::sweep_markdown(summary).c_str());
    }

    void interrupted_and_failed_points() {
        QTemporaryDir dir;
        write_lines(dir.path() + "/events.jsonl", {{{"event", "run_start"}, {"time", 1.0}, {"model", {{"type", "transformer_xl"}, {"heads_per_layer", {2}}}}}});
        JSON_COMPARE(studio::sweep_point_row(dir.path().toStdString())["status"], json("interrupted"));
        write_lines(dir.path() + "/events.jsonl", {{{"event", "run_start"}, {"time", 1.0}, {"model", {{"type", "transformer_xl"}}}},
                                                   {{"event", "error"}, {"time", 2.0}, {"message", "gate: no checkpoint at x"}},
                                                   {{"event", "run_end"}, {"time", 2.0}, {"status", "error"}}});
        json row = studio::sweep_point_row(dir.path().toStdString());
        JSON_COMPARE(row["status"], json("error"));
        JSON_COMPARE(row["error"], json("gate: no checkpoint at x"));
        JSON_COMPARE(row["model_type"], json("transformer_xl"));
    }
};

QTEST_GUILESS_MAIN(TestSweep)
#include "test_sweep.moc"
