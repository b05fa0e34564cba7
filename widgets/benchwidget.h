// Benchmark view: runs `studio bench RUN_DIR` in the background, then shows RUN_DIR/bench/bench.json as a table and
// as speed-up against heads kept, with the ideal speed-up (from the parameter count) drawn as a line.
#pragma once

#include <QWidget>

#include <nlohmann/json.hpp>

class QCustomPlot;
class QLabel;
class QProcess;
class QPushButton;
class QTableWidget;

namespace studio {

class BenchWidget : public QWidget {
    Q_OBJECT
public:
    explicit BenchWidget(QWidget * parent = nullptr);
    void setStudioExe(const QString & exe) { studioExe_ = exe; }
    /// Shows the run's bench/bench.json if there is one (else the rows of its last bench event).
    void setRun(const QString & runDir, const nlohmann::json & eventRows = nullptr);
    void setRows(const nlohmann::json & rows);
    void runBenchmark();
    bool isRunning() const { return process_ != nullptr; }
    QTableWidget * table() const { return table_; }
    QCustomPlot * plot() const { return plot_; }

private:
    void loadFile();

    QString studioExe_;
    QString runDir_;
    QPushButton * runButton_ = nullptr;
    QLabel * status_ = nullptr;
    QTableWidget * table_ = nullptr;
    QCustomPlot * plot_ = nullptr;
    QProcess * process_ = nullptr;
};

} // namespace studio
