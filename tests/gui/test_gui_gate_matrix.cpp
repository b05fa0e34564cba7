// Gates events -> the heatmap's grid: uneven layers padded with NaN, closed heads marked, replay of earlier steps.
#include <QtTest>

#include <cmath>

#include <nlohmann/json.hpp>

#include "gateheatmapwidget.h"
#include "qcp.h"
#include "runhistory.h"

using nlohmann::json;
using studio::GateMatrix;

namespace {
// Layer 0 has 3 heads (head 1 closed), layer 1 has 1 head (open) — a pruned model.
json gatesEvent(int step, double la01) {
    return json{{"event", "gates"}, {"stage", "gate"}, {"step", step},
                {"log_alpha", {{2.0, la01, 0.5}, {1.0}}},
                {"p_open", {{0.88, 1.0 / (1.0 + std::exp(-la01)), 0.62}, {0.73}}},
                {"open", {{true, la01 >= 0, true}, {true}}}};
}
} // namespace

class TestGateMatrix : public QObject {
    Q_OBJECT
private Q_SLOTS:
    void unevenLayersArePaddedWithNan() {
        const GateMatrix m = GateMatrix::fromEvent(gatesEvent(10, -1.5));
        QCOMPARE(m.layers(), 2);
        QCOMPARE(m.maxHeads(), 3);
        QCOMPARE(m.headsInLayer(0), 3);
        QCOMPARE(m.headsInLayer(1), 1);
        QCOMPARE(m.value(0, 0, GateMatrix::Value::LogAlpha), 2.0);
        QCOMPARE(m.value(0, 2, GateMatrix::Value::POpen), 0.62);
        QCOMPARE(m.value(1, 0, GateMatrix::Value::POpen), 0.73);
        QVERIFY(std::isnan(m.value(1, 1, GateMatrix::Value::POpen)));
        QVERIFY(std::isnan(m.value(1, 2, GateMatrix::Value::LogAlpha)));
        QVERIFY(!m.isCell(1, 1));
        QCOMPARE(m.step(), 10LL);
    }

    void closedHeadsAndCounts() {
        const GateMatrix m = GateMatrix::fromEvent(gatesEvent(10, -1.5));
        QVERIFY(m.isOpen(0, 0));
        QVERIFY(!m.isOpen(0, 1));
        QVERIFY(!m.isOpen(1, 2)); // padding is never "open"
        QCOMPARE(m.openInLayer(0), 2);
        QCOMPARE(m.openInLayer(1), 1);
        QCOMPARE(m.openTotal(), 3);
        QCOMPARE(m.headsTotal(), 4);
    }

    void missingOpenAndPOpenAreDerived() {
        const GateMatrix m = GateMatrix::fromEvent(json{{"event", "gates"}, {"step", 3}, {"log_alpha", {{0.0, -2.0}}}});
        QCOMPARE(m.value(0, 0, GateMatrix::Value::POpen), 0.5);
        QVERIFY(m.isOpen(0, 0));   // log_alpha >= 0
        QVERIFY(!m.isOpen(0, 1));
    }

    void heatmapShowsGridMarksAndReplays() {
        studio::RunHistory history;
        history.ingest(json{{"event", "stage_start"}, {"stage", "train"}, {"total_steps", 100}});
        history.ingest(json{{"event", "train"}, {"stage", "train"}, {"step", 100}, {"ppl", 50.0}});
        history.ingest(json{{"event", "stage_start"}, {"stage", "gate"}, {"total_steps", 50}});
        history.ingest(gatesEvent(10, -1.5)); // head (0,1) closed
        history.ingest(gatesEvent(20, 0.7));  // head (0,1) open again
        QCOMPARE(history.gates.size(), 2);
        // Gate-stage steps follow the train stage's on the run's timeline.
        QCOMPARE(history.gates[0].globalStep(), 110.0);
        QCOMPARE(history.gates[1].globalStep(), 120.0);

        studio::GateHeatmapWidget widget;
        widget.resize(600, 400);
        widget.setHistory(history.gates);
        QCOMPARE(widget.shownIndex(), 1); // follows the newest
        QCPColorMapData * data = widget.colorMap()->data();
        QCOMPARE(data->keySize(), 3);
        QCOMPARE(data->valueSize(), 2);
        QCOMPARE(data->cell(2, 0), 0.62);
        QVERIFY(std::isnan(data->cell(1, 1)));
        QCOMPARE(widget.closedMarks()->data()->size(), 0);
        QCOMPARE(widget.layerCountLabels(), QStringList({"3/3", "1/1"}));

        // Replay: back to the first snapshot, where head 1 of layer 0 was closed.
        const int index = studio::GateHeatmapWidget::indexAtStep(history.gates, 115.0);
        QCOMPARE(index, 0);
        widget.showIndex(index);
        QCOMPARE(widget.shownIndex(), 0);
        QCOMPARE(widget.closedMarks()->data()->size(), 1);
        QCOMPARE(widget.closedMarks()->data()->at(0)->key, 1.0);   // head
        QCOMPARE(widget.closedMarks()->data()->at(0)->value, 0.0); // layer
        QCOMPARE(widget.layerCountLabels(), QStringList({"2/3", "1/1"}));
        QVERIFY(std::abs(data->cell(1, 0) - 1.0 / (1.0 + std::exp(1.5))) < 1e-12);

        // While replaying, new snapshots do not yank the view back to the newest.
        history.ingest(gatesEvent(30, 0.9));
        widget.setHistory(history.gates);
        QCOMPARE(widget.shownIndex(), 0);

        widget.setValueKind(GateMatrix::Value::LogAlpha);
        QCOMPARE(data->cell(1, 0), -1.5);
        QCOMPARE(widget.colorMap()->dataRange().upper, 2.0);  // symmetric range around 0
        QCOMPARE(widget.colorMap()->dataRange().lower, -2.0);
        QCOMPARE(studio::GateHeatmapWidget::indexAtStep(history.gates, 5.0), -1);
    }
};

QTEST_MAIN(TestGateMatrix)
#include "test_gui_gate_matrix.moc"
