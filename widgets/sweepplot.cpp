#include "sweepplot.h"

#include <cmath>
#include <map>

#include "plotmath.h"
#include "plotutil.h"
#include "qcp.h"

namespace studio {

namespace {
const QColor kGroupColors[] = {QColor(31, 119, 180), QColor(255, 127, 14), QColor(44, 160, 44), QColor(148, 103, 189)};
QString csvField(const QString & s) {
    if (!s.contains(',') && !s.contains('"') && !s.contains('\n')) return s;
    QString q = s;
    q.replace('"', QStringLiteral("\"\""));
    return '"' + q + '"';
}
QString number(double v) { return std::isfinite(v) ? QString::number(v, 'g', 10) : QString(); }

// One CSV record; quoted fields may hold commas and doubled quotes (what csvField writes).
QStringList csvRecord(const QString & line) {
    QStringList fields;
    QString field;
    bool quoted = false;
    for (int i = 0; i < line.size(); ++i) {
        const QChar c = line[i];
        if (quoted) {
            if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') { field += '"'; ++i; }
            else if (c == '"') quoted = false;
            else field += c;
        } else if (c == '"') {
            quoted = true;
        } else if (c == ',') {
            fields << field;
            field.clear();
        } else {
            field += c;
        }
    }
    fields << field;
    return fields;
}

double csvNumber(const QString & s) {
    bool ok = false;
    const double v = s.toDouble(&ok);
    return ok ? v : qQNaN();
}
} // namespace

QString modelTypeLabel(const QString & type) {
    if (type == QLatin1String("all_attention")) return QStringLiteral("All-attention");
    if (type == QLatin1String("transformer_xl")) return QStringLiteral("Transformer-XL");
    return type;
}

QVector<RunSummary> sweepRunsFromCsv(const QString & text, QString * error) {
    QStringList lines = text.split('\n');
    for (QString & l : lines) if (l.endsWith('\r')) l.chop(1);
    while (!lines.isEmpty() && lines.last().isEmpty()) lines.removeLast();
    const QStringList header = lines.isEmpty() ? QStringList() : csvRecord(lines.first());
    const int name = header.indexOf("name"), type = header.indexOf("model_type"), status = header.indexOf("status"),
              heads = header.indexOf("heads_kept"), params = header.indexOf("layer_params"), valid = header.indexOf("best_valid_ppl"),
              test = header.indexOf("test_ppl"), label = header.indexOf("label");
    if (name < 0 || type < 0 || params < 0 || (valid < 0 && test < 0)) {
        if (error) *error = QStringLiteral("needs the columns name, model_type, layer_params and best_valid_ppl or test_ppl");
        return {};
    }
    QVector<RunSummary> runs;
    for (int i = 1; i < lines.size(); ++i) {
        const QStringList f = csvRecord(lines[i]);
        auto at = [&](int column) { return column >= 0 && column < f.size() ? f[column] : QString(); };
        RunSummary r;
        r.name = at(label).isEmpty() ? at(name) : at(label);
        r.modelType = at(type);
        const QString s = at(status);
        r.endStatus = s == QLatin1String("finished") ? QStringLiteral("ok") : s;
        const double h = csvNumber(at(heads));
        r.headsKept = std::isfinite(h) ? (long long) h : -1;
        r.layerParams = csvNumber(at(params));
        r.bestValidPpl = csvNumber(at(valid));
        r.lastTestPpl = csvNumber(at(test));
        r.started = true;
        runs.push_back(r);
    }
    return runs;
}

QVector<SweepPoint> sweepPoints(const QVector<RunSummary> & runs, bool preferValid) {
    QVector<SweepPoint> out;
    for (const RunSummary & r : runs) {
        const double ppl = r.sweepPpl(preferValid);
        if (!std::isfinite(ppl) || !std::isfinite(r.layerParams)) continue;
        out.push_back({r.name, r.modelType.isEmpty() ? QStringLiteral("unknown") : r.modelType, r.layerParams, ppl});
    }
    return out;
}

void drawSweep(QCustomPlot * plot, const QVector<SweepPoint> & points, const QString & pplLabel) {
    plot->clearGraphs();
    plot->clearItems();
    plot->xAxis->setLabel(QObject::tr("layer parameters"));
    plot->yAxis->setLabel(pplLabel);
    plot->xAxis->setNumberFormat(QStringLiteral("gb"));
    plot->legend->setVisible(true);

    QVector<double> cost, value;
    for (const auto & p : points) { cost << p.params; value << p.ppl; }
    const QVector<int> front = paretoFront(cost, value);
    QVector<double> fx, fy;
    for (int i : front) { fx << cost[i]; fy << value[i]; }
    QCPGraph * frontGraph = plot->addGraph();
    frontGraph->setName(QObject::tr("Pareto front"));
    // Step-left: a front point's ppl holds until a cheaper-ppl point with more parameters takes over.
    frontGraph->setLineStyle(QCPGraph::lsStepLeft);
    frontGraph->setPen(QPen(QColor(60, 60, 60), 1.5, Qt::DashLine));
    frontGraph->setData(fx, fy);

    std::map<QString, QPair<QVector<double>, QVector<double>>> groups;
    for (const auto & p : points) { groups[p.group].first << p.params; groups[p.group].second << p.ppl; }
    int i = 0;
    for (auto & [group, xy] : groups) {
        QCPGraph * g = plot->addGraph();
        g->setName(modelTypeLabel(group));
        g->setLineStyle(QCPGraph::lsNone);
        const QColor color = kGroupColors[i++ % std::size(kGroupColors)];
        g->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssDisc, color, 9));
        g->setData(xy.first, xy.second);
    }
    QFont small = plot->font();
    small.setPointSizeF(std::max(7.0, small.pointSizeF() - 1.5));
    for (const auto & p : points) {
        auto * label = new QCPItemText(plot);
        label->setText(p.name);
        label->setFont(small);
        label->setColor(QColor(70, 70, 70));
        label->setPositionAlignment(Qt::AlignLeft | Qt::AlignBottom);
        label->position->setCoords(p.params, p.ppl);
        label->setPadding(QMargins(5, 0, 0, 2));
    }
    plot->rescaleAxes();
    // Air around the extremes so the markers and their names are not cut at the edges.
    for (QCPAxis * axis : {plot->xAxis, plot->yAxis}) {
        const QCPRange r = axis->range();
        const double pad = r.size() > 0 ? r.size() * 0.12 : std::max(1.0, std::abs(r.center()) * 0.1);
        axis->setRange(r.lower - pad, r.upper + pad);
    }
    plot->replot();
}

QString sweepCsv(const QVector<RunSummary> & runs) {
    QString out = QStringLiteral("name,model_type,status,heads_kept,layer_params,best_valid_ppl,test_ppl\n");
    for (const RunSummary & r : runs) {
        out += QStringList{csvField(r.name), csvField(r.modelType), csvField(r.status(false, false)),
                           r.headsKept >= 0 ? QString::number(r.headsKept) : QString(), number(r.layerParams),
                           number(r.bestValidPpl), number(r.lastTestPpl)}.join(',') + '\n';
    }
    return out;
}

} // namespace studio
