// `studio info`: the model a config (or a pruned model) describes, with exact parameter counts.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "config.h"

namespace studio {

/// Builds the model on the CPU (vocab_size must be set) and summarises it.
nlohmann::json model_info(const ModelConfig & model);
/// The human-readable table of model_info().
std::string model_info_text(const nlohmann::json & info);
/// "1,234,567"
std::string with_commas(int64_t value);

} // namespace studio
