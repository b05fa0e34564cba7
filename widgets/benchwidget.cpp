#include "benchwidget.h"

#include <QDir>
#include <QFile>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QLabel>
#include <QProcess>
#include <QPushButton>
#include <QSplitter>
#include <QTableWidget>
#include <QVBoxLayout>

#include <map>

#include "jsonutil.h"
#include "launchcommand.h"
#include "plotutil.h"
#include "qcp.h"

namespace studio {

namespace {
const char * const kColumns[] = {"variant", "heads_kept", "layer_params", "batch", "dtype", "device", "median_ms",
                                 "p10_ms", "p90_ms", "tokens_per_s", "speedup", "ideal_speedup", "efficiency"};
QString cellText(const nlohmann::json & v) {
    if (v.is_string()) return QString::fromStdString(v.get<std::string>());
    if (v.is_number_integer()) return QString::number(v.get<long long>());
    if (v.is_number()) {
        const double d = v.get<double>();
        return std::abs(d) >= 1000 ? QString::number(d, 'f', 0) : QString::number(d, 'g', 4);
    }
    if (v.is_null()) return QString();
    return QString::fromStdString(v.dump());
}
const QColor kPalette[] = {QColor(31, 119, 180), QColor(255, 127, 14), QColor(44, 160, 44), QColor(214, 39, 40),
                           QColor(148, 103, 189), QColor(140, 86, 75)};
} // namespace

BenchWidget::BenchWidget(QWidget * parent) : QWidget(parent) {
    auto * layout = new QVBoxLayout(this);
    auto * top = new QHBoxLayout;
    runButton_ = new QPushButton(tr("Run benchmark"));
    status_ = new QLabel(tr("Select a run."));
    top->addWidget(runButton_);
    top->addWidget(status_, 1);
    layout->addLayout(top);
    connect(runButton_, &QPushButton::clicked, this, &BenchWidget::runBenchmark);

    auto * split = new QSplitter(Qt::Vertical);
    table_ = new QTableWidget(0, (int) std::size(kColumns));
    QStringList headers;
    for (const char * c : kColumns) headers << QString::fromLatin1(c);
    table_->setHorizontalHeaderLabels(headers);
    table_->setEditTriggers(QAbstractItemView::NoEditTriggers);
    table_->verticalHeader()->setVisible(false);
    table_->horizontalHeader()->setSectionResizeMode(QHeaderView::ResizeToContents);
    split->addWidget(table_);
    plot_ = new QCustomPlot;
    stylePlot(plot_, tr("heads kept"), tr("speed-up vs dense"));
    plot_->setProperty("padX", true);
    plot_->legend->setVisible(true);
    plot_->axisRect()->insetLayout()->setInsetAlignment(0, Qt::AlignTop | Qt::AlignRight);
    split->addWidget(plot_);
    split->setStretchFactor(1, 1);
    layout->addWidget(split, 1);
    runButton_->setEnabled(false);
}

void BenchWidget::setRun(const QString & runDir, const nlohmann::json & eventRows) {
    if (runDir_ != runDir && process_) return; // keep showing the run being benchmarked
    runDir_ = runDir;
    runButton_->setEnabled(!runDir.isEmpty() && !process_);
    if (QFile::exists(QDir(runDir).filePath("bench/bench.json"))) {
        loadFile();
    } else {
        setRows(eventRows);
        status_->setText(eventRows.is_array() ? tr("From the run's bench event.") : tr("No benchmark yet for this run."));
    }
}

void BenchWidget::loadFile() {
    const QString path = QDir(runDir_).filePath("bench/bench.json");
    QFile file(path);
    if (!file.open(QIODevice::ReadOnly)) { status_->setText(tr("Cannot read %1").arg(path)); return; }
    auto j = nlohmann::json::parse(file.readAll().toStdString(), nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("rows")) { status_->setText(tr("%1 is not a bench report").arg(path)); return; }
    setRows(j["rows"]);
    status_->setText(tr("%1 rows from %2").arg(table_->rowCount()).arg(path));
}

void BenchWidget::setRows(const nlohmann::json & rows) {
    table_->setRowCount(0);
    plot_->clearGraphs();
    if (!rows.is_array()) { plot_->legend->setVisible(false); plot_->replot(); return; }
    table_->setRowCount((int) rows.size());
    // One scatter per (batch, dtype, device); the ideal speed-up depends on heads alone, so one line.
    std::map<QString, std::pair<QVector<double>, QVector<double>>> groups;
    std::map<double, double> ideal;
    for (int r = 0; r < (int) rows.size(); ++r) {
        const auto & row = rows[r];
        for (int c = 0; c < (int) std::size(kColumns); ++c) {
            auto it = row.find(kColumns[c]);
            auto * item = new QTableWidgetItem(it == row.end() ? QString() : cellText(*it));
            if (it != row.end() && it->is_number()) item->setTextAlignment(Qt::AlignRight | Qt::AlignVCenter);
            table_->setItem(r, c, item);
        }
        const double heads = jsonNumber(row, "heads_kept"), speedup = jsonNumber(row, "speedup");
        if (!std::isfinite(heads) || !std::isfinite(speedup)) continue;
        const QString variant = jsonString(row, "variant");
        const QString key = QStringLiteral("%1|batch %2, %3, %4").arg(variant).arg(jsonInt(row, "batch")).arg(jsonString(row, "dtype"), jsonString(row, "device"));
        groups[key].first << heads;
        groups[key].second << speedup;
        // A masked model keeps every weight, so its "ideal" of 1 is not the parameter-count ideal of the line.
        const double id = jsonNumber(row, "ideal_speedup");
        if (std::isfinite(id) && variant != "masked") ideal[heads] = std::max(ideal.count(heads) ? ideal[heads] : id, id);
    }
    QCPGraph * idealGraph = plot_->addGraph();
    idealGraph->setName(tr("ideal (parameters)"));
    idealGraph->setPen(QPen(QColor(90, 90, 90), 1.5, Qt::DashLine));
    QVector<double> ix, iy;
    for (const auto & [h, s] : ideal) { ix << h; iy << s; }
    idealGraph->setData(ix, iy);
    // Colour = batch / dtype / device setting, shape = variant.
    std::map<QString, QColor> colors;
    for (auto & [key, xy] : groups) {
        const QString variant = key.section('|', 0, 0), setting = key.section('|', 1);
        if (!colors.count(setting)) colors[setting] = kPalette[colors.size() % std::size(kPalette)];
        const QCPScatterStyle::ScatterShape shape = variant == "dense" ? QCPScatterStyle::ssSquare
                                                    : variant == "masked" ? QCPScatterStyle::ssTriangle
                                                    : variant == "pruned" ? QCPScatterStyle::ssDisc : QCPScatterStyle::ssDiamond;
        QCPGraph * g = plot_->addGraph();
        g->setName(QStringLiteral("%1, %2").arg(variant, setting));
        g->setLineStyle(QCPGraph::lsNone);
        g->setScatterStyle(QCPScatterStyle(shape, colors[setting], colors[setting], 9));
        g->setData(xy.first, xy.second);
    }
    plot_->legend->setVisible(!rows.empty());
    plot_->setProperty("userRange", false);
    autoRange(plot_);
    plot_->replot();
}

void BenchWidget::runBenchmark() {
    if (process_ || runDir_.isEmpty()) return;
    process_ = new QProcess(this);
    process_->setProcessChannelMode(QProcess::MergedChannels);
    const LaunchCommand cmd = LaunchCommand::bench(studioExe_, runDir_);
    const QString dir = runDir_;
    connect(process_, &QProcess::finished, this, [this, dir](int code, QProcess::ExitStatus status) {
        const QString out = QString::fromUtf8(process_->readAll()).trimmed();
        process_->deleteLater();
        process_ = nullptr;
        runButton_->setEnabled(true);
        if (dir != runDir_) return;
        if (status == QProcess::NormalExit && code == 0) { loadFile(); return; }
        const QString last = out.section('\n', -1).trimmed();
        status_->setText(tr("Benchmark failed (exit %1): %2").arg(code).arg(last));
    });
    connect(process_, &QProcess::errorOccurred, this, [this](QProcess::ProcessError error) {
        if (error != QProcess::FailedToStart || !process_) return;
        status_->setText(tr("Cannot start %1: %2").arg(studioExe_, process_->errorString()));
        process_->deleteLater();
        process_ = nullptr;
        runButton_->setEnabled(true);
    });
    runButton_->setEnabled(false);
    status_->setText(tr("Benchmarking %1 ...").arg(runDir_));
    process_->start(cmd.program, cmd.arguments);
}

} // namespace studio
