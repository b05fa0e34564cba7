#include "gatematrix.h"

#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "jsonutil.h"

namespace studio {

namespace {
const nlohmann::json * rowsOf(const nlohmann::json & event, const char * key) {
    auto it = event.find(key);
    return it != event.end() && it->is_array() ? &*it : nullptr;
}
double numberAt(const nlohmann::json * rows, int layer, int head, double fallback) {
    if (!rows || layer >= (int) rows->size()) return fallback;
    const auto & row = (*rows)[layer];
    if (!row.is_array() || head >= (int) row.size() || !row[head].is_number()) return fallback;
    return row[head].get<double>();
}
} // namespace

GateMatrix GateMatrix::fromEvent(const nlohmann::json & event) {
    GateMatrix m;
    const auto * logAlpha = rowsOf(event, "log_alpha");
    const auto * pOpen = rowsOf(event, "p_open");
    const auto * open = rowsOf(event, "open");
    const auto * shape = logAlpha ? logAlpha : pOpen ? pOpen : open;
    if (!shape) return m;
    m.layers_ = (int) shape->size();
    for (const auto & row : *shape) {
        const int heads = row.is_array() ? (int) row.size() : 0;
        m.headCounts_.push_back(heads);
        m.maxHeads_ = std::max(m.maxHeads_, heads);
    }
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const int cells = m.layers_ * m.maxHeads_;
    m.logAlpha_.fill(nan, cells);
    m.pOpen_.fill(nan, cells);
    m.open_.fill(0, cells);
    for (int l = 0; l < m.layers_; ++l) {
        for (int h = 0; h < m.headCounts_[l]; ++h) {
            const double la = numberAt(logAlpha, l, h, nan);
            double p = numberAt(pOpen, l, h, nan);
            if (std::isnan(p) && !std::isnan(la)) p = 1.0 / (1.0 + std::exp(-la));
            bool isOpen = !std::isnan(la) ? la >= 0 : p >= 0.5;
            if (open && l < (int) open->size() && (*open)[l].is_array() && h < (int) (*open)[l].size() && (*open)[l][h].is_boolean()) {
                isOpen = (*open)[l][h].get<bool>();
            }
            m.logAlpha_[m.index(l, h)] = la;
            m.pOpen_[m.index(l, h)] = p;
            m.open_[m.index(l, h)] = isOpen ? 1 : 0;
        }
    }
    m.step_ = jsonInt(event, "step");
    m.globalStep_ = (double) m.step_;
    m.stage_ = jsonString(event, "stage");
    return m;
}

double GateMatrix::value(int layer, int head, Value which) const {
    if (!isCell(layer, head)) return std::numeric_limits<double>::quiet_NaN();
    return which == Value::POpen ? pOpen_[index(layer, head)] : logAlpha_[index(layer, head)];
}

bool GateMatrix::isOpen(int layer, int head) const {
    return isCell(layer, head) && open_[index(layer, head)] != 0;
}

int GateMatrix::openInLayer(int layer) const {
    int n = 0;
    for (int h = 0; h < headsInLayer(layer); ++h) n += isOpen(layer, h) ? 1 : 0;
    return n;
}

int GateMatrix::openTotal() const {
    int n = 0;
    for (int l = 0; l < layers_; ++l) n += openInLayer(l);
    return n;
}

int GateMatrix::headsTotal() const {
    int n = 0;
    for (int c : headCounts_) n += c;
    return n;
}

} // namespace studio
