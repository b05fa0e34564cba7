#include "mainwindow.h"

#include <QAction>
#include <QApplication>
#include <QCloseEvent>
#include <QDir>
#include <QFile>
#include <QFileDialog>
#include <QFileInfo>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QLabel>
#include <QMenuBar>
#include <QMessageBox>
#include <QPushButton>
#include <QSplitter>
#include <QStatusBar>
#include <QTabWidget>
#include <QTableView>
#include <QTimer>
#include <QVBoxLayout>

#include <cstdio>

#include "benchwidget.h"
#include "curveswidget.h"
#include "eventfollower.h"
#include "gateheatmapwidget.h"
#include "launcherwidget.h"
#include "plotutil.h"
#include "qcp.h"
#include "runstablemodel.h"
#include "sparsityplot.h"
#include "sweepwidget.h"

namespace studio {

MainWindow::MainWindow(const GuiOptions & options, QWidget * parent) : QMainWindow(parent), options_(options) {
    setWindowTitle(tr("Head Pruning Studio"));
    buildUi();
    buildMenus();

    scanner_ = new RunScanWorker;
    follower_ = new EventFollower;
    scanner_->moveToThread(&ioThread_);
    follower_->moveToThread(&ioThread_);
    connect(&ioThread_, &QThread::finished, scanner_, &QObject::deleteLater);
    connect(&ioThread_, &QThread::finished, follower_, &QObject::deleteLater);
    connect(scanner_, &RunScanWorker::scanned, this, &MainWindow::onScanned);
    connect(follower_, &EventFollower::eventsArrived, this, &MainWindow::onEvents);
    ioThread_.start();
    QMetaObject::invokeMethod(scanner_, [s = scanner_] { s->start(1000); }, Qt::QueuedConnection);
    QMetaObject::invokeMethod(follower_, [f = follower_] { f->start(300); }, Qt::QueuedConnection);

    redrawTimer_ = new QTimer(this);
    connect(redrawTimer_, &QTimer::timeout, this, &MainWindow::redrawIfDirty);
    redrawTimer_->start(300);
    processTimer_ = new QTimer(this);
    connect(processTimer_, &QTimer::timeout, this, &MainWindow::checkProcesses);
    processTimer_->start(1000);

    setRunsDir(options_.runsDir);
    launcher_->setConfigsDir(options_.configsDir);
    launcher_->detectDevices(options_.studioExe);
    bench_->setStudioExe(options_.studioExe);
    resize(1280, 800);
}

MainWindow::~MainWindow() {
    ioThread_.quit();
    ioThread_.wait();
}

void MainWindow::buildUi() {
    auto * split = new QSplitter(Qt::Horizontal);

    auto * left = new QWidget;
    auto * leftLayout = new QVBoxLayout(left);
    leftLayout->setContentsMargins(6, 6, 0, 6);
    auto * runsTitle = new QHBoxLayout;
    runsTitle->addWidget(new QLabel(tr("<b>Runs</b>")));
    runsTitle->addStretch(1);
    resumeButton_ = new QPushButton(tr("Resume"));
    stopButton_ = new QPushButton(tr("Stop"));
    runsTitle->addWidget(resumeButton_);
    runsTitle->addWidget(stopButton_);
    leftLayout->addLayout(runsTitle);
    runs_ = new RunsTableModel(this);
    runsView_ = new QTableView;
    runsView_->setObjectName("runsView");
    runsView_->setModel(runs_);
    runsView_->setSelectionBehavior(QAbstractItemView::SelectRows);
    runsView_->setSelectionMode(QAbstractItemView::ExtendedSelection);
    runsView_->verticalHeader()->setVisible(false);
    runsView_->verticalHeader()->setDefaultSectionSize(22);
    runsView_->horizontalHeader()->setSectionResizeMode(QHeaderView::ResizeToContents);
    runsView_->horizontalHeader()->setStretchLastSection(true);
    runsView_->setAlternatingRowColors(true);
    runsView_->setWordWrap(false);
    leftLayout->addWidget(runsView_, 1);
    runHeader_ = new QLabel;
    runHeader_->setWordWrap(true);
    runHeader_->setTextInteractionFlags(Qt::TextSelectableByMouse);
    runHeader_->setMinimumHeight(60);
    runHeader_->setAlignment(Qt::AlignTop | Qt::AlignLeft);
    leftLayout->addWidget(runHeader_);
    split->addWidget(left);
    connect(runsView_->selectionModel(), &QItemSelectionModel::selectionChanged, this, &MainWindow::onSelectionChanged);
    connect(resumeButton_, &QPushButton::clicked, this, &MainWindow::resumeSelected);
    connect(stopButton_, &QPushButton::clicked, this, &MainWindow::stopSelected);

    tabs_ = new QTabWidget;
    tabs_->setObjectName("tabs");
    auto * live = new QSplitter(Qt::Horizontal);
    heatmap_ = new GateHeatmapWidget;
    live->addWidget(heatmap_);
    auto * right = new QSplitter(Qt::Vertical);
    auto * sparsityBox = new QWidget;
    auto * sparsityLayout = new QVBoxLayout(sparsityBox);
    sparsityLayout->setContentsMargins(0, 0, 0, 0);
    sparsityLayout->addWidget(new QLabel(tr("<b>Sparsity</b>")));
    sparsity_ = new SparsityPlot;
    sparsityLayout->addWidget(sparsity_, 1);
    right->addWidget(sparsityBox);
    curves_ = new CurvesWidget;
    right->addWidget(curves_);
    right->setStretchFactor(0, 2);
    right->setStretchFactor(1, 3);
    live->addWidget(right);
    live->setStretchFactor(0, 4);
    live->setStretchFactor(1, 5);
    tabs_->addTab(live, tr("Live"));
    bench_ = new BenchWidget;
    tabs_->addTab(bench_, tr("Benchmark"));
    sweep_ = new SweepWidget;
    tabs_->addTab(sweep_, tr("Sweep"));
    launcher_ = new LauncherWidget;
    tabs_->addTab(launcher_, tr("Launch"));
    split->addWidget(tabs_);
    split->setStretchFactor(0, 0);
    split->setStretchFactor(1, 1);
    split->setSizes({470, 810});
    setCentralWidget(split);
    connect(launcher_, &LauncherWidget::launchRequested, this, [this](const QString & name, const QString & text) {
        QString error;
        if (!launch(name, text, &error)) QMessageBox::warning(this, tr("Launch"), error);
    });
    updateRunHeader();
}

void MainWindow::buildMenus() {
    QMenu * file = menuBar()->addMenu(tr("&File"));
    file->addAction(tr("&Open run folder..."), QKeySequence::Open, this, [this] {
        const QString dir = QFileDialog::getExistingDirectory(this, tr("Open run folder"), options_.runsDir);
        if (!dir.isEmpty()) openRunDir(dir);
    });
    file->addAction(tr("Set &runs folder..."), this, [this] {
        const QString dir = QFileDialog::getExistingDirectory(this, tr("Runs folder"), options_.runsDir);
        if (!dir.isEmpty()) setRunsDir(dir);
    });
    file->addSeparator();
    file->addAction(tr("Export run &metrics (CSV)..."), this, &MainWindow::exportMetrics);
    file->addAction(tr("Export run &plots (PNG + PDF)..."), this, &MainWindow::exportPlots);
    file->addSeparator();
    file->addAction(tr("&Quit"), QKeySequence::Quit, this, &QWidget::close);
}

void MainWindow::setRunsDir(const QString & dir) {
    options_.runsDir = QFileInfo(dir).absoluteFilePath();
    launcher_->setRunsDir(options_.runsDir);
    QMetaObject::invokeMethod(scanner_, [s = scanner_, d = options_.runsDir] { s->setRunsDir(d); }, Qt::QueuedConnection);
    statusBar()->showMessage(tr("Runs folder: %1").arg(options_.runsDir));
}

void MainWindow::openRunDir(const QString & dir) {
    const QString abs = QFileInfo(dir).absoluteFilePath();
    QMetaObject::invokeMethod(scanner_, [s = scanner_, abs] { s->addRunDir(abs); }, Qt::QueuedConnection);
    RunSummary pending;
    pending.dir = abs;
    pending.name = QFileInfo(abs).fileName();
    if (runs_->rowOf(abs) < 0) runs_->upsert(pending);
    runsView_->selectRow(runs_->rowOf(abs));
    selectRun(abs);
    tabs_->setCurrentIndex(0);
}

void MainWindow::selectRun(const QString & dir) {
    if (dir == currentDir_) return;
    currentDir_ = dir;
    history_.clear();
    ++generation_;
    QMetaObject::invokeMethod(follower_, [f = follower_, dir, g = generation_] { f->follow(dir, g); }, Qt::QueuedConnection);
    bench_->setRun(dir);
    dirty_ = true;
    redrawIfDirty();
}

void MainWindow::onSelectionChanged() {
    const QModelIndex current = runsView_->currentIndex();
    const QModelIndexList rows = runsView_->selectionModel()->selectedRows();
    if (!rows.isEmpty()) {
        const QModelIndex pick = current.isValid() && runsView_->selectionModel()->isRowSelected(current.row(), {}) ? current : rows.first();
        selectRun(runs_->data(pick, RunsTableModel::DirRole).toString());
    }
    QVector<RunSummary> selected;
    for (const QModelIndex & i : rows) selected.push_back(runs_->summaryAt(i.row()));
    sweep_->setRuns(selected);
    if (rows.size() > 1 && tabs_->currentIndex() == 0) statusBar()->showMessage(tr("%1 runs selected: see the Sweep tab").arg(rows.size()), 4000);
    updateRunHeader();
}

void MainWindow::onScanned(const QVector<RunSummary> & summaries) {
    QStringList selectedDirs;
    for (const QModelIndex & i : runsView_->selectionModel()->selectedRows()) selectedDirs << runs_->summaryAt(i.row()).dir;
    const QSignalBlocker block(runsView_->selectionModel());
    runs_->setSummaries(summaries);
    // A model reset drops the selection: put it back without re-selecting (and so re-reading) the run.
    QItemSelection selection;
    for (const QString & dir : selectedDirs) {
        const int row = runs_->rowOf(dir);
        if (row >= 0) selection.select(runs_->index(row, 0), runs_->index(row, RunsTableModel::ColumnCount - 1));
    }
    runsView_->selectionModel()->select(selection, QItemSelectionModel::ClearAndSelect);
    const int currentRow = runs_->rowOf(currentDir_);
    if (currentRow >= 0) runsView_->selectionModel()->setCurrentIndex(runs_->index(currentRow, 0), QItemSelectionModel::NoUpdate);
    QVector<RunSummary> selected;
    for (const QString & dir : selectedDirs) if (runs_->rowOf(dir) >= 0) selected << runs_->summaryAt(runs_->rowOf(dir));
    if (selected.size() > 1) sweep_->setRuns(selected);
    updateRunHeader();
}

void MainWindow::onEvents(quint64 generation, const EventBatch & batch) {
    if (generation != generation_ || !batch.events) return; // a batch of a run no longer shown
    if (batch.restarted) history_.clear();
    const bool hadBench = history_.benchRows.is_array();
    history_.ingest(*batch.events);
    if (!hadBench && history_.benchRows.is_array()) bench_->setRun(currentDir_, history_.benchRows);
    dirty_ = true;
}

void MainWindow::redrawIfDirty() {
    if (!dirty_) return;
    dirty_ = false;
    heatmap_->setHistory(history_.gates);
    sparsity_->setHistory(history_);
    curves_->setHistory(history_);
    updateRunHeader();
    if (options_.exitWhenGates && !automationDone_ && !automationDir_.isEmpty() && currentDir_ == automationDir_ &&
        !history_.gates.isEmpty()) {
        automationDone_ = true;
        // Give the queued replots and the layout a moment so the grab shows the drawn plots.
        QTimer::singleShot(800, this, [this] { takeScreenshotAndQuit(0); });
    }
}

void MainWindow::checkProcesses() {
    for (const QString & dir : processes_.all()) {
        RunsTableModel::Process p;
        p.alive = processes_.isAlive(dir);
        if (!p.alive) p.lastLine = RunProcesses::lastLogLine(dir);
        runs_->setProcess(dir, p);
        if (!p.alive && dir == automationDir_ && options_.exitWhenGates && !automationDone_ && !property("deathSeen").toBool()) {
            setProperty("deathSeen", true);
            // The follower may still be delivering the last events; decide after it caught up.
            QTimer::singleShot(3000, this, [this, dir] {
                if (automationDone_) return;
                const QString why = history_.errorMessage.isEmpty() ? RunProcesses::lastLogLine(dir) : history_.errorMessage;
                finishAutomation(1, tr("the run ended before any gates event: %1").arg(why.isEmpty() ? tr("(no output)") : why));
            });
        }
    }
    updateRunHeader();
}

void MainWindow::updateRunHeader() {
    const int row = runs_->rowOf(currentDir_);
    resumeButton_->setEnabled(false);
    stopButton_->setEnabled(false);
    if (row < 0) {
        runHeader_->setText(tr("Select a run, open a run folder (File menu) or launch one from the Launch tab."));
        return;
    }
    const RunSummary s = runs_->summaryAt(row);
    const QString status = runs_->statusOf(row);
    const bool ours = processes_.isOurs(currentDir_), alive = ours && processes_.isAlive(currentDir_);
    QString text = QStringLiteral("<b>%1</b> &nbsp; %2 &nbsp; stage <i>%3</i> &nbsp; <b>%4</b>")
                       .arg(s.name.toHtmlEscaped(), s.modelType.toHtmlEscaped(), s.stage.isEmpty() ? tr("-") : s.stage, status);
    if (!history_.gates.isEmpty()) {
        const GateMatrix & g = history_.gates.last();
        text += tr("<br>%1 of %2 heads open at %3 step %4").arg(g.openTotal()).arg(g.headsTotal()).arg(g.stage()).arg(g.step());
    }
    QString error = s.errorMessage;
    if (error.isEmpty() && ours && !alive && s.endStatus.isEmpty()) {
        const QString last = RunProcesses::lastLogLine(currentDir_);
        error = tr("the engine exited without run_end: %1").arg(last.isEmpty() ? tr("(stdout.log is empty)") : last);
    }
    if (!error.isEmpty() && status == "error") text += QStringLiteral("<br><span style='color:#c62828'>%1</span>").arg(error.toHtmlEscaped());
    text += QStringLiteral("<br><span style='color:gray'>%1</span>").arg(currentDir_.toHtmlEscaped());
    runHeader_->setText(text);
    stopButton_->setEnabled(alive);
    resumeButton_->setEnabled(!alive && status != "running" && status != "finished" && QFile::exists(QDir(currentDir_).filePath("config.json")));
}

bool MainWindow::launch(const QString & name, const QString & configText, QString * error) {
    const QString runDir = LaunchCommand::runDirFor(options_.runsDir, name);
    if (QFile::exists(QDir(runDir).filePath("events.jsonl"))) {
        *error = tr("%1 already holds a run: pick another name, or select it and press Resume.").arg(runDir);
        return false;
    }
    const QString configPath = LaunchCommand::launchConfigPath(options_.runsDir, name);
    QDir().mkpath(options_.runsDir);
    QFile file(configPath);
    if (!file.open(QIODevice::WriteOnly | QIODevice::Truncate) || file.write(configText.toUtf8()) < 0) {
        *error = tr("cannot write %1").arg(configPath);
        return false;
    }
    file.close();
    if (!processes_.start(LaunchCommand::launch(options_.studioExe, configPath, runDir), runDir, error)) return false;
    const QString abs = QFileInfo(runDir).absoluteFilePath();
    runs_->setProcess(abs, {true, QString()});
    openRunDir(abs);
    statusBar()->showMessage(tr("Launched %1 (pid %2)").arg(name).arg(processes_.pid(abs)));
    return true;
}

void MainWindow::resumeSelected() {
    if (currentDir_.isEmpty()) return;
    QString error;
    if (!processes_.start(LaunchCommand::resume(options_.studioExe, currentDir_), currentDir_, &error)) {
        QMessageBox::warning(this, tr("Resume"), error);
        return;
    }
    runs_->setProcess(currentDir_, {true, QString()});
    statusBar()->showMessage(tr("Resumed %1").arg(QFileInfo(currentDir_).fileName()));
    updateRunHeader();
}

void MainWindow::stopSelected() {
    if (!processes_.stop(currentDir_)) {
        QMessageBox::information(this, tr("Stop"), tr("This run was not started by this window; stop it where it runs (Ctrl+C)."));
        return;
    }
    statusBar()->showMessage(tr("Sent SIGTERM: the engine checkpoints and stops."));
}

void MainWindow::exportMetrics() {
    if (currentDir_.isEmpty()) return;
    const QString path = QFileDialog::getSaveFileName(this, tr("Export metrics"), QFileInfo(currentDir_).fileName() + ".csv", tr("CSV (*.csv)"));
    if (path.isEmpty()) return;
    QFile file(path);
    if (!file.open(QIODevice::WriteOnly | QIODevice::Truncate)) { QMessageBox::warning(this, tr("Export"), tr("cannot write %1").arg(path)); return; }
    file.write(historyCsv(history_).toUtf8());
}

void MainWindow::exportPlots() {
    const QString dir = QFileDialog::getExistingDirectory(this, tr("Export plots into"));
    if (dir.isEmpty()) return;
    const QString run = QFileInfo(currentDir_).fileName();
    const std::pair<QString, QCustomPlot *> plots[] = {
        {"gates", heatmap_->plot()}, {"sparsity", sparsity_->plot()}, {"perplexity", curves_->pplPlot()},
        {"loss", curves_->lossPlot()}, {"lr", curves_->lrPlot()}, {"tokens_per_s", curves_->speedPlot()},
        {"bench", bench_->plot()}, {"sweep", sweep_->plot()}};
    int written = 0;
    for (const auto & [name, plot] : plots) {
        for (const char * ext : {"png", "pdf"}) {
            written += savePlot(plot, QDir(dir).filePath(QStringLiteral("%1-%2.%3").arg(run, name, QLatin1String(ext))), 900, 600) ? 1 : 0;
        }
    }
    statusBar()->showMessage(tr("Wrote %1 files to %2").arg(written).arg(dir));
}

void MainWindow::startAutomation() {
    if (!options_.launchConfig.isEmpty()) {
        QString error;
        if (!launcher_->loadConfigFile(options_.launchConfig)) error = launcher_->validationMessage();
        else if (!launcher_->isValid()) error = launcher_->validationMessage();
        else if (launch(launcher_->runName(), launcher_->configText(), &error)) automationDir_ = LaunchCommand::runDirFor(options_.runsDir, launcher_->runName());
        if (!error.isEmpty()) { finishAutomation(1, error); return; }
        automationDir_ = QFileInfo(automationDir_).absoluteFilePath();
    }
    if (!options_.openDir.isEmpty()) {
        if (!QFileInfo(options_.openDir).isDir()) { finishAutomation(1, tr("%1 is not a directory").arg(options_.openDir)); return; }
        openRunDir(options_.openDir);
        if (automationDir_.isEmpty()) automationDir_ = QFileInfo(options_.openDir).absoluteFilePath();
    }
    if (options_.exitWhenGates && automationDir_.isEmpty()) { finishAutomation(2, tr("--exit-when-gates needs --launch or --open")); return; }
    if (!options_.screenshot.isEmpty() && !options_.exitWhenGates) {
        QTimer::singleShot(2500, this, [this] { if (!automationDone_) { automationDone_ = true; takeScreenshotAndQuit(0); } });
    }
    if (options_.timeoutS > 0) {
        QTimer::singleShot((int) (options_.timeoutS * 1000), this, [this] {
            if (automationDone_) return;
            const bool waiting = options_.exitWhenGates || !options_.screenshot.isEmpty();
            finishAutomation(waiting ? 1 : 0, waiting ? tr("timed out after %1 s waiting for gates").arg(options_.timeoutS) : QString());
        });
    }
}

void MainWindow::takeScreenshotAndQuit(int code) {
    if (!options_.screenshot.isEmpty()) {
        QDir().mkpath(QFileInfo(options_.screenshot).absolutePath());
        if (!grab().save(options_.screenshot, "PNG")) { finishAutomation(1, tr("cannot write %1").arg(options_.screenshot)); return; }
        std::fprintf(stderr, "studio gui: wrote %s\n", qPrintable(options_.screenshot));
    }
    finishAutomation(code, QString());
}

void MainWindow::finishAutomation(int code, const QString & message) {
    automationDone_ = true;
    if (!message.isEmpty()) std::fprintf(stderr, "studio gui: %s\n", qPrintable(message));
    // The launched run belongs to this automated session: stop it so nothing outlives the script.
    if (!automationDir_.isEmpty() && !options_.launchConfig.isEmpty()) processes_.stop(automationDir_);
    exitCode_ = code;
    QCoreApplication::exit(code);
}

void MainWindow::closeEvent(QCloseEvent * event) {
    const QStringList alive = processes_.alive();
    if (alive.isEmpty() || automationDone_) { event->accept(); return; }
    QMessageBox box(QMessageBox::Question, tr("Runs still going"),
                    tr("%n run(s) started here are still going. Leave them running in the background, or stop them?", nullptr, alive.size()),
                    QMessageBox::NoButton, this);
    QPushButton * leave = box.addButton(tr("Leave running"), QMessageBox::AcceptRole);
    QPushButton * stop = box.addButton(tr("Stop them"), QMessageBox::DestructiveRole);
    box.addButton(QMessageBox::Cancel);
    box.setDefaultButton(leave);
    box.exec();
    if (box.clickedButton() == leave) { event->accept(); return; }
    if (box.clickedButton() == stop) {
        for (const QString & dir : alive) processes_.stop(dir);
        event->accept();
        return;
    }
    event->ignore();
}

} // namespace studio
