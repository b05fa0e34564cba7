#include "plotutil.h"

#include <QFileDialog>
#include <QFileInfo>
#include <QMenu>
#include <QRegularExpression>

#include "plotmath.h"
#include "qcp.h"

namespace studio {

void stylePlot(QCustomPlot * plot, const QString & xLabel, const QString & yLabel) {
    plot->xAxis->setLabel(xLabel);
    plot->yAxis->setLabel(yLabel);
    plot->setInteractions(QCP::iRangeDrag | QCP::iRangeZoom);
    plot->legend->setVisible(false);
    plot->legend->setBrush(QColor(255, 255, 255, 210));
    plot->legend->setBorderPen(QPen(QColor(200, 200, 200)));
    QFont small = plot->font();
    small.setPointSizeF(std::max(7.0, small.pointSizeF() - 1));
    plot->legend->setFont(small);
    plot->axisRect()->insetLayout()->setInsetAlignment(0, Qt::AlignTop | Qt::AlignRight);
    for (QCPAxis * axis : {plot->xAxis, plot->yAxis}) {
        axis->grid()->setPen(QPen(QColor(225, 225, 225)));
        axis->setTickLabelFont(small);
    }
    plot->setMinimumHeight(120);
    QObject::connect(plot, &QCustomPlot::mouseWheel, plot, [plot] { plot->setProperty("userRange", true); });
    QObject::connect(plot, &QCustomPlot::mousePress, plot, [plot] { plot->setProperty("userRange", true); });
    QObject::connect(plot, &QCustomPlot::mouseDoubleClick, plot, [plot] {
        plot->setProperty("userRange", false);
        autoRange(plot);
        plot->replot();
    });
    addExportMenu(plot, yLabel.isEmpty() ? QStringLiteral("plot") : yLabel);
}

void setGraphData(QCPGraph * graph, const QVector<double> & x, const QVector<double> & y) {
    QVector<double> xs, ys;
    decimateMinMax(x, y, kMaxPlotPoints, xs, ys);
    graph->setData(xs, ys, /*alreadySorted=*/true);
}

void setStageMarkers(QCustomPlot * plot, const QVector<QPair<double, QString>> & starts) {
    for (int i = plot->itemCount() - 1; i >= 0; --i) {
        if (plot->item(i)->property("stageMarker").toBool()) plot->removeItem(i);
    }
    for (const auto & start : starts) {
        if (start.first <= 0) continue;
        auto * line = new QCPItemStraightLine(plot);
        line->setProperty("stageMarker", true);
        line->setPen(QPen(QColor(150, 150, 150), 1, Qt::DashLine));
        line->point1->setCoords(start.first, 0);
        line->point2->setCoords(start.first, 1);
        auto * label = new QCPItemText(plot);
        label->setProperty("stageMarker", true);
        label->setText(start.second);
        label->setColor(QColor(120, 120, 120));
        label->setPositionAlignment(Qt::AlignLeft | Qt::AlignTop);
        label->position->setTypeX(QCPItemPosition::ptPlotCoords);
        label->position->setTypeY(QCPItemPosition::ptAxisRectRatio);
        label->position->setCoords(start.first, 0.02);
    }
}

void autoRange(QCustomPlot * plot) {
    if (plot->property("userRange").toBool()) return;
    bool any = false;
    for (int i = 0; i < plot->graphCount(); ++i) any = any || !plot->graph(i)->data()->isEmpty();
    if (!any) return;
    plot->rescaleAxes(/*onlyVisiblePlottables=*/true);
    // Markers at the extremes would be cut in half without a little room on x too.
    if (plot->property("padX").toBool()) {
        const QCPRange rx = plot->xAxis->range();
        const double padX = rx.size() > 0 ? rx.size() * 0.05 : 1.0;
        plot->xAxis->setRange(rx.lower - padX, rx.upper + padX);
    }
    // A little air above and below, multiplicative on a log axis.
    QCPAxis * y = plot->yAxis;
    const QCPRange r = y->range();
    if (y->scaleType() == QCPAxis::stLogarithmic) y->setRange(r.lower / 1.1, r.upper * 1.1);
    else {
        const double pad = r.size() > 0 ? r.size() * 0.05 : std::max(1e-3, std::abs(r.center()) * 0.05);
        y->setRange(r.lower - pad, r.upper + pad);
    }
}

void addExportMenu(QCustomPlot * plot, const QString & baseName) {
    plot->setContextMenuPolicy(Qt::CustomContextMenu);
    QObject::connect(plot, &QWidget::customContextMenuRequested, plot, [plot, baseName](const QPoint & pos) {
        QMenu menu(plot);
        QString name = baseName;
        name.replace(QRegularExpression(QStringLiteral("[^A-Za-z0-9_.-]+")), QStringLiteral("-"));
        QAction * png = menu.addAction(QObject::tr("Save as PNG..."));
        QAction * pdf = menu.addAction(QObject::tr("Save as PDF..."));
        QAction * chosen = menu.exec(plot->mapToGlobal(pos));
        if (!chosen) return;
        const bool isPng = chosen == png;
        const QString path = QFileDialog::getSaveFileName(plot, QObject::tr("Export plot"), name + (isPng ? ".png" : ".pdf"),
                                                          isPng ? QStringLiteral("PNG (*.png)") : QStringLiteral("PDF (*.pdf)"));
        if (!path.isEmpty()) savePlot(plot, path);
    });
}

bool savePlot(QCustomPlot * plot, const QString & path, int width, int height) {
    const QString suffix = QFileInfo(path).suffix().toLower();
    if (suffix == "png") return plot->savePng(path, width, height);
    if (suffix == "pdf") return plot->savePdf(path, width, height);
    return false;
}

} // namespace studio
