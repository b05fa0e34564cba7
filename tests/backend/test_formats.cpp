// File formats without LibTorch: safetensors round trips and refusals, events.jsonl with a half-written last line,
// schedules, and the benchmark statistics.
#include <QDir>
#include <QFile>
#include <QTemporaryDir>
#include <QTest>

#include <cmath>
#include <cstring>

#include "bench_report.h"
#include "events.h"
#include "run_dir.h"
#include "safetensors.h"
#include "schedule.h"

class TestFormats : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void safetensors_round_trip_matches_the_spec() {
        std::vector<float> a{1.f, -2.f, 3.5f, 0.25f, 5.f, 6.f};
        std::vector<int64_t> b{7, -8};
        auto bytes = studio::safetensors_serialize({{"a", {"F32", {2, 3}, a.data(), a.size() * 4}}, {"b", {"I64", {2}, b.data(), 16}}},
                                                   {{"format", "pt"}});
        // The spec by hand: 8-byte little-endian length, a JSON header, then the data, tensors in header order.
        uint64_t n = 0;
        std::memcpy(&n, bytes.data(), 8);
        QCOMPARE((n + 8) % 8, uint64_t(0));
        auto header = nlohmann::json::parse(bytes.substr(8, n));
        QCOMPARE(header["a"]["dtype"].get<std::string>(), std::string("F32"));
        QVERIFY(header["a"]["data_offsets"] == nlohmann::json({0, 24}));
        QVERIFY(header["b"]["data_offsets"] == nlohmann::json({24, 40}));
        QCOMPARE(header["__metadata__"]["format"].get<std::string>(), std::string("pt"));
        float third = 0;
        std::memcpy(&third, bytes.data() + 8 + n + 8, 4);
        QCOMPARE(third, 3.5f);

        auto file = studio::safetensors_parse(bytes, "mem");
        QCOMPARE(file.tensors.at("a").shape, (std::vector<int64_t>{2, 3}));
        QCOMPARE(std::memcmp(file.tensors.at("b").data.data(), b.data(), 16), 0);
        QCOMPARE(file.metadata.at("format"), std::string("pt"));
    }

    void safetensors_refuses_damage() {
        std::vector<float> a{1, 2, 3, 4};
        auto bytes = studio::safetensors_serialize({{"w", {"F32", {4}, a.data(), 16}}});
        auto expect = [&](const std::string & data, const std::string & message) {
            try {
                studio::safetensors_parse(data, "m.safetensors");
                QFAIL(("accepted: " + message).c_str());
            } catch (const studio::FormatError & e) {
                QCOMPARE(QString::fromStdString(e.what()), QString::fromStdString("safetensors: m.safetensors: " + message));
            }
        };
        expect(bytes.substr(0, bytes.size() - 4), "tensor w data runs past the end of the file (truncated?)");
        expect(bytes.substr(0, 5), "file is 5 bytes, too short for a header (truncated?)");
        std::string huge = bytes;
        huge[7] = 0x7f;
        expect(huge, "header length 9151314442816847928 runs past the end of the file (truncated or not safetensors)");
        std::string garbled = bytes;
        garbled[9] = '#';
        expect(garbled, "header is not a JSON object (corrupt or not safetensors)");
    }

    void atomic_write_replaces_whole_files() {
        QTemporaryDir dir;
        const std::string path = dir.path().toStdString() + "/f.bin";
        studio::file_write_atomic(path, "first");
        studio::file_write_atomic(path, "second");
        QFile f(QString::fromStdString(path));
        QVERIFY(f.open(QIODevice::ReadOnly));
        QCOMPARE(f.readAll(), QByteArray("second"));
        QCOMPARE(QDir(dir.path()).entryList(QDir::Files | QDir::Hidden).size(), 1); // no temporary left behind
        QCOMPARE(studio::bytes_checksum("a"), std::string("af63dc4c8601ec8c")); // FNV-1a 64 test vector
    }

    void event_writer_closes_a_half_written_line() {
        // What a SIGKILL in the middle of an event leaves behind: the next run's events must still be readable.
        QTemporaryDir dir;
        const std::string path = dir.path().toStdString() + "/events.jsonl";
        {
            QFile f(QString::fromStdString(path));
            QVERIFY(f.open(QIODevice::WriteOnly));
            f.write("{\"event\": \"train\", \"step\": 1}\n{\"event\": \"train\", \"st");
        }
        {
            studio::EventWriter writer(path);
            writer.write("run_start", {{"resumed", true}});
        }
        studio::EventReader reader(path);
        auto events = reader.poll();
        QCOMPARE((int) events.size(), 2);
        QCOMPARE(events[1]["event"].get<std::string>(), std::string("run_start"));
        QCOMPARE(reader.skipped_lines(), int64_t(1));
        {
            studio::EventWriter writer(path); // a whole last line is left alone: no empty line added
            writer.write("run_end");
        }
        QFile f(QString::fromStdString(path));
        QVERIFY(f.open(QIODevice::ReadOnly));
        QCOMPARE(f.readAll().count('\n'), 4);
    }

    void event_reader_waits_for_the_newline() {
        QTemporaryDir dir;
        const std::string path = dir.path().toStdString() + "/events.jsonl";
        {
            studio::EventWriter writer(path);
            writer.write("train", {{"step", 1}});
        }
        studio::EventReader reader(path);
        auto first = reader.poll();
        QCOMPARE((int) first.size(), 1);
        QCOMPARE(first[0]["event"].get<std::string>(), std::string("train"));
        QVERIFY(first[0]["time"].get<double>() > 1.7e9);
        QFile f(QString::fromStdString(path));
        QVERIFY(f.open(QIODevice::Append));
        f.write("{\"event\": \"eval\", \"pp");
        f.flush();
        QCOMPARE((int) reader.poll().size(), 0);
        f.write("l\": 12.5}\nnot json\n");
        f.flush();
        auto second = reader.poll();
        QCOMPARE((int) second.size(), 1);
        QCOMPARE(second[0]["ppl"].get<double>(), 12.5);
        QCOMPARE(reader.skipped_lines(), int64_t(1));
    }

    void lr_schedule() {
        studio::ScheduleConfig cosine{"cosine", 10, 0.001};
        QCOMPARE(studio::schedule_lr(cosine, 0.01, 0, 110), 0.001);        // warm-up step 1 of 10
        QCOMPARE(studio::schedule_lr(cosine, 0.01, 9, 110), 0.01);         // warm-up done
        QCOMPARE(studio::schedule_lr(cosine, 0.01, 10, 110), 0.01);        // cosine starts at lr
        QVERIFY(std::abs(studio::schedule_lr(cosine, 0.01, 60, 110) - 0.0055) < 1e-12); // half way: (lr + min) / 2
        QVERIFY(std::abs(studio::schedule_lr(cosine, 0.01, 110, 110) - 0.001) < 1e-12);
        studio::ScheduleConfig constant{"constant", 0, 0};
        QCOMPARE(studio::schedule_lr(constant, 0.5, 1000, 10), 0.5);
    }

    void sparsity_loss_warmup_in_steps_and_epochs() {
        studio::GateConfig g;
        g.l0_coefficient = 0.02;
        g.l0_start = 2;
        g.l0_warmup = 4;
        g.l0_unit = "steps";
        std::vector<double> expected{0, 0, 0.005, 0.01, 0.015, 0.02, 0.02};
        for (int step = 0; step < 7; ++step) QVERIFY(std::abs(studio::schedule_l0_coefficient(g, step, 1000) - expected[(size_t) step]) < 1e-15);
        g.l0_unit = "epochs";
        g.l0_start = 0;
        g.l0_warmup = 1;   // one epoch of 100 steps, the reference's setting
        QVERIFY(std::abs(studio::schedule_l0_coefficient(g, 0, 100) - 0.0002) < 1e-15);
        QVERIFY(std::abs(studio::schedule_l0_coefficient(g, 49, 100) - 0.01) < 1e-15);
        QCOMPARE(studio::schedule_l0_coefficient(g, 100, 100), 0.02);
    }

    void bench_statistics_and_speedups() {
        QCOMPARE(studio::percentile({5, 1, 3, 2, 4}, 0.5), 3.0);
        QCOMPARE(studio::percentile({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, 0.1), 2.0);
        QCOMPARE(studio::percentile({10, 20}, 0.9), 19.0);
        studio::BenchRow dense, pruned;
        dense.variant = "dense"; dense.layer_params = 200; dense.batch = 4; dense.tgt_len = 10; dense.samples_ms = {10, 12, 11};
        pruned.variant = "pruned"; pruned.layer_params = 100; pruned.batch = 4; pruned.tgt_len = 10; pruned.samples_ms = {6, 5.5, 5};
        for (auto * r : {&dense, &pruned}) { r->dtype = "fp32"; r->device = "cpu"; studio::summarise_samples(*r); }
        QCOMPARE(dense.median_ms, 11.0);
        QCOMPARE(dense.tokens_per_s, 40 / 0.011);
        std::vector<studio::BenchRow> rows{dense, pruned};
        studio::bench_compare(rows);
        QCOMPARE(rows[1].speedup, 2.0);
        QCOMPARE(rows[1].ideal_speedup, 2.0);
        QCOMPARE(rows[1].efficiency, 1.0);
        const std::string md = studio::bench_markdown(rows);
        QVERIFY(md.find("| pruned | 0 | 0.00M | 4 | fp32 | cpu | yes | 5.500 | 5.100-5.900 |") != std::string::npos);
        QVERIFY(studio::bench_csv(rows).rfind("variant,heads_kept,layer_params,batch", 0) == 0);
        // A GPU row names its graph, whether the loss was in it, and what computed attention; "explicit" goes unsaid.
        rows[0].device = "cuda"; rows[0].cuda_graph = true; rows[0].loss_in_graph = true; rows[0].attention = "studio-kernel";
        rows[1].device = "cuda"; rows[1].cuda_graph = true; rows[1].attention = "explicit";
        const std::string gpu_md = studio::bench_markdown(rows);
        QVERIFY(gpu_md.find("| fp32 | cuda (graph, loss in graph, studio-kernel) | yes |") != std::string::npos);
        QVERIFY(gpu_md.find("| fp32 | cuda (graph) | yes |") != std::string::npos);
        const std::string csv = studio::bench_csv(rows);
        QVERIFY(csv.find(",cuda_graph,attention,loss_in_graph\n") != std::string::npos);
        QVERIFY(csv.find(",1,studio-kernel,1\n") != std::string::npos);
        QVERIFY(studio::bench_json(rows)[0]["attention"].get<std::string>() == "studio-kernel");
        QCOMPARE(studio::bench_json(rows)[1]["loss_in_graph"].get<bool>(), false);

        // Training rows: the same statistics; the optimizer's share is of the three phases; MFU only when known.
        studio::TrainBenchRow train;
        train.variant = "gated"; train.batch = 2; train.tgt_len = 100; train.dtype = "bf16"; train.device = "cuda";
        train.samples_ms = {20, 30, 25};
        studio::summarise_samples(train);
        QCOMPARE(train.median_ms, 25.0);
        QCOMPARE(train.tokens_per_s, 8000.0);
        train.forward_ms = 6; train.backward_ms = 12; train.optimizer_ms = 2; train.peak_memory_gb = 1.25; train.tflops = 3.2; train.mfu = 0.004;
        const std::string train_md = studio::train_bench_markdown({train});
        QVERIFY2(train_md.find("| gated | 2 | bf16 | cuda | 25.00 | 21.00-29.00 | 8000 | 6.00 | 12.00 | 2.00 (10.0%) | 1.2 | 3.2 | 0.4% |") != std::string::npos,
                 train_md.c_str());
        train.mfu = 0;
        QVERIFY(studio::train_bench_markdown({train}).find("| 3.2 | n/a |") != std::string::npos);
        QVERIFY(studio::train_bench_csv({train}).rfind("variant,batch,tgt_len,mem_len,dtype,device,median_ms", 0) == 0);
        QCOMPARE(studio::train_bench_json({train})[0]["optimizer_ms"].get<double>(), 2.0);
        QVERIFY(!studio::train_bench_json({train})[0].contains("error"));

        // A batch that did not fit: its row says so in all three forms, with no figures.
        studio::TrainBenchRow too_big;
        too_big.variant = "ungated"; too_big.batch = 768; too_big.tgt_len = 192; too_big.dtype = "bf16"; too_big.device = "cuda";
        too_big.error = "out of memory";
        const std::string both_md = studio::train_bench_markdown({train, too_big});
        QVERIFY2(both_md.find("| ungated | 768 | bf16 | cuda | out of memory | - | - | - | - | - | - | - | - |\n") != std::string::npos,
                 both_md.c_str());
        const std::string both_csv = studio::train_bench_csv({train, too_big});
        QVERIFY(both_csv.find(",mfu,error\n") != std::string::npos);
        QVERIFY(both_csv.find(",0,out of memory\n") != std::string::npos);
        QVERIFY(both_csv.find(",0.004,\n") == std::string::npos && both_csv.find(",0,\n") != std::string::npos);   // measured row: empty error
        QCOMPARE(studio::train_bench_json({train, too_big})[1]["error"].get<std::string>(), std::string("out of memory"));
    }
};

QTEST_GUILESS_MAIN(TestFormats)
#include "test_formats.moc"
