#include "sweepwidget.h"

#include <QComboBox>
#include <QFile>
#include <QFileDialog>
#include <QHBoxLayout>
#include <QLabel>
#include <QMessageBox>
#include <QPushButton>
#include <QVBoxLayout>

#include "plotutil.h"
#include "qcp.h"
#include "sweepplot.h"

namespace studio {

SweepWidget::SweepWidget(QWidget * parent) : QWidget(parent) {
    auto * layout = new QVBoxLayout(this);
    auto * top = new QHBoxLayout;
    metric_ = new QComboBox;
    metric_->addItem(tr("valid perplexity (best; else test)"));
    metric_->addItem(tr("test perplexity (else best valid)"));
    info_ = new QLabel(tr("Select several runs in the list."));
    auto * png = new QPushButton(tr("PNG..."));
    auto * pdf = new QPushButton(tr("PDF..."));
    auto * csv = new QPushButton(tr("CSV..."));
    top->addWidget(new QLabel(tr("Perplexity:")));
    top->addWidget(metric_);
    top->addStretch(1);
    top->addWidget(new QLabel(tr("Export:")));
    top->addWidget(png);
    top->addWidget(pdf);
    top->addWidget(csv);
    layout->addLayout(top);
    // On its own line: a long message must not widen the tab (and squeeze the runs list).
    info_->setSizePolicy(QSizePolicy::Ignored, QSizePolicy::Preferred);
    layout->addWidget(info_);
    plot_ = new QCustomPlot;
    stylePlot(plot_, tr("layer parameters"), tr("perplexity"));
    layout->addWidget(plot_, 1);
    connect(metric_, QOverload<int>::of(&QComboBox::currentIndexChanged), this, [this] { redraw(); });
    connect(png, &QPushButton::clicked, this, [this] { exportPlot(QStringLiteral("png")); });
    connect(pdf, &QPushButton::clicked, this, [this] { exportPlot(QStringLiteral("pdf")); });
    connect(csv, &QPushButton::clicked, this, &SweepWidget::exportCsv);
}

void SweepWidget::setRuns(const QVector<RunSummary> & runs) {
    runs_ = runs;
    redraw();
}

void SweepWidget::redraw() {
    const bool valid = metric_->currentIndex() == 0;
    const QVector<SweepPoint> points = sweepPoints(runs_, valid);
    info_->setText(tr("%1 of %2 selected runs have parameters and a perplexity.").arg(points.size()).arg(runs_.size()));
    drawSweep(plot_, points, valid ? tr("valid perplexity") : tr("test perplexity"));
}

void SweepWidget::exportPlot(const QString & suffix) {
    const QString path = QFileDialog::getSaveFileName(this, tr("Export sweep"), QStringLiteral("sweep.") + suffix,
                                                      suffix.toUpper() + QStringLiteral(" (*.") + suffix + ')');
    if (!path.isEmpty() && !savePlot(plot_, path)) QMessageBox::warning(this, tr("Export"), tr("Could not write %1").arg(path));
}

void SweepWidget::exportCsv() {
    const QString path = QFileDialog::getSaveFileName(this, tr("Export metrics"), QStringLiteral("sweep.csv"), tr("CSV (*.csv)"));
    if (path.isEmpty()) return;
    QFile file(path);
    if (!file.open(QIODevice::WriteOnly | QIODevice::Truncate)) {
        QMessageBox::warning(this, tr("Export"), tr("Could not write %1").arg(path));
        return;
    }
    file.write(sweepCsv(runs_).toUtf8());
}

} // namespace studio
