// Series maths for the plots: TensorBoard-style smoothing, min/max decimation and the Pareto front.
// Plain functions on vectors so that tests check them against hand-computed values without a window.
#pragma once

#include <QVector>

namespace studio {

/// Exponential moving average with TensorBoard's debiasing: last = w*last + (1-w)*v, shown as last / (1 - w^n).
/// Non-finite values pass through unchanged and do not enter the average. weight is clamped to [0, 0.999].
QVector<double> smoothEma(const QVector<double> & values, double weight);

/// Keeps at most maxPoints points (>= 4): the first and last point, and for each of (maxPoints - 2) / 2 equal-count
/// buckets of the interior the minimum and the maximum value in x order. Series that fit are returned unchanged.
void decimateMinMax(const QVector<double> & x, const QVector<double> & y, int maxPoints,
                    QVector<double> & xOut, QVector<double> & yOut);

/// Indices of the points no other point beats on both axes (lower cost and lower value), sorted by cost ascending.
/// Points with non-finite coordinates are ignored; of exact duplicates the first index is kept.
QVector<int> paretoFront(const QVector<double> & cost, const QVector<double> & value);

} // namespace studio
