// Shared plot plumbing: house look, decimated data, stage markers, autoscale that yields to the user, and the
// right-click export to PNG / PDF every plot offers.
#pragma once

#include <QString>
#include <QVector>

#include "runhistory.h"

class QCustomPlot;
class QCPGraph;

namespace studio {

/// Points kept per drawn series (min/max bucketing) so that a 300 ms redraw stays cheap on long runs.
constexpr int kMaxPlotPoints = 2000;

void stylePlot(QCustomPlot * plot, const QString & xLabel, const QString & yLabel);
/// Sets graph data, decimated to kMaxPlotPoints.
void setGraphData(QCPGraph * graph, const QVector<double> & x, const QVector<double> & y);
/// Dashed vertical lines where the train and gate stages begin (skipped at x = 0).
void setStageMarkers(QCustomPlot * plot, const QVector<QPair<double, QString>> & starts);
/// Rescales to the data unless the user has zoomed or dragged since the last double-click. Plots with the
/// property "padX" set also get room left and right (scatter plots).
void autoRange(QCustomPlot * plot);
/// Right-click menu with "Save as PNG..." and "Save as PDF..."; baseName seeds the file name.
void addExportMenu(QCustomPlot * plot, const QString & baseName);
/// Writes PNG or PDF by the file's extension; false if unknown or the write failed.
bool savePlot(QCustomPlot * plot, const QString & path, int width = 0, int height = 0);

} // namespace studio
