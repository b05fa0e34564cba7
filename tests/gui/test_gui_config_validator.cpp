// The launcher's inline validation is the engine's own (config_from_json), with its exact one-line messages, and the
// form and the JSON editor stay in sync.
#include <QComboBox>
#include <QDoubleSpinBox>
#include <QLabel>
#include <QLineEdit>
#include <QPlainTextEdit>
#include <QPushButton>
#include <QSpinBox>
#include <QTemporaryDir>
#include <QtTest>

#include <nlohmann/json.hpp>

#include "configvalidator.h"
#include "launcherwidget.h"

using studio::checkConfigText;

class TestConfigValidator : public QObject {
    Q_OBJECT
private Q_SLOTS:
    void exactMessages() {
        QCOMPARE(checkConfigText(R"({"model": {"num_heads": 7, "hidden_dim": 512}})").message,
                 QStringLiteral("config error: model.num_heads: 7 does not divide hidden_dim 512"));
        QCOMPARE(checkConfigText(R"({"gate": {"target_sparsity": 1.5}})").message,
                 QStringLiteral("config error: gate.target_sparsity: must be in [0, 1), got 1.5"));
        QCOMPARE(checkConfigText(R"({"trian": {}})").message,
                 QStringLiteral("config error: trian: unknown key (check the spelling; docs/config.md lists every key)"));
        const auto ok = checkConfigText(R"({"name": "q", "model": {"num_heads": 8, "hidden_dim": 512}})");
        QVERIFY2(ok.ok, qPrintable(ok.message));
        QVERIFY(ok.message.isEmpty());
    }

    void badJsonNamesTheLine() {
        const auto check = checkConfigText("{\n  \"name\": \"q\",\n  \"gpus\": \n}");
        QVERIFY(!check.ok);
        QVERIFY2(check.message.startsWith("config error: not valid JSON (parse error at line 4, column 1"), qPrintable(check.message));
    }

    void launcherShowsErrorAndBlocksLaunch() {
        studio::LauncherWidget w;
        auto * editor = w.findChild<QPlainTextEdit *>("editor");
        auto * launch = w.findChild<QPushButton *>("launch");
        auto * label = w.findChild<QLabel *>("validation");
        QVERIFY(editor && launch && label);

        editor->setPlainText(R"({"name": "a", "model": {"num_heads": 8, "hidden_dim": 512}})");
        QVERIFY(w.isValid());
        QVERIFY(launch->isEnabled());
        QCOMPARE(w.runName(), QStringLiteral("a"));

        editor->setPlainText(R"({"name": "a", "model": {"num_heads": 7, "hidden_dim": 512}})");
        QCOMPARE(w.validationMessage(), QStringLiteral("config error: model.num_heads: 7 does not divide hidden_dim 512"));
        QCOMPARE(label->text(), w.validationMessage());
        QVERIFY(!launch->isEnabled());
        QCOMPARE(w.findChild<QSpinBox *>("numHeads")->value(), 7); // the form follows the editor
    }

    void formEditsWriteTheJson() {
        studio::LauncherWidget w;
        auto * editor = w.findChild<QPlainTextEdit *>("editor");
        editor->setPlainText(R"({"name": "a", "model": {"num_heads": 7, "hidden_dim": 512}})");
        QVERIFY(!w.isValid());
        auto * heads = w.findChild<QSpinBox *>("numHeads");
        heads->setValue(8); // as if the user typed it
        auto j = nlohmann::json::parse(editor->toPlainText().toStdString());
        QCOMPARE(j["model"]["num_heads"].get<int>(), 8);
        QCOMPARE(j["model"]["hidden_dim"].get<int>(), 512);
        QVERIFY(w.isValid());

        auto * target = w.findChild<QDoubleSpinBox *>("targetSparsity");
        target->setValue(0.5);
        j = nlohmann::json::parse(editor->toPlainText().toStdString());
        QCOMPARE(j["gate"]["target_sparsity"].get<double>(), 0.5);
        target->setValue(target->minimum()); // "none" removes the key
        j = nlohmann::json::parse(editor->toPlainText().toStdString());
        QVERIFY(!j["gate"].contains("target_sparsity"));

        auto * name = w.findChild<QLineEdit *>("name");
        name->setText("renamed");
        Q_EMIT name->textEdited("renamed");
        QCOMPARE(w.runName(), QStringLiteral("renamed"));
        QVERIFY(editor->toPlainText().contains("\"name\": \"renamed\""));
    }

    void loadsConfigFilesFromTheFolder() {
        QTemporaryDir dir;
        QFile f(dir.filePath("quick.json"));
        QVERIFY(f.open(QIODevice::WriteOnly));
        f.write(R"({"name": "quick", "train": {"steps": 20, "batch_size": 4}})");
        f.close();
        studio::LauncherWidget w;
        w.setConfigsDir(dir.path());
        QVERIFY(w.loadConfigFile(dir.filePath("quick.json")));
        QCOMPARE(w.runName(), QStringLiteral("quick"));
        QCOMPARE(w.findChild<QSpinBox *>("trainSteps")->value(), 20);
        QCOMPARE(w.findChild<QSpinBox *>("batchSize")->value(), 4);
        QVERIFY(!w.loadConfigFile(dir.filePath("missing.json")));
        QVERIFY(w.validationMessage().startsWith("config error: "));
    }
};

QTEST_MAIN(TestConfigValidator)
#include "test_gui_config_validator.moc"
