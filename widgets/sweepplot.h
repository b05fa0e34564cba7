// The sweep view's content, shared by the GUI and the headless `studio plot-sweep`: layer parameters against
// perplexity per run, one colour per model type, and the Pareto front (fewer parameters and lower ppl) as a step line.
#pragma once

#include <QString>
#include <QVector>

#include "runsummary.h"

class QCustomPlot;

namespace studio {

struct SweepPoint {
    QString name;
    QString group;      // model type
    double params = 0;  // layer parameters
    double ppl = 0;
};

/// Runs with both numbers known. preferValid picks best valid ppl first (else test), otherwise test first.
QVector<SweepPoint> sweepPoints(const QVector<RunSummary> & runs, bool preferValid);
/// Clears the plot and draws the scatter groups, the Pareto front and the run names.
void drawSweep(QCustomPlot * plot, const QVector<SweepPoint> & points, const QString & pplLabel);
/// One line per run: name,model_type,status,heads_kept,layer_params,best_valid_ppl,test_ppl.
QString sweepCsv(const QVector<RunSummary> & runs);
/// Reads that CSV back (scripts/results.py writes it too, with more columns, which are ignored except "label": when
/// present it names the point on the plot). Empty with *error set when a needed column is missing.
QVector<RunSummary> sweepRunsFromCsv(const QString & text, QString * error);
/// "All-attention" for all_attention, "Transformer-XL" for transformer_xl: the legend's names.
QString modelTypeLabel(const QString & type);

} // namespace studio
