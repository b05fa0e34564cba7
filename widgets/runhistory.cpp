#include "runhistory.h"

#include <algorithm>
#include <cmath>

#include "jsonutil.h"

namespace studio {

double RunHistory::globalStep(const QString & stage, double step) const {
    auto it = stageOffset_.find(stage);
    return (it == stageOffset_.end() ? 0.0 : it->second) + step;
}

double RunHistory::offsetFor(const QString & stage) {
    auto it = stageOffset_.find(stage);
    if (it != stageOffset_.end()) return it->second;
    const double offset = maxGlobalStep_;
    stageOffset_[stage] = offset;
    return offset;
}

void RunHistory::ingest(const nlohmann::json & e) {
    if (!e.is_object()) return;
    ++eventCount;
    const QString type = jsonString(e, "event");
    const QString stage = jsonString(e, "stage");
    if (type == "run_start") {
        name = jsonString(e, "name", name);
        if (e.contains("model") && e["model"].is_object()) {
            model = e["model"];
            modelType = jsonString(model, "type", modelType);
        }
        endStatus.clear(); // a resumed run is running again
    } else if (type == "stage_start") {
        lastStage = stage;
        if (stage == "train" || stage == "gate") {
            const double offset = offsetFor(stage);
            if (stageStarts.isEmpty() || stageStarts.last().second != stage) stageStarts.push_back({offset, stage});
        }
    } else if (type == "train") {
        const double x = offsetFor(stage.isEmpty() ? QStringLiteral("train") : stage) + jsonNumber(e, "step", 0);
        maxGlobalStep_ = std::max(maxGlobalStep_, x);
        auto add = [&](Series & s, const char * key) {
            const double v = jsonNumber(e, key);
            if (std::isfinite(v)) s.append(x, v);
        };
        add(loss, "loss");
        add(trainPpl, "ppl");
        add(learningRate, "lr");
        add(tokensPerSecond, "tokens_per_s");
        add(expectedSparsity, "expected_sparsity");
        add(hardSparsity, "hard_sparsity");
        add(targetSparsity, "target_sparsity");
        add(l0Coefficient, "l0_coefficient");
    } else if (type == "gates") {
        GateMatrix m = GateMatrix::fromEvent(e);
        if (!m.isEmpty()) {
            const double x = offsetFor(stage.isEmpty() ? QStringLiteral("gate") : stage) + (double) m.step();
            maxGlobalStep_ = std::max(maxGlobalStep_, x);
            m.setGlobalStep(x);
            gates.push_back(std::move(m));
        }
    } else if (type == "eval") {
        // Evals after training (the eval stage) sit at the end of the timeline.
        const double x = (stage == "train" || stage == "gate") ? offsetFor(stage) + jsonNumber(e, "step", 0) : maxGlobalStep_;
        const QString split = jsonString(e, "split");
        const double ppl = jsonNumber(e, "ppl");
        if (split == "valid") {
            if (std::isfinite(ppl)) validPpl.append(x, ppl);
            const double l = jsonNumber(e, "loss");
            if (std::isfinite(l)) validLoss.append(x, l);
        } else if (split == "test" && std::isfinite(ppl)) {
            testPpl.append(x, ppl);
        }
    } else if (type == "prune") {
        lastPrune = e;
    } else if (type == "bench") {
        if (e.contains("rows") && e["rows"].is_array()) benchRows = e["rows"];
    } else if (type == "error") {
        errorMessage = jsonString(e, "message", QStringLiteral("error"));
    } else if (type == "run_end") {
        endStatus = jsonString(e, "status", QStringLiteral("ok"));
    }
}

QString historyCsv(const RunHistory & h) {
    QString out = QStringLiteral("series,step,value\n");
    const std::pair<const char *, const Series *> all[] = {
        {"train_loss", &h.loss}, {"train_ppl", &h.trainPpl}, {"lr", &h.learningRate}, {"tokens_per_s", &h.tokensPerSecond},
        {"expected_sparsity", &h.expectedSparsity}, {"hard_sparsity", &h.hardSparsity}, {"target_sparsity", &h.targetSparsity},
        {"l0_coefficient", &h.l0Coefficient}, {"valid_loss", &h.validLoss}, {"valid_ppl", &h.validPpl}, {"test_ppl", &h.testPpl}};
    for (const auto & [name, s] : all) {
        for (int i = 0; i < s->size(); ++i) {
            out += QStringLiteral("%1,%2,%3\n").arg(QLatin1String(name)).arg(s->x[i], 0, 'g', 12).arg(s->y[i], 0, 'g', 10);
        }
    }
    return out;
}

} // namespace studio
