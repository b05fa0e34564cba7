#include "gateheatmapwidget.h"

#include <QComboBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QSlider>
#include <QVBoxLayout>

#include <cmath>

#include "plotutil.h"
#include "qcp.h"

namespace studio {

namespace {
QCPColorGradient openGradient() {
    // Light for closed, deep blue for open, so the red crosses on closed heads stand out.
    QCPColorGradient g;
    g.clearColorStops();
    g.setColorStopAt(0.0, QColor(247, 244, 236));
    g.setColorStopAt(0.5, QColor(120, 170, 214));
    g.setColorStopAt(1.0, QColor(8, 48, 107));
    g.setNanHandling(QCPColorGradient::nhTransparent);
    return g;
}
QCPColorGradient logAlphaGradient() {
    QCPColorGradient g(QCPColorGradient::gpPolar);
    g.setNanHandling(QCPColorGradient::nhTransparent);
    return g;
}
} // namespace

GateHeatmapWidget::GateHeatmapWidget(QWidget * parent) : QWidget(parent) {
    auto * layout = new QVBoxLayout(this);
    layout->setContentsMargins(0, 0, 0, 0);

    auto * top = new QHBoxLayout;
    auto * title = new QLabel(tr("<b>Head gates</b>"));
    valueCombo_ = new QComboBox;
    valueCombo_->addItem(tr("P(open)"));
    valueCombo_->addItem(tr("log \u03b1"));
    top->addWidget(title);
    top->addStretch(1);
    top->addWidget(new QLabel(tr("Colour:")));
    top->addWidget(valueCombo_);
    layout->addLayout(top);
    connect(valueCombo_, QOverload<int>::of(&QComboBox::currentIndexChanged), this, [this](int i) {
        setValueKind(i == 0 ? GateMatrix::Value::POpen : GateMatrix::Value::LogAlpha);
    });

    plot_ = new QCustomPlot(this);
    plot_->setMinimumSize(300, 240);
    plot_->axisRect()->setupFullAxesBox(true);
    plot_->xAxis->setLabel(tr("head"));
    plot_->yAxis->setLabel(tr("layer"));
    plot_->yAxis2->setLabel(tr("open / heads"));
    plot_->yAxis->setRangeReversed(true); // layer 0 on top, as the model is usually drawn
    plot_->yAxis2->setRangeReversed(true);
    for (QCPAxis * a : {plot_->xAxis, plot_->yAxis, plot_->yAxis2, plot_->xAxis2}) {
        a->grid()->setVisible(false);
        a->setSubTicks(false);
    }
    plot_->xAxis2->setTickLabels(false);
    // Hatched background shows through NaN cells: a layer with fewer heads has no head there.
    plot_->axisRect()->setBackground(QBrush(QColor(200, 200, 200), Qt::BDiagPattern));
    map_ = new QCPColorMap(plot_->xAxis, plot_->yAxis);
    map_->setInterpolate(false);
    map_->setTightBoundary(false); // cells centred on integer head / layer indices
    scale_ = new QCPColorScale(plot_);
    plot_->plotLayout()->addElement(0, 1, scale_);
    scale_->setType(QCPAxis::atRight);
    scale_->setBarWidth(10);
    map_->setColorScale(scale_);
    auto * group = new QCPMarginGroup(plot_);
    plot_->axisRect()->setMarginGroup(QCP::msBottom | QCP::msTop, group);
    scale_->setMarginGroup(QCP::msBottom | QCP::msTop, group);
    closed_ = plot_->addGraph(plot_->xAxis, plot_->yAxis);
    closed_->setLineStyle(QCPGraph::lsNone);
    closed_->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssCross, QPen(QColor(211, 47, 47), 2.2), Qt::NoBrush, 12));
    closed_->setName(tr("closed"));
    emptyHint_ = new QCPItemText(plot_);
    emptyHint_->position->setType(QCPItemPosition::ptAxisRectRatio);
    emptyHint_->position->setCoords(0.5, 0.5);
    emptyHint_->setText(tr("No gates events yet.\nThey arrive during the gate stage."));
    emptyHint_->setColor(QColor(110, 110, 110));
    emptyHint_->setBrush(QBrush(Qt::white));
    emptyHint_->setPadding(QMargins(8, 6, 8, 6));
    addExportMenu(plot_, QStringLiteral("gates"));
    layout->addWidget(plot_, 1);

    auto * bottom = new QHBoxLayout;
    slider_ = new QSlider(Qt::Horizontal);
    slider_->setRange(0, 0);
    slider_->setEnabled(false);
    stepLabel_ = new QLabel(tr("no gates yet"));
    stepLabel_->setMinimumWidth(170);
    bottom->addWidget(new QLabel(tr("Replay:")));
    bottom->addWidget(slider_, 1);
    bottom->addWidget(stepLabel_);
    layout->addLayout(bottom);
    connect(slider_, &QSlider::valueChanged, this, &GateHeatmapWidget::showIndex);

    setValueKind(GateMatrix::Value::POpen);
}

int GateHeatmapWidget::indexAtStep(const QVector<GateMatrix> & gates, double globalStep) {
    int found = -1;
    for (int i = 0; i < gates.size(); ++i) {
        if (gates[i].globalStep() <= globalStep) found = i;
    }
    return found;
}

void GateHeatmapWidget::setHistory(const QVector<GateMatrix> & gates) {
    const bool following = shown_ < 0 || shown_ >= gates_.size() - 1 || shown_ >= gates.size();
    gates_ = gates;
    const QSignalBlocker block(slider_);
    slider_->setEnabled(gates_.size() > 1);
    slider_->setRange(0, std::max(0, (int) gates_.size() - 1));
    const int index = gates_.isEmpty() ? -1 : following ? (int) gates_.size() - 1 : shown_;
    slider_->setValue(std::max(index, 0));
    shown_ = index;
    redraw();
}

void GateHeatmapWidget::showIndex(int index) {
    if (gates_.isEmpty()) { shown_ = -1; redraw(); return; }
    shown_ = std::clamp(index, 0, (int) gates_.size() - 1);
    if (slider_->value() != shown_) {
        const QSignalBlocker block(slider_);
        slider_->setValue(shown_);
    }
    redraw();
}

void GateHeatmapWidget::setValueKind(GateMatrix::Value kind) {
    kind_ = kind;
    const bool p = kind == GateMatrix::Value::POpen;
    map_->setGradient(p ? openGradient() : logAlphaGradient());
    scale_->axis()->setLabel(p ? tr("P(open)") : tr("log \u03b1"));
    if (valueCombo_->currentIndex() != (p ? 0 : 1)) {
        const QSignalBlocker block(valueCombo_);
        valueCombo_->setCurrentIndex(p ? 0 : 1);
    }
    redraw();
}

QStringList GateHeatmapWidget::layerCountLabels() const {
    QStringList out;
    if (shown_ < 0) return out;
    const GateMatrix & m = gates_[shown_];
    for (int l = 0; l < m.layers(); ++l) out << QStringLiteral("%1/%2").arg(m.openInLayer(l)).arg(m.headsInLayer(l));
    return out;
}

void GateHeatmapWidget::redraw() {
    if (shown_ < 0 || shown_ >= gates_.size()) {
        map_->data()->clear();
        closed_->data()->clear();
        stepLabel_->setText(tr("no gates yet"));
        emptyHint_->setVisible(true);
        plot_->yAxis2->setTickLabels(false);
        plot_->replot(QCustomPlot::rpQueuedReplot);
        return;
    }
    const GateMatrix & m = gates_[shown_];
    emptyHint_->setVisible(false);
    const int layers = m.layers(), heads = m.maxHeads();
    map_->data()->setSize(heads, layers);
    map_->data()->setRange(QCPRange(0, heads - 1), QCPRange(0, layers - 1));
    QVector<double> cx, cy;
    double lo = INFINITY, hi = -INFINITY;
    for (int l = 0; l < layers; ++l) {
        for (int h = 0; h < heads; ++h) {
            const double v = m.value(l, h, kind_);
            map_->data()->setCell(h, l, v);
            if (std::isfinite(v)) { lo = std::min(lo, v); hi = std::max(hi, v); }
            if (m.isCell(l, h) && !m.isOpen(l, h)) { cx << h; cy << l; }
        }
    }
    closed_->setData(cx, cy);
    if (kind_ == GateMatrix::Value::POpen) {
        map_->setDataRange(QCPRange(0, 1));
    } else {
        // Symmetric around 0 so that white means "on the edge" between open and closed.
        const double r = std::max({std::abs(lo), std::abs(hi), 1e-3});
        map_->setDataRange(QCPRange(-r, r));
    }

    const QString shape = QStringLiteral("%1x%2").arg(layers).arg(heads);
    QSharedPointer<QCPAxisTickerText> left(new QCPAxisTickerText), right(new QCPAxisTickerText), bottom(new QCPAxisTickerText);
    for (int l = 0; l < layers; ++l) {
        left->addTick(l, QString::number(l));
        right->addTick(l, QStringLiteral("%1/%2").arg(m.openInLayer(l)).arg(m.headsInLayer(l)));
    }
    for (int h = 0; h < heads; ++h) bottom->addTick(h, QString::number(h));
    plot_->yAxis->setTicker(left);
    plot_->yAxis2->setTicker(right);
    plot_->yAxis2->setTickLabels(true);
    plot_->xAxis->setTicker(bottom);
    if (shape != shapeKey_) {
        shapeKey_ = shape;
        plot_->xAxis->setRange(-0.5, heads - 0.5);
        plot_->yAxis->setRange(-0.5, layers - 0.5);
        plot_->yAxis2->setRange(-0.5, layers - 0.5);
    }
    closed_->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssCross, QPen(QColor(211, 47, 47), 2.2), Qt::NoBrush,
                                             std::clamp(plot_->axisRect()->height() / std::max(layers, 1) / 2, 5, 16)));
    stepLabel_->setText(tr("%1 step %2 \u2014 %3/%4 open")
                            .arg(m.stage().isEmpty() ? tr("gate") : m.stage())
                            .arg(m.step())
                            .arg(m.openTotal())
                            .arg(m.headsTotal()));
    plot_->replot(QCustomPlot::rpQueuedReplot);
}

} // namespace studio
