// Smoothing, decimation and the Pareto front against values worked out by hand.
#include <QtTest>

#include <cmath>

#include "plotmath.h"
#include "qcp.h"
#include "runsummary.h"
#include "sweepplot.h"

using namespace studio;

namespace {
bool near(double a, double b) { return std::abs(a - b) < 1e-9; }
} // namespace

class TestPlotMath : public QObject {
    Q_OBJECT
private Q_SLOTS:
    void emaIsDebiased() {
        // w = 0.5: last = 0.5, 1.25, 2.125; debias 0.5, 0.75, 0.875 -> 1, 5/3, 17/7.
        const QVector<double> s = smoothEma({1, 2, 3}, 0.5);
        QCOMPARE(s.size(), 3);
        QVERIFY(near(s[0], 1.0));
        QVERIFY(near(s[1], 5.0 / 3.0));
        QVERIFY(near(s[2], 17.0 / 7.0));
    }

    void emaZeroWeightIsIdentityAndNanPassesThrough() {
        QCOMPARE(smoothEma({4, 1, 7}, 0.0), QVector<double>({4, 1, 7}));
        const QVector<double> s = smoothEma({1, NAN, 3}, 0.5);
        QVERIFY(near(s[0], 1.0));
        QVERIFY(std::isnan(s[1]));
        QVERIFY(near(s[2], (0.25 + 1.5) / 0.75)); // the NaN did not count as a step
    }

    void decimationKeepsEndsAndBucketExtremes() {
        const QVector<double> x{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
        const QVector<double> y{0, 5, 1, 2, 9, 3, 4, -1, 6, 7};
        QVector<double> xo, yo;
        // 8 interior points, 2 buckets: [1..4] min at 2 (1), max at 4 (9); [5..8] min at 7 (-1), max at 8 (6).
        decimateMinMax(x, y, 6, xo, yo);
        QCOMPARE(xo, QVector<double>({0, 2, 4, 7, 8, 9}));
        QCOMPARE(yo, QVector<double>({0, 1, 9, -1, 6, 7}));
        decimateMinMax(x, y, 10, xo, yo);
        QCOMPARE(xo, x); // fits: unchanged
        QCOMPARE(yo, y);
    }

    void decimationBoundsLongSeries() {
        QVector<double> x, y;
        for (int i = 0; i < 100000; ++i) { x << i; y << std::sin(i * 0.01); }
        y[54321] = 42; // a spike must survive
        QVector<double> xo, yo;
        decimateMinMax(x, y, 2000, xo, yo);
        QVERIFY(xo.size() <= 2000);
        QVERIFY(yo.contains(42.0));
        QVERIFY(std::is_sorted(xo.begin(), xo.end()));
        QCOMPARE(xo.first(), 0.0);
        QCOMPARE(xo.last(), 99999.0);
    }

    void paretoFrontByHand() {
        // Sorted by cost: (3,50) (5,35) (5,40) (8,28) (10,30) (12,27); the front keeps each new best ppl.
        const QVector<double> cost{10, 5, 8, 5, 12, 3, NAN};
        const QVector<double> ppl{30, 40, 28, 35, 27, 50, 1};
        QCOMPARE(paretoFront(cost, ppl), QVector<int>({5, 3, 2, 4}));
        QCOMPARE(paretoFront({}, {}), QVector<int>());
    }

    void sweepDrawsFrontAsStepLine() {
        QVector<RunSummary> runs(3);
        runs[0].name = "big"; runs[0].modelType = "all_attention"; runs[0].layerParams = 100; runs[0].bestValidPpl = 30; runs[0].lastTestPpl = 29;
        runs[1].name = "small"; runs[1].modelType = "all_attention"; runs[1].layerParams = 50; runs[1].bestValidPpl = 33;
        runs[2].name = "worse"; runs[2].modelType = "transformer_xl"; runs[2].layerParams = 80; runs[2].bestValidPpl = 40;
        const auto points = sweepPoints(runs, /*preferValid=*/false);
        QCOMPARE(points.size(), 3);
        QCOMPARE(points[0].ppl, 29.0); // test wins when not preferring valid
        QCOMPARE(points[1].ppl, 33.0); // no test: valid
        QCustomPlot plot;
        plot.resize(600, 400);
        drawSweep(&plot, points, "ppl");
        QCOMPARE(plot.graphCount(), 3); // front + two model types
        QCPGraph * front = plot.graph(0);
        QCOMPARE(front->lineStyle(), QCPGraph::lsStepLeft);
        QCOMPARE(front->data()->size(), 2);
        QCOMPARE(front->data()->at(0)->key, 50.0);
        QCOMPARE(front->data()->at(1)->key, 100.0);
        QVERIFY(plot.toPixmap(600, 400).width() == 600);
        const QString csv = sweepCsv(runs);
        QVERIFY(csv.startsWith("name,model_type,status,heads_kept,layer_params,best_valid_ppl,test_ppl\n"));
        QVERIFY(csv.contains("\nbig,all_attention,stopped,,100,30,29\n"));
        // The legend names the model types as people write them.
        QCOMPARE(plot.graph(1)->name(), QString("All-attention"));
        QCOMPARE(plot.graph(2)->name(), QString("Transformer-XL"));
    }

    void sweepCsvReadsBackWithExtraColumns() {
        QVector<RunSummary> runs(2);
        runs[0].name = "a, \"quoted\""; runs[0].modelType = "all_attention"; runs[0].endStatus = "ok"; runs[0].headsKept = 100;
        runs[0].layerParams = 4.5e7; runs[0].bestValidPpl = 30.5; runs[0].lastTestPpl = 29.25;
        runs[1].name = "b"; runs[1].modelType = "transformer_xl"; runs[1].layerParams = 5e7; runs[1].bestValidPpl = 40;
        QString error;
        const QVector<RunSummary> back = sweepRunsFromCsv(sweepCsv(runs), &error);
        QCOMPARE(back.size(), 2);
        QCOMPARE(back[0].name, runs[0].name);
        QCOMPARE(back[0].modelType, QString("all_attention"));
        QCOMPARE(back[0].status(false, false), QString("finished"));
        QCOMPARE(back[0].headsKept, 100LL);
        QCOMPARE(back[0].layerParams, 4.5e7);
        QCOMPARE(back[0].lastTestPpl, 29.25);
        QCOMPARE(back[1].headsKept, -1LL);
        QVERIFY(std::isnan(back[1].lastTestPpl));
        QCOMPARE(back[1].sweepPpl(false), 40.0);

        // scripts/results.py's columns: a label names the point; unknown columns are ignored; CRLF is fine.
        const QString results = "name,model_type,status,heads_kept,layer_params,best_valid_ppl,test_ppl,label,l0_coefficient\r\n"
                                "wt2-txl-16l,transformer_xl,finished,128,54607872,101.5,98.25,dense,\r\n"
                                "wt2-all-16l-sweep-l0_coefficient-0.001,all_attention,finished,100,42000000,99,97,l0 0.001,0.001\r\n";
        const QVector<RunSummary> rows = sweepRunsFromCsv(results, &error);
        QCOMPARE(rows.size(), 2);
        QCOMPARE(rows[0].name, QString("dense"));
        QCOMPARE(rows[1].name, QString("l0 0.001"));
        QCOMPARE(rows[1].layerParams, 42000000.0);
        const auto points = sweepPoints(rows, false);
        QCOMPARE(points.size(), 2);
        QCOMPARE(points[0].ppl, 98.25);

        QVERIFY(sweepRunsFromCsv("name,status\nx,finished\n", &error).isEmpty());
        QCOMPARE(error, QString("needs the columns name, model_type, layer_params and best_valid_ppl or test_ppl"));
    }
};

QTEST_MAIN(TestPlotMath)
#include "test_gui_plot_math.moc"
