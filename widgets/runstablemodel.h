// The runs list: one row per run directory, columns name, model type, stage, status, heads kept, best valid ppl.
#pragma once

#include <QAbstractTableModel>
#include <QHash>
#include <QVector>

#include "runsummary.h"

namespace studio {

class RunsTableModel : public QAbstractTableModel {
    Q_OBJECT
public:
    enum Column { Name, ModelType, Stage, Status, HeadsKept, BestValidPpl, ColumnCount };
    /// Role carrying the run directory (QString) on every column.
    static constexpr int DirRole = Qt::UserRole + 1;

    explicit RunsTableModel(QObject * parent = nullptr);

    int rowCount(const QModelIndex & parent = QModelIndex()) const override;
    int columnCount(const QModelIndex & parent = QModelIndex()) const override;
    QVariant data(const QModelIndex & index, int role = Qt::DisplayRole) const override;
    QVariant headerData(int section, Qt::Orientation orientation, int role = Qt::DisplayRole) const override;

    /// Replaces the rows; rows keep their place (and the view its selection) when the set of runs is unchanged.
    void setSummaries(const QVector<RunSummary> & summaries);
    /// Adds or updates one run (a folder opened from elsewhere stays listed across refreshes).
    void upsert(const RunSummary & summary);
    const QVector<RunSummary> & summaries() const { return rows_; }
    int rowOf(const QString & dir) const;
    RunSummary summaryAt(int row) const { return rows_.value(row); }

    /// What the studio knows about a process it launched for a run directory.
    struct Process { bool alive = false; QString lastLine; };
    void setProcess(const QString & dir, const Process & process);
    void clearProcess(const QString & dir);
    /// The status column's text for a row.
    QString statusOf(int row) const;

private:
    QVector<RunSummary> rows_;
    QVector<QString> pinned_;   // opened with "Open run folder...", kept even when not under the runs folder
    QHash<QString, Process> processes_;
};

} // namespace studio
