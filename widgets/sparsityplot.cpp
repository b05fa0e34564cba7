#include "sparsityplot.h"

#include <QVBoxLayout>

#include "plotutil.h"
#include "qcp.h"

namespace studio {

SparsityPlot::SparsityPlot(QWidget * parent) : QWidget(parent) {
    auto * layout = new QVBoxLayout(this);
    layout->setContentsMargins(0, 0, 0, 0);
    plot_ = new QCustomPlot(this);
    stylePlot(plot_, tr("step"), tr("sparsity"));
    plot_->legend->setVisible(true);
    plot_->axisRect()->insetLayout()->setInsetAlignment(0, Qt::AlignTop | Qt::AlignLeft);
    struct Line { QString name; QColor color; Qt::PenStyle style; };
    const Line lines[] = {{tr("expected"), QColor(31, 119, 180), Qt::SolidLine},
                          {tr("hard"), QColor(214, 39, 40), Qt::SolidLine},
                          {tr("target"), QColor(90, 90, 90), Qt::DashLine}};
    for (const Line & l : lines) {
        QCPGraph * g = plot_->addGraph();
        g->setName(l.name);
        g->setPen(QPen(l.color, 1.8, l.style));
    }
    plot_->yAxis->setRange(0, 1);
    layout->addWidget(plot_);
}

void SparsityPlot::setHistory(const RunHistory & h) {
    setGraphData(plot_->graph(0), h.expectedSparsity.x, h.expectedSparsity.y);
    setGraphData(plot_->graph(1), h.hardSparsity.x, h.hardSparsity.y);
    setGraphData(plot_->graph(2), h.targetSparsity.x, h.targetSparsity.y);
    setStageMarkers(plot_, h.stageStarts);
    if (!plot_->property("userRange").toBool()) {
        plot_->xAxis->rescale(true);
        double top = 0.05;
        for (const Series * s : {&h.expectedSparsity, &h.hardSparsity, &h.targetSparsity}) {
            for (double v : s->y) top = std::max(top, v);
        }
        // Sparsity is a fraction: keep 0 in view and leave room for the legend.
        plot_->yAxis->setRange(0, std::min(1.0, top * 1.25));
    }
    plot_->replot(QCustomPlot::rpQueuedReplot);
}

} // namespace studio
