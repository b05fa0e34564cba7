// The studio's main window: runs list on the left; live views, benchmark, sweep and launcher as tabs on the right.
// Reading happens in a worker thread (EventFollower, RunScanWorker); this class only ingests parsed events and draws.
#pragma once

#include <QMainWindow>
#include <QThread>

#include "runhistory.h"
#include "runprocess.h"

class QLabel;
class QPushButton;
class QTabWidget;
class QTableView;
class QTimer;

namespace studio {

class BenchWidget;
class CurvesWidget;
class EventFollower;
class GateHeatmapWidget;
class LauncherWidget;
class RunScanWorker;
class RunsTableModel;
class SparsityPlot;
class SweepWidget;
struct EventBatch;
struct RunSummary;

struct GuiOptions {
    QString runsDir = QStringLiteral("runs");
    QString configsDir = QStringLiteral("configs");
    QString openDir;        // --open: select this run directory
    QString launchConfig;   // --launch: launch this config at once
    QString screenshot;     // --screenshot: grab the window to this PNG, then quit
    bool exitWhenGates = false;
    double timeoutS = 0;    // 0 = none
    QString studioExe;      // the engine executable (this program)
};

class MainWindow : public QMainWindow {
    Q_OBJECT
public:
    explicit MainWindow(const GuiOptions & options, QWidget * parent = nullptr);
    ~MainWindow() override;
    /// Runs the --launch / --open / --screenshot steps once the event loop is up.
    void startAutomation();
    int automationExitCode() const { return exitCode_; }

protected:
    void closeEvent(QCloseEvent * event) override;

private:
    void buildUi();
    void buildMenus();
    void setRunsDir(const QString & dir);
    void openRunDir(const QString & dir);
    void selectRun(const QString & dir);
    void onSelectionChanged();
    void onScanned(const QVector<RunSummary> & summaries);
    void onEvents(quint64 generation, const EventBatch & batch);
    void redrawIfDirty();
    void checkProcesses();
    void updateRunHeader();
    bool launch(const QString & name, const QString & configText, QString * error);
    void resumeSelected();
    void stopSelected();
    void exportMetrics();
    void exportPlots();
    void finishAutomation(int code, const QString & message);
    void takeScreenshotAndQuit(int code);

    GuiOptions options_;
    RunsTableModel * runs_ = nullptr;
    QTableView * runsView_ = nullptr;
    QLabel * runHeader_ = nullptr;
    QPushButton * resumeButton_ = nullptr;
    QPushButton * stopButton_ = nullptr;
    QTabWidget * tabs_ = nullptr;
    GateHeatmapWidget * heatmap_ = nullptr;
    SparsityPlot * sparsity_ = nullptr;
    CurvesWidget * curves_ = nullptr;
    BenchWidget * bench_ = nullptr;
    SweepWidget * sweep_ = nullptr;
    LauncherWidget * launcher_ = nullptr;

    QThread ioThread_;
    RunScanWorker * scanner_ = nullptr;
    EventFollower * follower_ = nullptr;
    QTimer * redrawTimer_ = nullptr;
    QTimer * processTimer_ = nullptr;

    RunProcesses processes_;
    QString currentDir_;
    quint64 generation_ = 0;
    RunHistory history_;
    bool dirty_ = false;

    QString automationDir_; // the run --launch started or --open named
    bool automationDone_ = false;
    int exitCode_ = 0;
};

} // namespace studio
