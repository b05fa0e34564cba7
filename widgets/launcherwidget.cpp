#include "launcherwidget.h"

#include <QComboBox>
#include <QDir>
#include <QDoubleSpinBox>
#include <QFile>
#include <QFileDialog>
#include <QFileInfo>
#include <QFontDatabase>
#include <QFormLayout>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QPlainTextEdit>
#include <QProcess>
#include <QPushButton>
#include <QSpinBox>
#include <QVBoxLayout>

#include <config.h>

#include "configvalidator.h"
#include "launchcommand.h"

namespace studio {

namespace {
// Reads json[a][b] (or json[a]) when it holds a value of the asked kind.
const nlohmann::ordered_json * at(const nlohmann::ordered_json & j, const char * a, const char * b = nullptr) {
    if (!j.is_object()) return nullptr;
    auto it = j.find(a);
    if (it == j.end()) return nullptr;
    if (!b) return &*it;
    if (!it->is_object()) return nullptr;
    auto jt = it->find(b);
    return jt == it->end() ? nullptr : &*jt;
}
long long intAt(const nlohmann::ordered_json & j, const char * a, const char * b, long long fallback) {
    const auto * v = at(j, a, b);
    return v && v->is_number_integer() ? v->get<long long>() : fallback;
}
double numberAt(const nlohmann::ordered_json & j, const char * a, const char * b, double fallback) {
    const auto * v = at(j, a, b);
    return v && v->is_number() ? v->get<double>() : fallback;
}
QString stringAt(const nlohmann::ordered_json & j, const char * a, const char * b, const QString & fallback) {
    const auto * v = at(j, a, b);
    return v && v->is_string() ? QString::fromStdString(v->get<std::string>()) : fallback;
}
QSpinBox * spin(int lo, int hi) {
    auto * s = new QSpinBox;
    s->setRange(lo, hi);
    s->setAccelerated(true);
    return s;
}
} // namespace

LauncherWidget::LauncherWidget(QWidget * parent) : QWidget(parent) {
    buildUi();
    setConfigText(QStringLiteral("{\n  \"name\": \"run\",\n  \"stages\": [\"train\"]\n}\n"));
}

void LauncherWidget::buildUi() {
    auto * layout = new QVBoxLayout(this);

    auto * chooser = new QHBoxLayout;
    configCombo_ = new QComboBox;
    configCombo_->setSizePolicy(QSizePolicy::Expanding, QSizePolicy::Fixed);
    browseButton_ = new QPushButton(tr("Other file..."));
    chooser->addWidget(new QLabel(tr("Config:")));
    chooser->addWidget(configCombo_, 1);
    chooser->addWidget(browseButton_);
    layout->addLayout(chooser);
    connect(configCombo_, QOverload<int>::of(&QComboBox::activated), this, [this](int i) {
        loadConfigFile(configCombo_->itemData(i).toString());
    });
    connect(browseButton_, &QPushButton::clicked, this, [this] {
        const QString path = QFileDialog::getOpenFileName(this, tr("Open config"), QString(), tr("JSON (*.json);;All files (*)"));
        if (!path.isEmpty()) loadConfigFile(path);
    });

    auto * body = new QHBoxLayout;
    auto * form = new QFormLayout;
    form->setFieldGrowthPolicy(QFormLayout::AllNonFixedFieldsGrow);
    name_ = new QLineEdit;
    modelType_ = new QComboBox;
    modelType_->addItems({QStringLiteral("all_attention"), QStringLiteral("transformer_xl")});
    numLayers_ = spin(1, 1024);
    numHeads_ = spin(1, 1024);
    hiddenDim_ = spin(1, 65536);
    trainSteps_ = spin(0, 100000000);
    trainSteps_->setSpecialValueText(tr("0 (use epochs)"));
    batchSize_ = spin(1, 1000000);
    l0Coefficient_ = new QDoubleSpinBox;
    l0Coefficient_->setRange(0, 100);
    l0Coefficient_->setDecimals(4);
    l0Coefficient_->setSingleStep(0.005);
    targetSparsity_ = new QDoubleSpinBox;
    // The minimum stands for "no target" (the key is removed).
    targetSparsity_->setRange(-0.01, 0.99);
    targetSparsity_->setDecimals(2);
    targetSparsity_->setSingleStep(0.05);
    targetSparsity_->setSpecialValueText(tr("none"));
    device_ = new QComboBox;
    device_->addItem(tr("CPU"), QStringLiteral("cpu"));
    gpus_ = spin(1, 64);
    devicesLabel_ = new QLabel(tr("detecting devices..."));
    devicesLabel_->setStyleSheet(QStringLiteral("color: gray"));
    // Object names let tests (and style sheets) find the fields.
    name_->setObjectName("name");
    modelType_->setObjectName("modelType");
    numLayers_->setObjectName("numLayers");
    numHeads_->setObjectName("numHeads");
    hiddenDim_->setObjectName("hiddenDim");
    trainSteps_->setObjectName("trainSteps");
    batchSize_->setObjectName("batchSize");
    l0Coefficient_->setObjectName("l0Coefficient");
    targetSparsity_->setObjectName("targetSparsity");
    device_->setObjectName("device");
    gpus_->setObjectName("gpus");
    form->addRow(tr("Name"), name_);
    form->addRow(tr("Model type"), modelType_);
    form->addRow(tr("Layers"), numLayers_);
    form->addRow(tr("Heads per layer"), numHeads_);
    form->addRow(tr("Hidden dim"), hiddenDim_);
    form->addRow(tr("Train steps"), trainSteps_);
    form->addRow(tr("Batch size"), batchSize_);
    form->addRow(tr("L0 coefficient"), l0Coefficient_);
    form->addRow(tr("Target sparsity"), targetSparsity_);
    form->addRow(tr("Device"), device_);
    form->addRow(tr("Processes (gpus)"), gpus_);
    form->addRow(QString(), devicesLabel_);
    auto * formBox = new QWidget;
    formBox->setLayout(form);
    formBox->setMaximumWidth(360);
    body->addWidget(formBox);

    editor_ = new QPlainTextEdit;
    editor_->setObjectName("editor");
    editor_->setFont(QFontDatabase::systemFont(QFontDatabase::FixedFont));
    editor_->setLineWrapMode(QPlainTextEdit::NoWrap);
    body->addWidget(editor_, 1);
    layout->addLayout(body, 1);

    status_ = new QLabel;
    status_->setWordWrap(true);
    status_->setObjectName("validation");
    status_->setTextInteractionFlags(Qt::TextSelectableByMouse);
    layout->addWidget(status_);

    auto * bottom = new QHBoxLayout;
    runsDirLabel_ = new QLabel;
    runsDirLabel_->setStyleSheet(QStringLiteral("color: gray"));
    launchButton_ = new QPushButton(tr("Launch"));
    launchButton_->setDefault(true);
    launchButton_->setObjectName("launch");
    bottom->addWidget(runsDirLabel_, 1);
    bottom->addWidget(launchButton_);
    layout->addLayout(bottom);
    connect(launchButton_, &QPushButton::clicked, this, [this] {
        if (isValid()) Q_EMIT launchRequested(runName(), configText());
    });

    connect(editor_, &QPlainTextEdit::textChanged, this, &LauncherWidget::onEditorChanged);
    for (QSpinBox * s : {numLayers_, numHeads_, hiddenDim_, trainSteps_, batchSize_, gpus_}) {
        connect(s, QOverload<int>::of(&QSpinBox::valueChanged), this, &LauncherWidget::onFormChanged);
    }
    for (QDoubleSpinBox * s : {l0Coefficient_, targetSparsity_}) {
        connect(s, QOverload<double>::of(&QDoubleSpinBox::valueChanged), this, &LauncherWidget::onFormChanged);
    }
    connect(name_, &QLineEdit::textEdited, this, &LauncherWidget::onFormChanged);
    connect(modelType_, QOverload<int>::of(&QComboBox::activated), this, &LauncherWidget::onFormChanged);
    connect(device_, QOverload<int>::of(&QComboBox::activated), this, &LauncherWidget::onFormChanged);
}

void LauncherWidget::setConfigsDir(const QString & dir) {
    configCombo_->clear();
    const auto files = QDir(dir).entryInfoList({QStringLiteral("*.json")}, QDir::Files, QDir::Name);
    for (const QFileInfo & f : files) configCombo_->addItem(f.fileName(), f.absoluteFilePath());
    if (configCombo_->count() == 0) {
        configCombo_->addItem(tr("(no configs in %1)").arg(dir), QString());
        return;
    }
    // Start from a real config rather than a blank one: the quickstart if there is one.
    const int quick = configCombo_->findText(QStringLiteral("quickstart.json"));
    loadConfigFile(configCombo_->itemData(quick >= 0 ? quick : 0).toString());
}

bool LauncherWidget::loadConfigFile(const QString & path) {
    QFile file(path);
    if (path.isEmpty() || !file.open(QIODevice::ReadOnly)) {
        setValidation(QStringLiteral("config error: %1: cannot open the file (check the path)").arg(path));
        return false;
    }
    const int i = configCombo_->findData(QFileInfo(path).absoluteFilePath());
    if (i < 0) {
        configCombo_->addItem(QFileInfo(path).fileName(), QFileInfo(path).absoluteFilePath());
        configCombo_->setCurrentIndex(configCombo_->count() - 1);
    } else {
        configCombo_->setCurrentIndex(i);
    }
    setConfigText(QString::fromUtf8(file.readAll()));
    return true;
}

void LauncherWidget::setConfigText(const QString & text) {
    editor_->setPlainText(text); // textChanged re-parses, syncs the form and validates
}

QString LauncherWidget::configText() const { return editor_->toPlainText(); }

QString LauncherWidget::runName() const {
    return stringAt(json_, "name", nullptr, QString::fromStdString(Config().name));
}

void LauncherWidget::setRunsDir(const QString & dir) {
    runsDirLabel_->setText(tr("Runs go to %1").arg(QDir(dir).absolutePath()));
}

void LauncherWidget::onEditorChanged() {
    if (syncing_) return;
    const ConfigCheck check = checkConfigText(editor_->toPlainText());
    auto parsed = nlohmann::ordered_json::parse(editor_->toPlainText().toStdString(), nullptr, false, true);
    const bool parseable = !parsed.is_discarded() && parsed.is_object();
    if (parseable) {
        json_ = std::move(parsed);
        updateFormFromJson();
    }
    // Editing fields of a document that does not parse would throw the user's text away.
    for (QWidget * w : std::initializer_list<QWidget *>{name_, modelType_, numLayers_, numHeads_, hiddenDim_, trainSteps_,
                                                        batchSize_, l0Coefficient_, targetSparsity_, device_, gpus_}) {
        w->setEnabled(parseable);
    }
    setValidation(check.message);
}

void LauncherWidget::updateFormFromJson() {
    const Config defaults;
    syncing_ = true;
    name_->setText(stringAt(json_, "name", nullptr, QString::fromStdString(defaults.name)));
    modelType_->setCurrentText(stringAt(json_, "model", "type", QStringLiteral("all_attention")));
    numLayers_->setValue((int) intAt(json_, "model", "num_layers", defaults.model.num_layers));
    numHeads_->setValue((int) intAt(json_, "model", "num_heads", defaults.model.num_heads));
    hiddenDim_->setValue((int) intAt(json_, "model", "hidden_dim", defaults.model.hidden_dim));
    trainSteps_->setValue((int) intAt(json_, "train", "steps", defaults.train.steps));
    batchSize_->setValue((int) intAt(json_, "train", "batch_size", defaults.train.batch_size));
    l0Coefficient_->setValue(numberAt(json_, "gate", "l0_coefficient", defaults.gate.l0_coefficient));
    targetSparsity_->setValue(numberAt(json_, "gate", "target_sparsity", targetSparsity_->minimum()));
    const QString device = stringAt(json_, "device", nullptr, QString::fromStdString(defaults.device));
    int di = device_->findData(device);
    if (di < 0) { device_->addItem(device, device); di = device_->count() - 1; }
    device_->setCurrentIndex(di);
    gpus_->setValue((int) intAt(json_, "gpus", nullptr, defaults.gpus));
    syncing_ = false;
}

void LauncherWidget::onFormChanged() {
    if (syncing_ || !json_.is_object()) return;
    auto section = [this](const char * key) -> nlohmann::ordered_json & {
        if (!json_.contains(key) || !json_[key].is_object()) json_[key] = nlohmann::ordered_json::object();
        return json_[key];
    };
    // Only fields the user changed are written, so the config keeps relying on the engine's defaults elsewhere.
    QObject * from = sender();
    if (from == name_) json_["name"] = name_->text().toStdString();
    else if (from == modelType_) section("model")["type"] = modelType_->currentText().toStdString();
    else if (from == numLayers_) section("model")["num_layers"] = numLayers_->value();
    else if (from == numHeads_) section("model")["num_heads"] = numHeads_->value();
    else if (from == hiddenDim_) section("model")["hidden_dim"] = hiddenDim_->value();
    else if (from == trainSteps_) section("train")["steps"] = trainSteps_->value();
    else if (from == batchSize_) section("train")["batch_size"] = batchSize_->value();
    else if (from == l0Coefficient_) section("gate")["l0_coefficient"] = l0Coefficient_->value();
    else if (from == targetSparsity_) {
        if (targetSparsity_->value() <= targetSparsity_->minimum()) section("gate").erase("target_sparsity");
        else section("gate")["target_sparsity"] = targetSparsity_->value();
    } else if (from == device_) json_["device"] = device_->currentData().toString().toStdString();
    else if (from == gpus_) json_["gpus"] = gpus_->value();
    syncing_ = true;
    editor_->setPlainText(QString::fromStdString(json_.dump(2)) + "\n");
    syncing_ = false;
    setValidation(checkConfigText(editor_->toPlainText()).message);
}

void LauncherWidget::setValidation(const QString & message) {
    message_ = message;
    QString text = message;
    if (message.isEmpty()) {
        text = tr("Valid config.");
        const QString device = stringAt(json_, "device", nullptr, QStringLiteral("cpu"));
        const int gpus = (int) intAt(json_, "gpus", nullptr, 1);
        if (device == "cuda" && gpus > cudaDevices_) text += tr(" Warning: %1 GPUs asked for, %2 detected here.").arg(gpus).arg(cudaDevices_);
    }
    status_->setText(text);
    status_->setStyleSheet(message.isEmpty() ? QStringLiteral("color: #1e7d32") : QStringLiteral("color: #c62828; font-weight: bold"));
    launchButton_->setEnabled(message.isEmpty());
}

void LauncherWidget::detectDevices(const QString & studioExe) {
    if (devicesProcess_) return;
    devicesProcess_ = new QProcess(this);
    const LaunchCommand cmd = LaunchCommand::devices(studioExe);
    connect(devicesProcess_, &QProcess::finished, this, [this](int code, QProcess::ExitStatus status) {
        int n = -1;
        if (status == QProcess::NormalExit && code == 0) {
            const QByteArray out = devicesProcess_->readAllStandardOutput();
            auto j = nlohmann::json::parse(out.toStdString(), nullptr, false);
            if (j.is_object() && j.contains("cuda_devices") && j["cuda_devices"].is_number_integer()) n = j["cuda_devices"].get<int>();
        }
        devicesProcess_->deleteLater();
        devicesProcess_ = nullptr;
        setCudaDevices(n);
    });
    connect(devicesProcess_, &QProcess::errorOccurred, this, [this](QProcess::ProcessError error) {
        if (error != QProcess::FailedToStart || !devicesProcess_) return;
        devicesProcess_->deleteLater();
        devicesProcess_ = nullptr;
        setCudaDevices(-1);
    });
    devicesProcess_->start(cmd.program, cmd.arguments);
}

void LauncherWidget::setCudaDevices(int n) {
    cudaDevices_ = std::max(n, 0);
    if (n < 0) devicesLabel_->setText(tr("device query failed: CPU only"));
    else if (n == 0) devicesLabel_->setText(tr("no CUDA device: CPU only"));
    else devicesLabel_->setText(tr("%n CUDA device(s) detected", nullptr, n));
    if (n > 0 && device_->findData(QStringLiteral("cuda")) < 0) device_->addItem(tr("%n GPU(s) (CUDA)", nullptr, n), QStringLiteral("cuda"));
    updateFormFromJson();
    setValidation(message_);
}

} // namespace studio
