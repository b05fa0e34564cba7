#include "schedule.h"

#include <algorithm>
#include <cmath>

namespace studio {

double schedule_lr(const ScheduleConfig & schedule, double lr, int64_t step, int64_t total_steps) {
    if (schedule.warmup_steps > 0 && step < schedule.warmup_steps) {
        return lr * (double) (step + 1) / (double) schedule.warmup_steps;
    }
    if (schedule.name == "constant") return lr;
    const int64_t span = std::max<int64_t>(1, total_steps - schedule.warmup_steps);
    const double progress = std::min(1.0, (double) (step - schedule.warmup_steps) / (double) span);
    return schedule.min_lr + 0.5 * (lr - schedule.min_lr) * (1.0 + std::cos(M_PI * progress));
}

double schedule_l0_ramp(const GateConfig & gate, int64_t step, int64_t steps_per_epoch) {
    const double unit = gate.l0_unit == "epochs" ? (double) steps_per_epoch : 1.0;
    const auto start = (int64_t) (gate.l0_start * unit);
    const auto warmup = (int64_t) (gate.l0_warmup * unit);
    if (step < start) return 0.0;
    if (step < start + warmup) return (double) (step - start + 1) / (double) warmup;
    return 1.0;
}

double schedule_l0_coefficient(const GateConfig & gate, int64_t step, int64_t steps_per_epoch) {
    return gate.l0_coefficient * schedule_l0_ramp(gate, step, steps_per_epoch);
}

} // namespace studio
