// The launcher's inline check: the engine's own validator (studio::config_from_json), run in-process on every edit.
#pragma once

#include <QString>

#include <nlohmann/json.hpp>

namespace studio {

struct ConfigCheck {
    bool ok = false;
    /// Empty when ok, else one line: "config error: FIELD: why" (the engine's ConfigError text) or
    /// "config error: not valid JSON (parse error at line L, column C: ...)".
    QString message;
    /// The parsed document (null if the text is not JSON).
    nlohmann::json json;
};

ConfigCheck checkConfigText(const QString & text);

} // namespace studio
