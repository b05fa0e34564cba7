#include "plotmath.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace studio {

QVector<double> smoothEma(const QVector<double> & values, double weight) {
    const double w = std::clamp(weight, 0.0, 0.999);
    QVector<double> out;
    out.reserve(values.size());
    double last = 0.0;
    int count = 0;
    for (double v : values) {
        if (!std::isfinite(v)) { out.push_back(v); continue; }
        last = last * w + (1.0 - w) * v;
        ++count;
        // Without the division the curve would start near 0 (the EMA's zero initial state).
        const double debias = 1.0 - std::pow(w, count);
        out.push_back(debias > 0 ? last / debias : v);
    }
    return out;
}

void decimateMinMax(const QVector<double> & x, const QVector<double> & y, int maxPoints,
                    QVector<double> & xOut, QVector<double> & yOut) {
    const int n = std::min(x.size(), y.size());
    maxPoints = std::max(maxPoints, 4);
    if (n <= maxPoints) { xOut = x.mid(0, n); yOut = y.mid(0, n); return; }
    xOut.clear(); yOut.clear();
    xOut.reserve(maxPoints); yOut.reserve(maxPoints);
    xOut.push_back(x[0]); yOut.push_back(y[0]);
    const int interior = n - 2;
    const int buckets = (maxPoints - 2) / 2;
    for (int b = 0; b < buckets; ++b) {
        const int begin = 1 + (int) ((long long) interior * b / buckets);
        const int end = 1 + (int) ((long long) interior * (b + 1) / buckets);
        if (begin >= end) continue;
        int lo = begin, hi = begin;
        for (int i = begin; i < end; ++i) {
            if (y[i] < y[lo]) lo = i;
            if (y[i] > y[hi]) hi = i;
        }
        // Spikes survive decimation only if both extremes are kept, in their original order.
        const int first = std::min(lo, hi), second = std::max(lo, hi);
        xOut.push_back(x[first]); yOut.push_back(y[first]);
        if (second != first) { xOut.push_back(x[second]); yOut.push_back(y[second]); }
    }
    xOut.push_back(x[n - 1]); yOut.push_back(y[n - 1]);
}

QVector<int> paretoFront(const QVector<double> & cost, const QVector<double> & value) {
    QVector<int> order;
    for (int i = 0; i < std::min(cost.size(), value.size()); ++i) {
        if (std::isfinite(cost[i]) && std::isfinite(value[i])) order.push_back(i);
    }
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
        return cost[a] != cost[b] ? cost[a] < cost[b] : value[a] < value[b];
    });
    QVector<int> front;
    double best = INFINITY;
    for (int i : order) {
        if (value[i] < best) { front.push_back(i); best = value[i]; }
    }
    return front;
}

} // namespace studio
