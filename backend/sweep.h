// Sweeps: one config standing for several runs, "sweep": {"gate.l0_coefficient": [0.001, 0.002, 0.004]}. This file
// checks a sweep and expands it into its points; sweep_runner.h runs them and sweep_summary.h reports them. No LibTorch.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config.h"

namespace studio {

/// At most this many points (the product of the lists): a typo like a 100 x 100 sweep should not queue 10,000 runs.
constexpr size_t kSweepMaxPoints = 256;

struct SweepPoint {
    std::string label;          ///< "l0_coefficient-0.004"; several paths are joined with "_"
    std::string name;           ///< "<config name>-<label>": the point's run name and its folder under the sweep's run directory
    nlohmann::json values;      ///< {"gate.l0_coefficient": 0.004}
    nlohmann::json config;      ///< the config without "sweep", with the values set and "name" = name
};

struct Sweep {
    Config base;                     ///< the config without its sweep (which must be valid on its own)
    std::vector<std::string> paths;  ///< the swept fields, in alphabetical order
    std::vector<SweepPoint> points;  ///< every combination of the lists; the first path varies slowest
};

/// True when the config JSON has a "sweep" key.
bool sweep_present(const nlohmann::json & config);
/// Checks the "sweep" key, every listed value on its own, and every point, and expands it. Throws ConfigError:
/// "config error: sweep.gate.l0_coefficient[2]: must be >= 0, got -1".
Sweep sweep_expand(const nlohmann::json & config);
/// Sets a dotted path ("gate.optimizer.lr") in a config JSON, creating the sections it crosses.
void sweep_set(nlohmann::json & config, const std::string & path, const nlohmann::json & value);

} // namespace studio
