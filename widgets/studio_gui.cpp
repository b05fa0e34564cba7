#include "studio_gui.h"

#include <QApplication>
#include <QIcon>
#include <QCommandLineParser>
#include <QDir>
#include <QFileInfo>
#include <QFile>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <nlohmann/json.hpp>

#include "mainwindow.h"
#include "plotmath.h"
#include "plotutil.h"
#include "qcp.h"
#include "sweepplot.h"

namespace studio {

namespace {

bool hasDisplay() {
    return std::getenv("DISPLAY") || std::getenv("WAYLAND_DISPLAY") || std::getenv("QT_QPA_PLATFORM");
}

// argv without a leading subcommand word, which app/main.cpp may or may not have stripped.
QStringList argumentsOf(int argc, char ** argv, const char * subcommand) {
    QStringList args;
    for (int i = 0; i < argc; ++i) {
        if (i == 1 && std::strcmp(argv[i], subcommand) == 0) continue;
        args << QString::fromLocal8Bit(argv[i]);
    }
    return args;
}

// The point directories a sweep's sweep.json lists, or nothing when `dir` is not a sweep.
QStringList sweepPointDirs(const QString & dir) {
    QFile file(QDir(dir).filePath(QStringLiteral("sweep.json")));
    if (!file.open(QIODevice::ReadOnly)) return {};
    const auto summary = nlohmann::json::parse(file.readAll().toStdString(), nullptr, /*allow_exceptions=*/false);
    QStringList dirs;
    if (!summary.is_object() || !summary.contains("points") || !summary["points"].is_array()) return dirs;
    for (const auto & point : summary["points"]) {
        if (point.is_object() && point.contains("dir") && point["dir"].is_string()) {
            const QString sub = QDir(dir).filePath(QString::fromStdString(point["dir"].get<std::string>()));
            if (QFileInfo::exists(QDir(sub).filePath(QStringLiteral("events.jsonl")))) dirs << sub;
        }
    }
    return dirs;
}

// QApplication keeps references to argc and argv for its whole life.
struct AppArgs {
    explicit AppArgs(char * exe) : argv{exe, nullptr} {}
    int argc = 1;
    char * argv[2];
};

} // namespace

int studio_gui_main(int argc, char ** argv) {
    const QStringList args = argumentsOf(argc, argv, "gui");
    bool wantsScreenshot = false;
    for (const QString & a : args) wantsScreenshot = wantsScreenshot || a.startsWith("--screenshot");
    if (wantsScreenshot && !hasDisplay()) qputenv("QT_QPA_PLATFORM", "offscreen");

    AppArgs appArgs(argv[0]);
    QApplication app(appArgs.argc, appArgs.argv);
    QApplication::setApplicationName(QStringLiteral("Head Pruning Studio"));
    QApplication::setWindowIcon(QIcon(QStringLiteral(":/studio-icon.png")));

    QCommandLineParser parser;
    parser.setApplicationDescription(QStringLiteral("Head Pruning Studio: launch, follow and compare runs."));
    parser.addHelpOption();
    const QCommandLineOption open(QStringLiteral("open"), QStringLiteral("Show this run directory."), QStringLiteral("RUN_DIR"));
    const QCommandLineOption launch(QStringLiteral("launch"), QStringLiteral("Launch this config at once."), QStringLiteral("CONFIG"));
    const QCommandLineOption runsDir(QStringLiteral("runs-dir"), QStringLiteral("Folder of runs (default ./runs)."), QStringLiteral("DIR"), QStringLiteral("runs"));
    const QCommandLineOption shot(QStringLiteral("screenshot"), QStringLiteral("Save the window to this PNG, then quit."), QStringLiteral("PNG"));
    const QCommandLineOption gates(QStringLiteral("exit-when-gates"), QStringLiteral("Take the screenshot and quit once the heatmap has data (stops a launched run)."));
    const QCommandLineOption timeout(QStringLiteral("timeout"), QStringLiteral("Give up after S seconds (exit 1 while waiting for gates)."), QStringLiteral("S"), QStringLiteral("0"));
    parser.addOptions({open, launch, runsDir, shot, gates, timeout});
    if (!parser.parse(args)) {
        std::fprintf(stderr, "studio gui: %s\n%s", qPrintable(parser.errorText()), qPrintable(parser.helpText()));
        return 2;
    }
    if (parser.isSet(QStringLiteral("help"))) {
        std::printf("%s", qPrintable(parser.helpText()));
        return 0;
    }
    if (!parser.positionalArguments().isEmpty()) {
        std::fprintf(stderr, "studio gui: unexpected argument %s\n%s", qPrintable(parser.positionalArguments().first()), qPrintable(parser.helpText()));
        return 2;
    }
    bool ok = true;
    GuiOptions options;
    options.runsDir = parser.value(runsDir);
    options.openDir = parser.value(open);
    options.launchConfig = parser.value(launch);
    options.screenshot = parser.value(shot);
    options.exitWhenGates = parser.isSet(gates);
    options.timeoutS = parser.value(timeout).toDouble(&ok);
    if (!ok || options.timeoutS < 0) {
        std::fprintf(stderr, "studio gui: --timeout wants seconds, got %s\n", qPrintable(parser.value(timeout)));
        return 2;
    }
    options.studioExe = QCoreApplication::applicationFilePath();
    options.configsDir = QDir::current().filePath(QStringLiteral("configs"));

    MainWindow window(options);
    window.show();
    QMetaObject::invokeMethod(&window, [&window] { window.startAutomation(); }, Qt::QueuedConnection);
    return app.exec();
}

int studio_plot_sweep_main(int argc, char ** argv) {
    const QStringList args = argumentsOf(argc, argv, "plot-sweep");
    if (!hasDisplay()) qputenv("QT_QPA_PLATFORM", "offscreen");
    AppArgs appArgs(argv[0]);
    QApplication app(appArgs.argc, appArgs.argv);

    QCommandLineParser parser;
    parser.setApplicationDescription(QStringLiteral("Layer parameters against perplexity for several runs, with the Pareto front."));
    parser.addHelpOption();
    parser.addPositionalArgument(QStringLiteral("SOURCE"), QStringLiteral("Run directories, sweep directories (their points) or CSV files (the sweep view's export, scripts/results.py)."),
                                 QStringLiteral("SOURCE..."));
    const QCommandLineOption out(QStringLiteral("out"), QStringLiteral("Output file, .png or .pdf."), QStringLiteral("FILE"));
    const QCommandLineOption width(QStringLiteral("width"), QStringLiteral("Width in pixels (default 900)."), QStringLiteral("W"), QStringLiteral("900"));
    const QCommandLineOption height(QStringLiteral("height"), QStringLiteral("Height in pixels (default 600)."), QStringLiteral("H"), QStringLiteral("600"));
    parser.addOptions({out, width, height});
    if (!parser.parse(args)) {
        std::fprintf(stderr, "studio plot-sweep: %s\n%s", qPrintable(parser.errorText()), qPrintable(parser.helpText()));
        return 2;
    }
    if (parser.isSet(QStringLiteral("help"))) { std::printf("%s", qPrintable(parser.helpText())); return 0; }
    const QString outPath = parser.value(out);
    const QString suffix = QFileInfo(outPath).suffix().toLower();
    bool okW = false, okH = false;
    const int w = parser.value(width).toInt(&okW), h = parser.value(height).toInt(&okH);
    if (outPath.isEmpty() || (suffix != "png" && suffix != "pdf") || parser.positionalArguments().isEmpty() || !okW || !okH || w < 50 || h < 50) {
        std::fprintf(stderr, "studio plot-sweep: usage: studio plot-sweep RUN_DIR|SWEEP_DIR|FILE.csv... --out FILE.png|.pdf [--width W --height H]\n");
        return 2;
    }
    RunScanner scanner;
    QVector<RunSummary> runs;
    for (const QString & source : parser.positionalArguments()) {
        if (source.endsWith(QLatin1String(".csv"), Qt::CaseInsensitive)) {
            QFile file(source);
            QString error;
            const QVector<RunSummary> rows = file.open(QIODevice::ReadOnly) ? sweepRunsFromCsv(QString::fromUtf8(file.readAll()), &error) : QVector<RunSummary>();
            if (rows.isEmpty()) {
                std::fprintf(stderr, "studio plot-sweep: %s: %s\n", qPrintable(source), qPrintable(error.isEmpty() ? QStringLiteral("no rows") : error));
                return 1;
            }
            runs += rows;
            continue;
        }
        // A sweep's run directory stands for its points (sweep.json lists them).
        const QStringList dirs = sweepPointDirs(source);
        for (const QString & dir : dirs.isEmpty() ? QStringList{source} : dirs) {
            if (!QFileInfo::exists(QDir(dir).filePath("events.jsonl"))) {
                std::fprintf(stderr, "studio plot-sweep: %s has no events.jsonl (is it a run directory?)\n", qPrintable(dir));
                return 1;
            }
            runs.push_back(scanner.scanRun(dir));
        }
    }
    const QVector<SweepPoint> points = sweepPoints(runs, /*preferValid=*/false);
    if (points.isEmpty()) {
        std::fprintf(stderr, "studio plot-sweep: no run has both layer parameters (prune or run_start) and a perplexity (eval)\n");
        return 1;
    }
    QCustomPlot plot;
    plot.resize(w, h);
    stylePlot(&plot, QStringLiteral("layer parameters"), QStringLiteral("perplexity"));
    bool anyTest = false;
    for (const RunSummary & r : runs) anyTest = anyTest || std::isfinite(r.lastTestPpl);
    drawSweep(&plot, points, anyTest ? QStringLiteral("test perplexity (else valid)") : QStringLiteral("valid perplexity"));
    QDir().mkpath(QFileInfo(outPath).absolutePath());
    if (!savePlot(&plot, outPath, w, h)) {
        std::fprintf(stderr, "studio plot-sweep: cannot write %s\n", qPrintable(outPath));
        return 1;
    }
    QVector<double> cost, value;
    for (const auto & p : points) { cost << p.params; value << p.ppl; }
    std::printf("wrote %s: %d runs, %d on the Pareto front\n", qPrintable(outPath), (int) points.size(), (int) paretoFront(cost, value).size());
    return 0;
}

} // namespace studio
