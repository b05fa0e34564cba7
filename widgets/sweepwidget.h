// Sweep view: the runs selected in the list, as parameters against perplexity with the Pareto front; exports the plot
// (PNG, PDF) and the metrics (CSV).
#pragma once

#include <QVector>
#include <QWidget>

#include "runsummary.h"

class QComboBox;
class QCustomPlot;
class QLabel;

namespace studio {

class SweepWidget : public QWidget {
    Q_OBJECT
public:
    explicit SweepWidget(QWidget * parent = nullptr);
    void setRuns(const QVector<RunSummary> & runs);
    QCustomPlot * plot() const { return plot_; }

private:
    void redraw();
    void exportPlot(const QString & suffix);
    void exportCsv();

    QComboBox * metric_ = nullptr;
    QLabel * info_ = nullptr;
    QCustomPlot * plot_ = nullptr;
    QVector<RunSummary> runs_;
};

} // namespace studio
