// One `gates` event as a layers x heads grid. Layers may have different head counts (a pruned model): cells past a
// layer's count hold NaN so that the heatmap leaves them blank.
#pragma once

#include <QString>
#include <QVector>

#include <nlohmann/json_fwd.hpp>

namespace studio {

class GateMatrix {
public:
    enum class Value { POpen, LogAlpha };

    GateMatrix() = default;
    /// Reads `log_alpha`, `p_open` and `open` of a gates event. `p_open` defaults to sigmoid(log_alpha) and `open` to
    /// log_alpha >= 0 when absent.
    static GateMatrix fromEvent(const nlohmann::json & event);

    int layers() const { return layers_; }
    /// Width of the grid: the largest head count of any layer.
    int maxHeads() const { return maxHeads_; }
    int headsInLayer(int layer) const { return headCounts_.value(layer, 0); }
    bool isEmpty() const { return layers_ == 0; }

    /// NaN outside the layer's heads.
    double value(int layer, int head, Value which) const;
    /// False outside the layer's heads.
    bool isOpen(int layer, int head) const;
    bool isCell(int layer, int head) const { return layer >= 0 && layer < layers_ && head >= 0 && head < headsInLayer(layer); }
    int openInLayer(int layer) const;
    int openTotal() const;
    int headsTotal() const;

    long long step() const { return step_; }
    /// Step on the run's whole timeline (gate-stage steps follow the train stage's); set by RunHistory.
    double globalStep() const { return globalStep_; }
    void setGlobalStep(double s) { globalStep_ = s; }
    QString stage() const { return stage_; }

private:
    int index(int layer, int head) const { return layer * maxHeads_ + head; }

    int layers_ = 0;
    int maxHeads_ = 0;
    QVector<int> headCounts_;
    QVector<double> logAlpha_;
    QVector<double> pOpen_;
    QVector<char> open_;
    long long step_ = 0;
    double globalStep_ = 0;
    QString stage_;
};

} // namespace studio
