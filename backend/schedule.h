// Learning-rate and sparsity-loss schedules: plain functions of the step, so a resumed run recomputes them exactly.
#pragma once

#include <cstdint>

#include "config.h"

namespace studio {

/// Learning rate at optimizer step `step` (0-based) of a stage of `total_steps`: linear warm-up from lr/warmup to lr,
/// then cosine from lr to min_lr over the rest of the stage (or constant).
double schedule_lr(const ScheduleConfig & schedule, double lr, int64_t step, int64_t total_steps);

/// Technique 1, sparsity-loss warm-up: 0 before l0_start, then a linear ramp to l0_coefficient over l0_warmup
/// (both in gate.l0_unit; epochs are converted with steps_per_epoch), then l0_coefficient.
double schedule_l0_coefficient(const GateConfig & gate, int64_t step, int64_t steps_per_epoch);
/// The same ramp as a fraction in [0, 1] (used for the target-sparsity warm-up).
double schedule_l0_ramp(const GateConfig & gate, int64_t step, int64_t steps_per_epoch);

} // namespace studio
