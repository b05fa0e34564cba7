#include "configvalidator.h"

#include <config.h>

namespace studio {

ConfigCheck checkConfigText(const QString & text) {
    ConfigCheck check;
    try {
        // Comments are allowed, as config_load allows them.
        check.json = nlohmann::json::parse(text.toStdString(), nullptr, /*allow_exceptions=*/true, /*ignore_comments=*/true);
    } catch (const nlohmann::json::parse_error & e) {
        std::string what = e.what();
        const auto pos = what.find("parse error");
        check.message = QStringLiteral("config error: not valid JSON (%1)")
                            .arg(QString::fromStdString(pos == std::string::npos ? what : what.substr(pos)));
        check.json = nullptr;
        return check;
    }
    try {
        config_from_json(check.json);
        check.ok = true;
    } catch (const ConfigError & e) {
        check.message = QString::fromStdString(e.what());
    } catch (const std::exception & e) {
        // A type the validator did not expect (e.g. a string where an object belongs) must not end the studio.
        check.message = QStringLiteral("config error: %1").arg(QString::fromUtf8(e.what()));
    }
    return check;
}

} // namespace studio
