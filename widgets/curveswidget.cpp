#include "curveswidget.h"

#include <QHBoxLayout>
#include <QLabel>
#include <QSlider>
#include <QTabWidget>
#include <QVBoxLayout>

#include "plotmath.h"
#include "plotutil.h"
#include "qcp.h"

namespace studio {

namespace {
const QColor kTrain(31, 119, 180);
const QColor kValid(255, 127, 14);

QColor faint(QColor c) { c.setAlpha(60); return c; }

// Adds a faint raw graph and a solid smoothed graph on top; returns the raw one (the smoothed one follows it).
QCPGraph * addPair(QCustomPlot * plot, const QString & name, const QColor & color) {
    QCPGraph * raw = plot->addGraph();
    raw->setPen(QPen(faint(color), 1));
    raw->removeFromLegend();
    QCPGraph * smooth = plot->addGraph();
    smooth->setName(name);
    smooth->setPen(QPen(color, 1.8));
    return raw;
}

void setPair(QCPGraph * raw, const Series & s, double weight) {
    QCustomPlot * plot = raw->parentPlot();
    QCPGraph * smooth = plot->graph(raw->property("index").toInt() + 1);
    setGraphData(raw, s.x, s.y);
    setGraphData(smooth, s.x, weight > 0 ? smoothEma(s.y, weight) : s.y);
    raw->setVisible(weight > 0);
}

QCustomPlot * makePlot(const QString & yLabel, bool log) {
    auto * plot = new QCustomPlot;
    stylePlot(plot, QObject::tr("step"), yLabel);
    if (log) {
        plot->yAxis->setScaleType(QCPAxis::stLogarithmic);
        QSharedPointer<QCPAxisTickerLog> ticker(new QCPAxisTickerLog);
        ticker->setSubTickCount(8);
        plot->yAxis->setTicker(ticker);
        plot->yAxis->setNumberFormat(QStringLiteral("gb"));
        plot->yAxis->setRange(1, 1000); // until data arrives: a range perplexities live in
    }
    return plot;
}
} // namespace

CurvesWidget::CurvesWidget(QWidget * parent) : QWidget(parent) {
    auto * layout = new QVBoxLayout(this);
    layout->setContentsMargins(0, 0, 0, 0);
    auto * top = new QHBoxLayout;
    slider_ = new QSlider(Qt::Horizontal);
    slider_->setRange(0, 99);
    slider_->setValue(60);
    slider_->setMaximumWidth(220);
    sliderLabel_ = new QLabel;
    sliderLabel_->setMinimumWidth(36);
    top->addWidget(new QLabel(tr("<b>Training curves</b>")));
    top->addStretch(1);
    top->addWidget(new QLabel(tr("Smoothing:")));
    top->addWidget(slider_);
    top->addWidget(sliderLabel_);
    layout->addLayout(top);
    connect(slider_, &QSlider::valueChanged, this, [this] { redraw(); });

    tabs_ = new QTabWidget;
    tabs_->setDocumentMode(true);
    ppl_ = makePlot(tr("perplexity"), true);
    loss_ = makePlot(tr("loss"), false);
    lr_ = makePlot(tr("learning rate"), false);
    lr_->yAxis->setNumberFormat(QStringLiteral("gb"));
    speed_ = makePlot(tr("tokens/s"), false);
    for (QCustomPlot * p : {ppl_, loss_}) {
        addPair(p, tr("train"), kTrain)->setProperty("index", 0);
        // Validation points are few and far apart: drawn as measured, never smoothed.
        QCPGraph * valid = p->addGraph();
        valid->setName(tr("valid"));
        valid->setPen(QPen(kValid, 1.8));
        valid->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssDisc, 6));
        p->legend->setVisible(true);
        // Curves fall from the top left, so the bottom left stays free for the legend.
        p->axisRect()->insetLayout()->setInsetAlignment(0, Qt::AlignBottom | Qt::AlignLeft);
    }
    addPair(speed_, tr("tokens/s"), QColor(44, 160, 44))->setProperty("index", 0);
    QCPGraph * lr = lr_->addGraph();
    lr->setPen(QPen(QColor(148, 103, 189), 1.8));
    tabs_->addTab(ppl_, tr("Perplexity"));
    tabs_->addTab(loss_, tr("Loss"));
    tabs_->addTab(lr_, tr("Learning rate"));
    tabs_->addTab(speed_, tr("Tokens/s"));
    layout->addWidget(tabs_, 1);
    redraw();
}

double CurvesWidget::smoothing() const { return slider_->value() / 100.0; }
void CurvesWidget::setSmoothing(double weight) { slider_->setValue((int) std::lround(std::clamp(weight, 0.0, 0.99) * 100)); }

void CurvesWidget::setHistory(const RunHistory & history) {
    history_ = history;
    redraw();
}

void CurvesWidget::redraw() {
    const double w = smoothing();
    sliderLabel_->setText(QString::number(w, 'f', 2));
    const RunHistory & h = history_;
    setPair(ppl_->graph(0), h.trainPpl, w);
    setGraphData(ppl_->graph(2), h.validPpl.x, h.validPpl.y);
    setPair(loss_->graph(0), h.loss, w);
    setGraphData(loss_->graph(2), h.validLoss.x, h.validLoss.y);
    setPair(speed_->graph(0), h.tokensPerSecond, w);
    setGraphData(lr_->graph(0), h.learningRate.x, h.learningRate.y);
    for (QCustomPlot * p : {ppl_, loss_, lr_, speed_}) {
        setStageMarkers(p, h.stageStarts);
        autoRange(p);
        p->replot(QCustomPlot::rpQueuedReplot);
    }
}

} // namespace studio
