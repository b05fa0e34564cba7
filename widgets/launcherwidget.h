// The launcher: pick a config, edit common fields in a form kept in sync with a JSON editor, see the engine's
// validator verdict inline, and ask for a launch. Launch stays disabled while the config is invalid.
#pragma once

#include <QWidget>

#include <nlohmann/json.hpp>

class QComboBox;
class QDoubleSpinBox;
class QLabel;
class QLineEdit;
class QPlainTextEdit;
class QProcess;
class QPushButton;
class QSpinBox;

namespace studio {

class LauncherWidget : public QWidget {
    Q_OBJECT
public:
    explicit LauncherWidget(QWidget * parent = nullptr);

    /// Lists *.json under dir in the config chooser.
    void setConfigsDir(const QString & dir);
    bool loadConfigFile(const QString & path);
    void setConfigText(const QString & text);
    QString configText() const;
    /// The editor's verdict: empty when valid, else the "config error: ..." line shown under the editor.
    QString validationMessage() const { return message_; }
    bool isValid() const { return message_.isEmpty(); }
    QString runName() const;
    /// Runs `studio devices --json` in the background and offers CUDA with the count it prints.
    void detectDevices(const QString & studioExe);
    int cudaDevices() const { return cudaDevices_; }
    void setRunsDir(const QString & dir);

Q_SIGNALS:
    /// The user pressed Launch on a valid config.
    void launchRequested(const QString & name, const QString & configText);

private:
    void buildUi();
    void onEditorChanged();
    void onFormChanged();
    void updateFormFromJson();
    void setValidation(const QString & message);
    void setCudaDevices(int n);

    QComboBox * configCombo_ = nullptr;
    QPushButton * browseButton_ = nullptr;
    QLineEdit * name_ = nullptr;
    QComboBox * modelType_ = nullptr;
    QSpinBox * numLayers_ = nullptr;
    QSpinBox * numHeads_ = nullptr;
    QSpinBox * hiddenDim_ = nullptr;
    QSpinBox * trainSteps_ = nullptr;
    QSpinBox * batchSize_ = nullptr;
    QDoubleSpinBox * l0Coefficient_ = nullptr;
    QDoubleSpinBox * targetSparsity_ = nullptr;
    QComboBox * device_ = nullptr;
    QSpinBox * gpus_ = nullptr;
    QLabel * devicesLabel_ = nullptr;
    QPlainTextEdit * editor_ = nullptr;
    QLabel * status_ = nullptr;
    QLabel * runsDirLabel_ = nullptr;
    QPushButton * launchButton_ = nullptr;
    QProcess * devicesProcess_ = nullptr;

    nlohmann::ordered_json json_;   // the editor's last parseable document, in the user's key order
    QString message_ = QStringLiteral("config error: empty");
    bool syncing_ = false;
    int cudaDevices_ = 0;
};

} // namespace studio
