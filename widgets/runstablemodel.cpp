#include "runstablemodel.h"

#include <QColor>

#include <cmath>

namespace studio {

RunsTableModel::RunsTableModel(QObject * parent) : QAbstractTableModel(parent) {}

int RunsTableModel::rowCount(const QModelIndex & parent) const { return parent.isValid() ? 0 : rows_.size(); }
int RunsTableModel::columnCount(const QModelIndex & parent) const { return parent.isValid() ? 0 : ColumnCount; }

QString RunsTableModel::statusOf(int row) const {
    const RunSummary & s = rows_[row];
    auto it = processes_.constFind(s.dir);
    const bool ours = it != processes_.constEnd();
    return s.status(ours, ours && it->alive);
}

QVariant RunsTableModel::data(const QModelIndex & index, int role) const {
    if (!index.isValid() || index.row() >= rows_.size()) return {};
    const RunSummary & s = rows_[index.row()];
    if (role == DirRole) return s.dir;
    if (role == Qt::DisplayRole) {
        switch (index.column()) {
        case Name: return s.name;
        case ModelType: return s.modelType;
        case Stage: return s.stage;
        case Status: return statusOf(index.row());
        case HeadsKept: return s.headsKept >= 0 ? QString::number(s.headsKept) : QString();
        case BestValidPpl: return std::isfinite(s.bestValidPpl) ? QString::number(s.bestValidPpl, 'f', 2) : QString();
        }
    }
    if (role == Qt::ToolTipRole) {
        QString tip = s.dir;
        auto it = processes_.constFind(s.dir);
        if (!s.errorMessage.isEmpty()) tip += "\n" + s.errorMessage;
        else if (it != processes_.constEnd() && !it->alive && s.endStatus.isEmpty() && !it->lastLine.isEmpty()) tip += "\n" + it->lastLine;
        if (index.column() == HeadsKept && s.headsTotal > 0) tip += QStringLiteral("\n%1 of %2 heads").arg(s.headsKept).arg(s.headsTotal);
        return tip;
    }
    if (role == Qt::ForegroundRole && index.column() == Status) {
        const QString st = statusOf(index.row());
        if (st == "error") return QColor(190, 30, 30);
        if (st == "running") return QColor(20, 110, 200);
        if (st == "finished") return QColor(30, 130, 60);
    }
    if (role == Qt::TextAlignmentRole && (index.column() == HeadsKept || index.column() == BestValidPpl)) {
        return int(Qt::AlignRight | Qt::AlignVCenter);
    }
    return {};
}

QVariant RunsTableModel::headerData(int section, Qt::Orientation orientation, int role) const {
    if (orientation != Qt::Horizontal || role != Qt::DisplayRole) return {};
    switch (section) {
    case Name: return tr("Name");
    case ModelType: return tr("Model");
    case Stage: return tr("Stage");
    case Status: return tr("Status");
    case HeadsKept: return tr("Heads kept");
    case BestValidPpl: return tr("Best valid ppl");
    }
    return {};
}

int RunsTableModel::rowOf(const QString & dir) const {
    for (int i = 0; i < rows_.size(); ++i) if (rows_[i].dir == dir) return i;
    return -1;
}

void RunsTableModel::setSummaries(const QVector<RunSummary> & summaries) {
    QVector<RunSummary> next = summaries;
    for (const QString & dir : pinned_) {
        bool found = false;
        for (const auto & s : next) found = found || s.dir == dir;
        if (!found) {
            const int old = rowOf(dir);
            if (old >= 0) next.push_back(rows_[old]);
        }
    }
    bool sameRows = next.size() == rows_.size();
    for (int i = 0; sameRows && i < next.size(); ++i) sameRows = next[i].dir == rows_[i].dir;
    if (sameRows) {
        rows_ = next;
        if (!rows_.isEmpty()) Q_EMIT dataChanged(index(0, 0), index(rows_.size() - 1, ColumnCount - 1));
        return;
    }
    beginResetModel();
    rows_ = next;
    endResetModel();
}

void RunsTableModel::upsert(const RunSummary & summary) {
    if (!pinned_.contains(summary.dir)) pinned_.push_back(summary.dir);
    const int row = rowOf(summary.dir);
    if (row >= 0) {
        rows_[row] = summary;
        Q_EMIT dataChanged(index(row, 0), index(row, ColumnCount - 1));
        return;
    }
    beginInsertRows(QModelIndex(), rows_.size(), rows_.size());
    rows_.push_back(summary);
    endInsertRows();
}

void RunsTableModel::setProcess(const QString & dir, const Process & process) {
    processes_[dir] = process;
    const int row = rowOf(dir);
    if (row >= 0) Q_EMIT dataChanged(index(row, 0), index(row, ColumnCount - 1));
}

void RunsTableModel::clearProcess(const QString & dir) {
    processes_.remove(dir);
}

} // namespace studio
