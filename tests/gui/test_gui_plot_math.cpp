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
    }
};

QTEST_MAIN(TestPlotMath)
#include "test_gui_plot_math.moc"
