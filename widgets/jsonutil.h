// Tolerant field access for events: a wrong type or a null reads as the fallback instead of throwing, so one odd
// line from a newer or older engine never takes the studio down.
#pragma once

#include <limits>
#include <string>

#include <QString>
#include <nlohmann/json.hpp>

namespace studio {

inline double jsonNumber(const nlohmann::json & j, const char * key, double fallback = std::numeric_limits<double>::quiet_NaN()) {
    if (!j.is_object()) return fallback;
    auto it = j.find(key);
    return it != j.end() && it->is_number() ? it->get<double>() : fallback;
}

inline long long jsonInt(const nlohmann::json & j, const char * key, long long fallback = 0) {
    if (!j.is_object()) return fallback;
    auto it = j.find(key);
    if (it == j.end() || !it->is_number()) return fallback;
    return it->is_number_integer() ? it->get<long long>() : (long long) it->get<double>();
}

inline QString jsonString(const nlohmann::json & j, const char * key, const QString & fallback = QString()) {
    if (!j.is_object()) return fallback;
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? QString::fromStdString(it->get<std::string>()) : fallback;
}

/// Sum of a list of integers (e.g. heads_per_layer); -1 when it is not such a list.
inline long long jsonIntListSum(const nlohmann::json & j, const char * key) {
    if (!j.is_object()) return -1;
    auto it = j.find(key);
    if (it == j.end() || !it->is_array()) return -1;
    long long sum = 0;
    for (const auto & v : *it) {
        if (!v.is_number()) return -1;
        sum += v.get<long long>();
    }
    return sum;
}

} // namespace studio
