// Replays every input in tests/fuzz/regressions/<harness>/ through the fuzz harnesses' code (fuzz_harnesses.h)
// without libFuzzer: each file that once crashed a harness or broke one of its invariants must now pass.
// Links studio_core, Qt6::Core and Qt6::Test only. Memory and UB findings only show in a sanitizer build
// (scripts/sanitize.sh, or the fuzz tree's own build of this test); round-trip findings fail in any build.
#include <QDir>
#include <QDirIterator>
#include <QFile>
#include <QFileInfo>
#include <QTest>

#include "fuzz_harnesses.h"

namespace {

QString regressions_dir() {
    const QByteArray env = qgetenv("STUDIO_FUZZ_REGRESSIONS");
    if (!env.isEmpty()) return QString::fromLocal8Bit(env);
    return QFileInfo(QStringLiteral(__FILE__)).absoluteDir().filePath(QStringLiteral("regressions"));
}

using Harness = void (*)(const uint8_t *, size_t);

Harness harness_named(const QString & name) {
    if (name == QLatin1String("fuzz_config")) return fuzz::config_one;
    if (name == QLatin1String("fuzz_events")) return fuzz::events_one;
    if (name == QLatin1String("fuzz_wikitext")) return fuzz::wikitext_one;
    if (name == QLatin1String("fuzz_safetensors")) return fuzz::safetensors_one;
    return nullptr;
}

} // namespace

class TestFuzzRegressions : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void initTestCase() {
        QVERIFY2(QDir(regressions_dir()).exists(), qPrintable(QStringLiteral("no folder ") + regressions_dir()));
    }

    void every_harness_folder_is_known() {
        const auto folders = QDir(regressions_dir()).entryList(QDir::Dirs | QDir::NoDotAndDotDot);
        for (const auto & folder : folders) QVERIFY2(harness_named(folder) != nullptr, qPrintable(QStringLiteral("unknown harness folder ") + folder));
    }

    void replay_data() {
        QTest::addColumn<QString>("harness");
        QTest::addColumn<QString>("path");
        QDirIterator it(regressions_dir(), QDir::Files, QDirIterator::Subdirectories);
        QStringList paths;
        while (it.hasNext()) paths << it.next();
        paths.sort();
        for (const auto & path : paths) {
            if (path.endsWith(QLatin1String(".md"))) continue; // notes beside the inputs
            const QFileInfo info(path);
            const QString harness = info.dir().dirName();
            QTest::newRow(qPrintable(harness + QLatin1Char('/') + info.fileName())) << harness << path;
        }
    }

    void replay() {
        QFETCH(QString, harness);
        QFETCH(QString, path);
        const Harness run = harness_named(harness);
        QVERIFY2(run != nullptr, qPrintable(QStringLiteral("unknown harness ") + harness));
        QFile file(path);
        QVERIFY(file.open(QIODevice::ReadOnly));
        const QByteArray bytes = file.readAll();
        try {
            run(reinterpret_cast<const uint8_t *>(bytes.constData()), (size_t) bytes.size());
        } catch (const fuzz::Finding & finding) {
            QFAIL(finding.what());
        } catch (const std::exception & e) {
            QFAIL(qPrintable(QStringLiteral("undocumented exception escaped: ") + QString::fromUtf8(e.what())));
        }
    }
};

QTEST_GUILESS_MAIN(TestFuzzRegressions)
#include "test_fuzz_regressions.moc"
