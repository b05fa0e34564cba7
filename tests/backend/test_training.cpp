// Training machinery against independent computations: LAMB as the reference writes it, Adam against LibTorch's,
// the ordered batcher and its rank shards, checkpoints (round trip, corruption, foreign and mismatched files), and
// two Gloo ranks leaving their group in step.
#include <torch/torch.h>

#include <QDir>
#include <QFile>
#include <QTemporaryDir>
#include <QTest>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <thread>
#include <nlohmann/json.hpp>

#include "bench_train.h"
#include "checkpoint.h"
#include "communicator.h"
#include "language_model.h"
#include "lm_batcher.h"
#include "optimizer.h"
#include "run_dir.h"

using namespace studio;

class TestTraining : public QObject {
    Q_OBJECT

    static ModelConfig small() {
        ModelConfig m;
        m.num_layers = 2;
        m.num_heads = 2;
        m.hidden_dim = 8;
        m.feedforward_dim = 4;
        m.vocab_size = 30;
        m.cutoffs = {10};
        m.max_len = 8;
        m.tgt_len = 3;
        m.mem_len = 2;
        return m;
    }

private Q_SLOTS:
    void initTestCase() { torch::manual_seed(3); }

    void lamb_matches_the_reference_formula() {
        auto w = torch::randn({3, 4}, torch::requires_grad()), zero = torch::zeros({4}, torch::requires_grad());
        OptimizerConfig config;
        config.lr = 0.01;
        config.weight_decay = 0.1;
        Optimizer opt(config, {ParamGroup{"decay", {w}, 1.0, 0.1}, ParamGroup{"gates", {zero}, 10.0, 0.0}});
        auto w0 = w.detach().clone();
        std::vector<torch::Tensor> grads{torch::randn({3, 4}), torch::randn({3, 4})};
        auto m = torch::zeros({3, 4}), v = torch::zeros({3, 4});
        auto expected = w0.clone();
        for (int step = 0; step < 2; ++step) {
            w.mutable_grad() = grads[(size_t) step].clone();
            zero.mutable_grad() = torch::ones({4});
            opt.step(0.01);
            // m, v without bias correction; update = m / (sqrt(v) + eps) + wd * p; trust = clamp(|p|, 0, 10) / (|update| + eps).
            m = 0.9 * m + 0.1 * grads[(size_t) step];
            v = 0.999 * v + 0.001 * grads[(size_t) step] * grads[(size_t) step];
            auto update = m / (v.sqrt() + 1e-8) + 0.1 * expected;
            const double trust = std::min(10.0, expected.norm().item<double>()) / (update.norm().item<double>() + 1e-8);
            expected = expected - 0.01 * trust * update;
            QVERIFY(torch::allclose(w.detach(), expected, 1e-6, 1e-7));
        }
        // A zero tensor has |p| = 0, so its trust ratio is 1; the gate group's lr is 10x.
        const double first = -0.01 * 10 * (0.1 / (std::sqrt(0.001) + 1e-8));
        Optimizer fresh(config, {ParamGroup{"gates", {torch::zeros({2}, torch::requires_grad())}, 10.0, 0.0}});
        auto p = fresh.groups()[0].params[0];
        p.mutable_grad() = torch::ones({2});
        fresh.step(0.01);
        QVERIFY(std::abs(p.detach()[0].item<double>() - first) < 1e-6);
    }

    // The flat buffers start every tensor 16-byte aligned (kernels read rows 16 bytes at a time); the padding between
    // tensors must change nothing: two odd-sized tensors in one group step exactly as each does alone.
    void flat_buffers_align_tensors_without_changing_the_step() {
        auto a = torch::randn({3}, torch::requires_grad()), b = torch::randn({5}, torch::requires_grad());
        auto a_alone = a.detach().clone().requires_grad_(true), b_alone = b.detach().clone().requires_grad_(true);
        OptimizerConfig config;
        config.weight_decay = 0.1;
        Optimizer together(config, {ParamGroup{"decay", {a, b}, 1.0, 0.1}});
        Optimizer first(config, {ParamGroup{"decay", {a_alone}, 1.0, 0.1}}), second(config, {ParamGroup{"decay", {b_alone}, 1.0, 0.1}});
        for (const auto & p : {a, b}) QCOMPARE(reinterpret_cast<uintptr_t>(p.data_ptr()) % 16, uintptr_t(0));
        for (int step = 0; step < 3; ++step) {
            auto ga = torch::randn({3}), gb = torch::randn({5});
            a.mutable_grad().copy_(ga);
            b.mutable_grad().copy_(gb);
            a_alone.mutable_grad() = ga.clone();
            b_alone.mutable_grad() = gb.clone();
            QVERIFY(std::abs(together.clip_gradients(0.0).item<double>() - torch::cat({ga, gb}).norm().item<double>()) < 1e-5);
            together.step(0.01);
            first.step(0.01);
            second.step(0.01);
            QVERIFY(torch::allclose(a.detach(), a_alone.detach(), 1e-6, 1e-7));
            QVERIFY(torch::allclose(b.detach(), b_alone.detach(), 1e-6, 1e-7));
        }
        QCOMPARE(together.state().at("decay.1.exp_avg").numel(), int64_t(5));
    }

    // The clip's coefficient reaches the gradients in the step, not before: clipping at 1 then stepping must equal
    // stepping gradients scaled by hand. A step whose gradient norm is not finite changes nothing (parameters,
    // moments, step count), so the trainer can learn of it a step later, and so does a step whose loss is not finite
    // (skip_step_unless_finite); the next finite step proceeds.
    void clip_applies_in_the_step_and_a_non_finite_norm_or_loss_skips_it() {
        for (const char * name : {"lamb", "adam"}) {
            OptimizerConfig config;
            config.name = name;
            auto w = torch::randn({7}, torch::requires_grad()), w_by_hand = w.detach().clone().requires_grad_(true);
            Optimizer clipped(config, {ParamGroup{"decay", {w}, 1.0, 0.1}}), by_hand(config, {ParamGroup{"decay", {w_by_hand}, 1.0, 0.1}});
            auto g = torch::randn({7}) * 10;
            w.mutable_grad().copy_(g);
            w_by_hand.mutable_grad().copy_(g * (1.0 / (g.norm().item<double>() + 1e-6)));
            QVERIFY(std::abs(clipped.clip_gradients(1.0).item<double>() - g.norm().item<double>()) < 1e-4);
            QVERIFY2(torch::equal(w.grad(), g), name);   // not scaled until the step
            by_hand.clip_gradients(0.0);
            clipped.step(0.01);
            by_hand.step(0.01);
            QVERIFY2(torch::allclose(w.detach(), w_by_hand.detach(), 1e-6, 1e-7), name);

            const auto before = w.detach().clone();
            const auto state_before = clipped.state();
            auto bad = torch::randn({7});
            bad[3] = NAN;
            w.mutable_grad().copy_(bad);
            QVERIFY(std::isnan(clipped.clip_gradients(1.0).item<double>()));
            clipped.step(0.01);
            QVERIFY2(torch::equal(w.detach(), before), name);
            for (const auto & [key, value] : clipped.state()) QVERIFY2(torch::equal(value, state_before.at(key)), key.c_str());

            // Finite gradients of a non-finite loss: skipped just the same, when the loss is handed over.
            w.mutable_grad().copy_(torch::randn({7}));
            QVERIFY(std::isfinite(clipped.clip_gradients(1.0).item<double>()));
            clipped.skip_step_unless_finite(torch::tensor({INFINITY}));
            clipped.step(0.01);
            QVERIFY2(torch::equal(w.detach(), before), name);
            for (const auto & [key, value] : clipped.state()) QVERIFY2(torch::equal(value, state_before.at(key)), key.c_str());

            w.mutable_grad().copy_(torch::randn({7}));
            clipped.clip_gradients(1.0);
            clipped.skip_step_unless_finite(torch::tensor({2.5}));
            clipped.step(0.01);
            QVERIFY2(!torch::equal(w.detach(), before) && torch::isfinite(w.detach()).all().item<bool>(), name);
        }
    }

    void adam_matches_libtorch() {
        auto a = torch::randn({5}, torch::requires_grad()), b = a.detach().clone().requires_grad_(true);
        OptimizerConfig config;
        config.name = "adam";
        config.lr = 0.05;
        Optimizer ours(config, {ParamGroup{"decay", {a}, 1.0, 0.0}});
        torch::optim::Adam theirs({b}, torch::optim::AdamOptions(0.05).betas({0.9, 0.999}).eps(1e-8));
        for (int step = 0; step < 3; ++step) {
            auto g = torch::randn({5});
            a.mutable_grad() = g.clone();
            b.mutable_grad() = g.clone();
            ours.step(0.05);
            theirs.step();
            QVERIFY(torch::allclose(a.detach(), b.detach(), 1e-6, 1e-7));
        }
    }

    void train_flops_follow_the_documented_formula() {
        // small(): D 8, 2 heads of 4, 4 persistent vectors, 2 layers, T 3 + M 2 = S 5 keys, vocabulary 30 cut at 10.
        LanguageModel model(small());
        // A layer: q/k/v/r/o weights 5 x 64, own u/v 16, mem_k/mem_v 64, o bias 8, LayerNorm 16 = 424; r is 64 of it.
        const double layers = 6.0 * (424 - 64) * 2;
        const double position = 6.0 * 64 * 2 * 5 / (2 * 3);              // once per segment of 2 x 3 tokens
        const double head = 6.0 * (64 + 10 * 8 + 8);                     // head projection, shortlist rows, cluster logit
        const double clusters = 6.0 * (10.0 / 30 * 64 + 20.0 / 30 * (16 + 2 * 8 + 20 * 2)); // input proj.; tail proj. + rows
        const double attention = 18.0 * 2 * 2 * 4 * 5;
        QCOMPARE(train_flops_per_token(*model, 2), layers + position + head + clusters + attention);
    }

    void optimizer_state_round_trips() {
        auto w = torch::randn({4}, torch::requires_grad());
        OptimizerConfig config;
        Optimizer opt(config, {ParamGroup{"decay", {w}, 1.0, 0.0}});
        w.mutable_grad() = torch::ones({4});
        opt.step(0.1);
        auto state = opt.state();
        Optimizer other(config, {ParamGroup{"decay", {w}, 1.0, 0.0}});
        other.load_state(state, "x");
        for (auto & [k, t] : other.state()) QVERIFY2(torch::equal(t, state.at(k)), k.c_str());
    }

    void parameter_groups_follow_the_reference() {
        ModelConfig m = small();
        m.head_gates = true;
        LanguageModel model(m);
        auto groups = make_param_groups(*model, 0.01, 10.0);
        QCOMPARE((int) groups.size(), 3);
        QCOMPARE(groups[1].name, std::string("no_decay"));
        QCOMPARE((int) groups[1].params.size(), 4);   // two LayerNorms x (gain, bias)
        QCOMPARE(groups[2].lr_scale, 10.0);
        QCOMPARE((int) groups[2].params.size(), 2);   // one gate vector per layer
        QCOMPARE(groups[0].weight_decay, 0.01);
    }

    void batcher_rows_shards_and_targets() {
        std::vector<int32_t> tokens(103);
        for (int i = 0; i < 103; ++i) tokens[(size_t) i] = i;
        LMBatcher whole(tokens, 4, 10);           // rows of 25 tokens: [0..24], [25..49], ...
        QCOMPARE(whole.row_length(), int64_t(25));
        QCOMPARE(whole.num_batches(), int64_t(3)); // 24 predictions per row: 10 + 10 + 4
        auto last = whole.batch(2, torch::kCPU);
        QCOMPARE(last.input.size(1), int64_t(4));
        QCOMPARE(last.input[1][0].item<int64_t>(), int64_t(45));
        QCOMPARE(last.target[1][3].item<int64_t>(), int64_t(49));
        // Rank 1 of 2 holds rows 2 and 3 of the single-rank layout.
        LMBatcher shard(tokens, 4, 10, 1, 2);
        QVERIFY(torch::equal(shard.batch(0, torch::kCPU).input, whole.batch(0, torch::kCPU).input.narrow(0, 2, 2)));
        // Rolls are per global row: the shard rolls exactly like the same rows of the whole.
        whole.roll_for_epoch(5, 1);
        shard.roll_for_epoch(5, 1);
        QVERIFY(torch::equal(shard.batch(1, torch::kCPU).target, whole.batch(1, torch::kCPU).target.narrow(0, 2, 2)));
        auto rolled = whole.batch(0, torch::kCPU).input;
        LMBatcher plain(tokens, 4, 10);
        QVERIFY(!torch::equal(rolled, plain.batch(0, torch::kCPU).input));
        // A roll is a rotation of the row: the same tokens.
        QCOMPARE(std::get<0>(torch::sort(rolled[0])).sum().item<int64_t>() > 0, true);
    }

    // A run with two ranks killed while writing step 300 left memory-rank0 and memory-rank1 in the staging folder; the
    // one-rank run that resumes writes step 300 again: its checkpoint must hold its own memory file only.
    void a_killed_attempts_staging_folder_is_started_afresh() {
        QTemporaryDir dir;
        const std::string run = dir.path().toStdString();
        LanguageModel model(small());
        const std::string staging = checkpoint_staging_dir(run, "train", 300);
        checkpoint_write_memory(staging, 0, model->initial_memory(2, torch::TensorOptions()));
        checkpoint_write_memory(staging, 1, model->initial_memory(2, torch::TensorOptions()));
        QVERIFY(QFile::exists(QString::fromStdString(staging + "/memory-rank1.safetensors")));
        checkpoint_create_staging(staging);
        QVERIFY(QDir(QString::fromStdString(staging)).isEmpty());
        checkpoint_write_memory(staging, 0, model->initial_memory(2, torch::TensorOptions()));
        TrainingState state;
        state.step = 300;
        const std::string path = checkpoint_commit(run, staging, *model, nullptr, state, 2);
        QCOMPARE(QDir(QString::fromStdString(path)).entryList(QDir::Files), (QStringList{"memory-rank0.safetensors", "model.safetensors", "state.json"}));
        QFile state_file(QString::fromStdString(path + "/state.json"));
        QVERIFY(state_file.open(QIODevice::ReadOnly));
        const auto manifest = nlohmann::json::parse(state_file.readAll().toStdString())["manifest"];
        QVERIFY(manifest.contains("memory-rank0.safetensors") && !manifest.contains("memory-rank1.safetensors"));
    }

    void checkpoint_round_trip_and_refusals() {
        QTemporaryDir dir;
        const std::string run = dir.path().toStdString();
        LanguageModel model(small());
        OptimizerConfig oc;
        Optimizer opt(oc, make_param_groups(*model, 0.0, 1.0));
        TrainingState state;
        state.step = 400;
        state.tokens = 1234;
        const std::string staging = checkpoint_staging_dir(run, "train", 400);
        checkpoint_write_memory(staging, 0, model->initial_memory(2, torch::TensorOptions()));
        const std::string path = checkpoint_commit(run, staging, *model, &opt, state, 2);
        QCOMPARE(path, run + "/checkpoints/train-00000400");
        QVERIFY(!QDir(QString::fromStdString(staging)).exists());
        auto loaded = checkpoint_load(path, 0);
        QCOMPARE(loaded.state.step, int64_t(400));
        QCOMPARE(loaded.state.tokens, int64_t(1234));
        LanguageModel other(small());
        checkpoint_load_model(loaded, *other, false);
        for (auto & [name, t] : module_state(*other)) QVERIFY2(torch::equal(t, module_state(*model).at(name)), name.c_str());
        QCOMPARE((int) checkpoint_memory(loaded, 2, torch::kCPU).size(), 2);

        auto refused = [&](const std::string & checkpoint, const ModelConfig & config, const std::string & message) {
            try {
                auto c = checkpoint_load(checkpoint);
                LanguageModel target(config);
                checkpoint_load_model(c, *target, false);
                QFAIL(("accepted: " + message).c_str());
            } catch (const FormatError & e) {
                QCOMPARE(QString::fromStdString(e.what()), QString::fromStdString(message));
            }
        };
        ModelConfig fewer = small();
        fewer.heads_per_layer = {2, 1};
        fewer.share_r_bias = false;
        refused(path, fewer, "checkpoint " + path + ": layer 1 has 2 heads, config says 1");
        ModelConfig txl = small();
        txl.type = ModelType::TransformerXL;
        refused(path, txl, "checkpoint " + path + ": model type is all_attention, config says transformer_xl");

        // A flipped bit in the weights is caught by the manifest checksum.
        QFile weights(QString::fromStdString(path + "/model.safetensors"));
        QVERIFY(weights.open(QIODevice::ReadWrite));
        weights.seek(weights.size() - 3);
        char byte = 0;
        weights.getChar(&byte);
        weights.seek(weights.size() - 3);
        weights.putChar((char) (byte ^ 0x10));
        weights.close();
        refused(path, small(), "checkpoint " + path + ": model.safetensors does not match its checksum (corrupt or truncated)");
        weights.resize(100);
        refused(path, small(), "checkpoint " + path + ": model.safetensors does not match its checksum (corrupt or truncated)");

        // Something that is not ours.
        QDir().mkpath(QString::fromStdString(run + "/foreign"));
        QFile foreign(QString::fromStdString(run + "/foreign/state.json"));
        QVERIFY(foreign.open(QIODevice::WriteOnly));
        foreign.write("{\"epoch\": 3}");
        foreign.close();
        refused(run + "/foreign", small(), "checkpoint " + run + "/foreign: not a Head Pruning Studio checkpoint (foreign file)");
    }

    void checkpoints_rotate_and_keep_the_final_one() {
        QTemporaryDir dir;
        const std::string run = dir.path().toStdString();
        LanguageModel model(small());
        for (int64_t step : {100, 200, 300, 400}) {
            TrainingState state;
            state.step = step;
            state.complete = step == 100;   // pretend an earlier stage's final checkpoint
            checkpoint_commit(run, checkpoint_staging_dir(run, "train", step), *model, nullptr, state, 2);
        }
        auto left = run_list_checkpoints(run, "train");
        QCOMPARE((int) left.size(), 3);
        QCOMPARE(left[0].step, int64_t(100));
        QCOMPARE(left[2].step, int64_t(400));
    }

    // Rank 0 serves the store that the ranks met through; at a run's end it must not return (and exit, closing the
    // store) before every other rank has stopped its group, or their watchdogs poll a closed store.
    void finish_holds_rank_0_until_every_rank_has_stopped() {
        using clock = std::chrono::steady_clock;
        RankInfo info;
        info.world_size = 2;
        info.master_port = 20000 + getpid() % 20000;
        std::atomic<int64_t> late_rank_finishing{0};
        std::string late_rank_error;
        std::thread late_rank([&] {
            try {
                RankInfo mine = info;
                mine.rank = mine.local_rank = 1;
                auto comm = communicator_create(mine, torch::kCPU, 20);
                comm->barrier();
                std::this_thread::sleep_for(std::chrono::milliseconds(400));
                late_rank_finishing = clock::now().time_since_epoch().count();
                comm->finish();
            } catch (const std::exception & e) {
                late_rank_error = e.what();
            }
        });
        auto comm = communicator_create(info, torch::kCPU, 20);
        comm->barrier();
        comm->finish();
        const int64_t rank_0_returned = clock::now().time_since_epoch().count();
        late_rank.join();
        QCOMPARE(QString::fromStdString(late_rank_error), QString());
        QVERIFY(late_rank_finishing > 0);
        QVERIFY2(rank_0_returned >= late_rank_finishing, "rank 0 returned before rank 1 had begun to finish");
    }
};

QTEST_GUILESS_MAIN(TestTraining)
#include "test_training.moc"
