// Config loading: defaults, strictness, and the exact one-line error for each kind of bad input.
#include <QDir>
#include <QFile>
#include <QTest>

#include <nlohmann/json.hpp>

#include "config.h"

using nlohmann::json;
using studio::ConfigError;

class TestConfig : public QObject {
    Q_OBJECT

    // Applies `patch` (a JSON merge patch) to a valid base config and returns the error message, or "" if it loads.
    static std::string error_for(const json & patch) {
        json base = {{"name", "t"}, {"model", {{"num_layers", 2}, {"num_heads", 4}, {"hidden_dim", 64}, {"vocab_size", 1000},
                                               {"cutoffs", json::array({100, 500})}, {"max_len", 64}, {"tgt_len", 16}, {"mem_len", 16}}}};
        base.merge_patch(patch);
        try {
            studio::config_from_json(base);
            return "";
        } catch (const ConfigError & e) {
            return e.what();
        }
    }

private Q_SLOTS:
    void defaults_match_the_reference_recipe() {
        auto c = studio::config_from_json(json::object());
        QCOMPARE(c.model.num_layers, int64_t(16));
        QCOMPARE(c.model.num_heads, int64_t(8));
        QCOMPARE(c.model.resolved_head_dim(), int64_t(64));
        QCOMPARE(c.model.feedforward_dim, int64_t(2048));
        QCOMPARE(c.train.optimizer.name, std::string("lamb"));
        QCOMPARE(c.gate.stage.optimizer.lr, 1e-4);
        QCOMPARE(c.gate.gate_lr_multiplier, 10.0);
        QCOMPARE(c.gate.init_log_alpha, 2.0);
        QCOMPARE(c.gate.beta, 0.333);
        QVERIFY(c.gate.output_scaling);
        QCOMPARE(c.gate.stage.schedule.name, std::string("constant"));
        QVERIFY(!c.model.resolved_share_r_bias());
        c.model.type = studio::ModelType::TransformerXL;
        QVERIFY(c.model.resolved_share_r_bias());
    }

    void resolved_config_round_trips() {
        auto c = studio::config_from_json({{"name", "x"}, {"model", {{"heads_per_layer", {8, 3, 0, 8}}, {"num_layers", 4}}}, {"gate", {{"target_sparsity", 0.4}}}});
        auto again = studio::config_from_json(studio::config_to_json(c));
        QCOMPARE(studio::config_to_json(again).dump(), studio::config_to_json(c).dump());
        QCOMPARE(again.model.heads_in_layer(1), int64_t(3));
        QCOMPARE(*again.gate.target_sparsity, 0.4);
    }

    void gate_batch_defaults_to_train_batch() {
        auto c = studio::config_from_json({{"train", {{"batch_size", 24}}}});
        QCOMPARE(c.gate.stage.batch_size, int64_t(24));
    }

    void bad_configs_name_the_field_data() {
        QTest::addColumn<QString>("patch");
        QTest::addColumn<QString>("message");
        auto row = [](const char * name, const json & patch, const char * message) {
            QTest::newRow(name) << QString::fromStdString(patch.dump()) << QString(message);
        };
        row("heads do not divide", {{"model", {{"num_heads", 7}}}}, "config error: model.num_heads: 7 does not divide hidden_dim 64");
        row("zero layers", {{"model", {{"num_layers", 0}}}}, "config error: model.num_layers: must be at least 1, got 0");
        row("unknown key", {{"model", {{"num_haeds", 8}}}}, "config error: model.num_haeds: unknown key (check the spelling; docs/config.md lists every key)");
        row("unknown top key", {{"trian", json::object()}}, "config error: trian: unknown key (check the spelling; docs/config.md lists every key)");
        row("wrong type", {{"train", {{"batch_size", "32"}}}}, "config error: train.batch_size: expected an integer, got string");
        row("cutoff beyond vocab", {{"model", {{"cutoffs", {100, 1000}}}}}, "config error: model.cutoffs[1]: 1000 is not below vocab_size 1000");
        row("cutoffs not increasing", {{"model", {{"cutoffs", {500, 100}}}}}, "config error: model.cutoffs: must be positive and increasing");
        row("dropout out of range", {{"model", {{"attn_drop", 1.5}}}}, "config error: model.attn_drop: must be in [0, 1), got 1.5");
        row("position table too short", {{"model", {{"max_len", 20}}}}, "config error: model.max_len: 20 is shorter than tgt_len + mem_len = 32 (the position table needs a row per key)");
        row("heads per layer length", {{"model", {{"heads_per_layer", {4}}}}}, "config error: model.heads_per_layer: has 1 entries, num_layers is 2");
        row("heads per layer range", {{"model", {{"heads_per_layer", {4, 9}}}}}, "config error: model.heads_per_layer[1]: must be in [0, num_heads = 4], got 9");
        row("shared biases with uneven heads", {{"model", {{"type", "transformer_xl"}, {"heads_per_layer", {4, 2}}}}}, "config error: model.share_r_bias: u/v biases shared by all layers need num_heads heads in every layer, layer 1 has 2; set share_r_bias false");
        row("unknown model type", {{"model", {{"type", "gpt"}}}}, "config error: model.type: \"gpt\" is not one of all_attention, transformer_xl");
        row("bad optimizer", {{"train", {{"optimizer", {{"name", "sgd"}}}}}}, "config error: train.optimizer.name: \"sgd\" is not one of lamb, adam");
        row("negative lr", {{"train", {{"optimizer", {{"lr", -1}}}}}}, "config error: train.optimizer.lr: must be > 0, got -1");
        row("batch not divisible", {{"gpus", 3}, {"train", {{"batch_size", 32}}}}, "config error: train.batch_size: 32 is not divisible by gpus 3 (each rank takes an equal share)");
        row("stage order", {{"stages", {"prune", "train"}}}, "config error: stages: must keep the order train, gate, prune, eval, bench");
        row("unknown stage", {{"stages", {"fly"}}}, "config error: stages: \"fly\" is not one of train, gate, prune, eval, bench");
        row("gate without source", {{"stages", {"gate"}}}, "config error: gate.checkpoint: the gate stage needs a trained model: add \"train\" to stages or name a checkpoint here");
        row("target sparsity range", {{"gate", {{"target_sparsity", 1.2}}}}, "config error: gate.target_sparsity: must be in [0, 1), got 1.2");
        row("gamma sign", {{"gate", {{"gamma", 0.1}}}}, "config error: gate.gamma: must be < 0 (the stretch interval is (gamma, zeta) around [0, 1])");
        row("bf16 on cpu", {{"device", "cpu"}, {"precision", "bf16"}}, "config error: precision: bf16 autocast needs device \"cuda\"; use \"fp32\" or \"auto\" on the CPU");
        row("same length without memory", {{"model", {{"mem_len", 0}}}}, "config error: model.same_length: needs mem_len > 0 (with no memory every query would see only itself); set same_length false");
        row("bench head list", {{"bench", {{"head_lists", {{1, 2, 3}}}}}}, "config error: bench.head_lists[0]: has 3 entries, model.num_layers is 2");
        row("bad device", {{"device", "tpu"}}, "config error: device: \"tpu\" is not one of cpu, cuda, auto");
        row("nan policy", {{"train", {{"nan_policy", "ignore"}}}}, "config error: train.nan_policy: \"ignore\" is not one of stop, skip");
    }
    void bad_configs_name_the_field() {
        QFETCH(QString, patch);
        QFETCH(QString, message);
        QCOMPARE(QString::fromStdString(error_for(json::parse(patch.toStdString()))), message);
    }

    void malformed_json_names_the_file() {
        const QString path = QDir::tempPath() + "/studio-bad-config.json";
        QFile f(path);
        QVERIFY(f.open(QIODevice::WriteOnly));
        f.write("{\"name\": \"x\",, }");
        f.close();
        try {
            studio::config_load(path.toStdString());
            QFAIL("malformed JSON was accepted");
        } catch (const ConfigError & e) {
            const std::string what = e.what();
            QVERIFY2(what.rfind("config error: " + path.toStdString() + ": not valid JSON (parse error", 0) == 0, what.c_str());
            QVERIFY(what.find('\n') == std::string::npos);
        }
        try {
            studio::config_load("/nonexistent/x.json");
            QFAIL("a missing file was accepted");
        } catch (const ConfigError & e) {
            QCOMPARE(std::string(e.what()), std::string("config error: /nonexistent/x.json: cannot open the file (check the path)"));
        }
    }

    void environment_checks() {
        auto c = studio::config_from_json({{"data", {{"dir", "/nonexistent"}}}});
        try {
            studio::config_check_environment(c, 0);
            QFAIL("a missing data folder was accepted");
        } catch (const ConfigError & e) {
            QCOMPARE(std::string(e.what()), std::string("config error: data.dir: dataset folder /nonexistent/wikitext-2 does not exist (set data.dir or $STUDIO_DATA; scripts/fetch-wikitext.sh downloads WikiText)"));
        }
        auto gpu = studio::config_from_json({{"device", "cuda"}, {"stages", {"bench"}}});
        try {
            studio::config_check_environment(gpu, 0);
            QFAIL("a GPU was accepted where none exists");
        } catch (const ConfigError & e) {
            QCOMPARE(std::string(e.what()), std::string("config error: device: \"cuda\" was asked for but this build or machine has no CUDA GPU; use \"cpu\" or \"auto\""));
        }
    }
};

QTEST_GUILESS_MAIN(TestConfig)
#include "test_config.moc"
