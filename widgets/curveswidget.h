// Training curves as tabs: perplexity (log axis, train and valid), loss, learning rate and tokens/s, with a
// TensorBoard-style smoothing slider; the raw line stays drawn faintly under the smoothed one.
#pragma once

#include <QWidget>

#include "runhistory.h"

class QCustomPlot;
class QLabel;
class QSlider;
class QTabWidget;

namespace studio {

class CurvesWidget : public QWidget {
    Q_OBJECT
public:
    explicit CurvesWidget(QWidget * parent = nullptr);
    void setHistory(const RunHistory & history);
    /// EMA weight in [0, 0.99].
    double smoothing() const;
    void setSmoothing(double weight);

    QCustomPlot * pplPlot() const { return ppl_; }
    QCustomPlot * lossPlot() const { return loss_; }
    QCustomPlot * lrPlot() const { return lr_; }
    QCustomPlot * speedPlot() const { return speed_; }

private:
    void redraw();

    QTabWidget * tabs_ = nullptr;
    QSlider * slider_ = nullptr;
    QLabel * sliderLabel_ = nullptr;
    QCustomPlot * ppl_ = nullptr;
    QCustomPlot * loss_ = nullptr;
    QCustomPlot * lr_ = nullptr;
    QCustomPlot * speed_ = nullptr;
    RunHistory history_;
};

} // namespace studio
