// Sparsity over steps: expected (from the gate distributions), hard (fraction of closed heads) and the target.
#pragma once

#include <QWidget>

#include "runhistory.h"

class QCustomPlot;

namespace studio {

class SparsityPlot : public QWidget {
    Q_OBJECT
public:
    explicit SparsityPlot(QWidget * parent = nullptr);
    void setHistory(const RunHistory & history);
    QCustomPlot * plot() const { return plot_; }

private:
    QCustomPlot * plot_ = nullptr;
};

} // namespace studio
