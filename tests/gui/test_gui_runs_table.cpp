// The runs list, built from two fake run directories (config.json + events.jsonl), column by column.
#include <QDir>
#include <QTemporaryDir>
#include <QtTest>

#include <fstream>

#include <nlohmann/json.hpp>

#include "runstablemodel.h"
#include "runsummary.h"

using nlohmann::json;
using studio::RunsTableModel;

namespace {
void writeFile(const QString & path, const std::string & text, bool append = false) {
    std::ofstream out(path.toStdString(), append ? std::ios::app : std::ios::trunc);
    out << text;
}
std::string lines(std::initializer_list<json> events) {
    std::string s;
    for (const auto & e : events) s += e.dump() + "\n";
    return s;
}
QString cell(const RunsTableModel & m, int row, int column) {
    return m.data(m.index(row, column)).toString();
}
} // namespace

class TestRunsTable : public QObject {
    Q_OBJECT
private:
    QTemporaryDir root_;
    QString alpha_, beta_;

private Q_SLOTS:
    void initTestCase() {
        QVERIFY(root_.isValid());
        QDir(root_.path()).mkpath("alpha");
        QDir(root_.path()).mkpath("beta");
        QDir(root_.path()).mkpath("not-a-run"); // no config, no events: not listed
        alpha_ = root_.filePath("alpha");
        beta_ = root_.filePath("beta");

        // alpha: trained, gated, pruned to 2 + 3 heads, finished.
        writeFile(alpha_ + "/config.json", R"({"name": "alpha", "model": {"type": "all_attention", "num_layers": 2}})");
        writeFile(alpha_ + "/events.jsonl", lines({
            {{"event", "run_start"}, {"name", "alpha"}, {"model", {{"type", "all_attention"}, {"num_layers", 2}, {"heads_per_layer", {4, 4}}, {"params_layers", 1000}}}},
            {{"event", "stage_start"}, {"stage", "train"}, {"total_steps", 10}},
            {{"event", "eval"}, {"stage", "train"}, {"step", 5}, {"split", "valid"}, {"ppl", 40.0}},
            {{"event", "eval"}, {"stage", "train"}, {"step", 10}, {"split", "valid"}, {"ppl", 35.5}},
            {{"event", "eval"}, {"stage", "train"}, {"step", 10}, {"split", "test"}, {"ppl", 20.0}},
            {{"event", "stage_start"}, {"stage", "gate"}, {"total_steps", 10}},
            {{"event", "eval"}, {"stage", "gate"}, {"step", 10}, {"split", "valid"}, {"ppl", 37.25}},
            {{"event", "stage_start"}, {"stage", "prune"}},
            {{"event", "prune"}, {"heads_kept", {{0, 1}, {0, 2, 3}}}, {"heads_per_layer", {2, 3}}, {"params_before", 2000}, {"params_after", 1600}, {"layer_params_before", 1000}, {"layer_params_after", 625}},
            {{"event", "run_end"}, {"status", "ok"}, {"step", 10}}}));

        // beta: Transformer-XL per config.json (run_start says otherwise: the config wins), still training, then an error.
        writeFile(beta_ + "/config.json", R"({"name": "beta", "model": {"type": "transformer_xl"}})");
        writeFile(beta_ + "/events.jsonl", lines({
            {{"event", "run_start"}, {"name", "beta"}, {"model", {{"type", "all_attention"}, {"num_layers", 3}, {"heads_per_layer", {4, 4, 4}}, {"params_layers", 3000}}}},
            {{"event", "stage_start"}, {"stage", "train"}, {"total_steps", 100}},
            {{"event", "train"}, {"stage", "train"}, {"step", 25}, {"ppl", 300.0}}}));
    }

    void columnsOfTwoRuns() {
        studio::RunScanner scanner;
        RunsTableModel model;
        model.setSummaries(scanner.scan(root_.path()));
        QCOMPARE(model.rowCount(), 2);
        QCOMPARE(model.columnCount(), 6);
        QCOMPARE(model.headerData(RunsTableModel::BestValidPpl, Qt::Horizontal).toString(), QStringLiteral("Best valid ppl"));

        QCOMPARE(cell(model, 0, RunsTableModel::Name), QStringLiteral("alpha"));
        QCOMPARE(cell(model, 0, RunsTableModel::ModelType), QStringLiteral("all_attention"));
        QCOMPARE(cell(model, 0, RunsTableModel::Stage), QStringLiteral("prune"));
        QCOMPARE(cell(model, 0, RunsTableModel::Status), QStringLiteral("finished"));
        QCOMPARE(cell(model, 0, RunsTableModel::HeadsKept), QStringLiteral("5"));       // prune's 2 + 3
        QCOMPARE(cell(model, 0, RunsTableModel::BestValidPpl), QStringLiteral("35.50")); // min over valid, not test's 20
        QCOMPARE(model.data(model.index(0, 0), RunsTableModel::DirRole).toString(), QDir(alpha_).absolutePath());
        QCOMPARE(model.summaryAt(0).layerParams, 625.0);
        QCOMPARE(model.summaryAt(0).lastTestPpl, 20.0);

        QCOMPARE(cell(model, 1, RunsTableModel::Name), QStringLiteral("beta"));
        QCOMPARE(cell(model, 1, RunsTableModel::ModelType), QStringLiteral("transformer_xl"));
        QCOMPARE(cell(model, 1, RunsTableModel::Stage), QStringLiteral("train"));
        QCOMPARE(cell(model, 1, RunsTableModel::Status), QStringLiteral("running")); // fresh writes, no run_end
        QCOMPARE(cell(model, 1, RunsTableModel::HeadsKept), QStringLiteral("12"));    // run_start's 4 + 4 + 4
        QCOMPARE(cell(model, 1, RunsTableModel::BestValidPpl), QString());
        QCOMPARE(model.summaryAt(1).layerParams, 3000.0);
    }

    void statusFollowsProcessesAndNewEvents() {
        studio::RunScanner scanner;
        RunsTableModel model;
        model.setSummaries(scanner.scan(root_.path()));
        const QString beta = QDir(beta_).absolutePath();

        // A process of ours that died without run_end is an error, its last output line in the tooltip.
        model.setProcess(beta, {false, QStringLiteral("terminate called after throwing")});
        QCOMPARE(cell(model, 1, RunsTableModel::Status), QStringLiteral("error"));
        QVERIFY(model.data(model.index(1, 0), Qt::ToolTipRole).toString().contains("terminate called after throwing"));
        model.setProcess(beta, {true, QString()});
        QCOMPARE(cell(model, 1, RunsTableModel::Status), QStringLiteral("running"));

        // Only the appended lines are read on the next scan.
        writeFile(beta_ + "/events.jsonl", lines({
            {{"event", "eval"}, {"stage", "train"}, {"step", 50}, {"split", "valid"}, {"ppl", 120.125}},
            {{"event", "stage_start"}, {"stage", "gate"}, {"total_steps", 10}},
            {{"event", "run_end"}, {"status", "stopped"}, {"step", 3}}}), /*append=*/true);
        model.setSummaries(scanner.scan(root_.path()));
        QCOMPARE(cell(model, 1, RunsTableModel::Status), QStringLiteral("stopped")); // run_end beats a live pid
        QCOMPARE(cell(model, 1, RunsTableModel::Stage), QStringLiteral("gate"));
        QCOMPARE(cell(model, 1, RunsTableModel::BestValidPpl), QStringLiteral("120.13"));
    }

    void staleRunWithoutEndIsStoppedAndErrorEventIsError() {
        QTemporaryDir root;
        QDir(root.path()).mkpath("old");
        const QString old = root.filePath("old");
        writeFile(old + "/events.jsonl", lines({{{"event", "run_start"}, {"name", "old"}}}));
        QFile f(old + "/events.jsonl");
        QVERIFY(f.open(QIODevice::ReadWrite));
        QVERIFY(f.setFileTime(QDateTime::currentDateTime().addSecs(-3600), QFileDevice::FileModificationTime));
        f.close();
        studio::RunScanner scanner;
        RunsTableModel model;
        model.setSummaries(scanner.scan(root.path()));
        QCOMPARE(cell(model, 0, RunsTableModel::Status), QStringLiteral("stopped"));
        writeFile(old + "/events.jsonl", lines({{{"event", "error"}, {"message", "loss is NaN at step 7"}}}), true);
        model.setSummaries(scanner.scan(root.path()));
        QCOMPARE(cell(model, 0, RunsTableModel::Status), QStringLiteral("error"));
        QVERIFY(model.data(model.index(0, 0), Qt::ToolTipRole).toString().contains("loss is NaN at step 7"));
    }
};

QTEST_MAIN(TestRunsTable)
#include "test_gui_runs_table.moc"
