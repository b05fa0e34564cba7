// Gate heatmap: rows = layers, columns = heads, colour = P(open) or log_alpha, closed heads crossed out, open-head
// counts per layer on the right axis, and a step slider that replays every gates event received so far.
#pragma once

#include <QVector>
#include <QWidget>

#include "gatematrix.h"

class QComboBox;
class QCustomPlot;
class QCPColorMap;
class QCPColorScale;
class QCPGraph;
class QCPItemText;
class QLabel;
class QSlider;

namespace studio {

class GateHeatmapWidget : public QWidget {
    Q_OBJECT
public:
    explicit GateHeatmapWidget(QWidget * parent = nullptr);

    /// Takes the run's gate history. When the slider sits at the newest snapshot it follows new ones.
    void setHistory(const QVector<GateMatrix> & gates);
    /// Shows snapshot `index` (as the slider does).
    void showIndex(int index);
    int shownIndex() const { return shown_; }
    /// Index of the last snapshot at or before a timeline step; -1 if none.
    static int indexAtStep(const QVector<GateMatrix> & gates, double globalStep);
    void setValueKind(GateMatrix::Value kind);

    // For tests and exports.
    QCustomPlot * plot() const { return plot_; }
    QCPColorMap * colorMap() const { return map_; }
    QCPGraph * closedMarks() const { return closed_; }
    /// The right-axis label of each layer, e.g. "3/8".
    QStringList layerCountLabels() const;

private:
    void redraw();

    QCustomPlot * plot_ = nullptr;
    QCPColorMap * map_ = nullptr;
    QCPColorScale * scale_ = nullptr;
    QCPGraph * closed_ = nullptr;
    QCPItemText * emptyHint_ = nullptr;
    QComboBox * valueCombo_ = nullptr;
    QSlider * slider_ = nullptr;
    QLabel * stepLabel_ = nullptr;
    QVector<GateMatrix> gates_;
    int shown_ = -1;
    GateMatrix::Value kind_ = GateMatrix::Value::POpen;
    QString shapeKey_;
};

} // namespace studio
