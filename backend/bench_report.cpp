#include "bench_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace studio {

using nlohmann::json;

double percentile(std::vector<double> values, double q) {
    if (values.empty()) return 0.0;
    std::sort(values.begin(), values.end());
    const double position = q * (double) (values.size() - 1);
    const size_t low = (size_t) std::floor(position), high = (size_t) std::ceil(position);
    return values[low] + (values[high] - values[low]) * (position - (double) low);
}

void bench_summarise(BenchRow & row) {
    const auto & s = row.samples_ms;
    row.median_ms = percentile(s, 0.5);
    row.p10_ms = percentile(s, 0.1);
    row.p90_ms = percentile(s, 0.9);
    double sum = 0;
    for (double v : s) sum += v;
    row.mean_ms = s.empty() ? 0 : sum / (double) s.size();
    double var = 0;
    for (double v : s) var += (v - row.mean_ms) * (v - row.mean_ms);
    row.stddev_ms = s.size() > 1 ? std::sqrt(var / (double) (s.size() - 1)) : 0.0;
    row.tokens_per_s = row.median_ms > 0 ? (double) (row.batch * row.tgt_len) / (row.median_ms / 1000.0) : 0.0;
}

void bench_compare(std::vector<BenchRow> & rows) {
    for (auto & row : rows) {
        for (const auto & dense : rows) {
            if (dense.variant != "dense" || dense.batch != row.batch || dense.dtype != row.dtype || dense.device != row.device ||
                dense.with_loss != row.with_loss) continue;
            row.speedup = row.median_ms > 0 ? dense.median_ms / row.median_ms : 0.0;
            row.ideal_speedup = row.layer_params > 0 ? (double) dense.layer_params / (double) row.layer_params : 0.0;
            row.efficiency = row.ideal_speedup > 0 ? row.speedup / row.ideal_speedup : 0.0;
        }
    }
}

std::string bench_markdown(const std::vector<BenchRow> & rows) {
    std::ostringstream s;
    s << "| variant | heads | layer params | batch | dtype | device | loss | ms/step (median) | p10-p90 ms | tokens/s | speed-up | ideal | efficiency |\n";
    s << "| --- | ---: | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    for (const auto & r : rows) {
        char line[512];
        std::snprintf(line, sizeof line, "| %s | %lld | %.2fM | %lld | %s | %s | %s | %.3f | %.3f-%.3f | %.0f | %.2fx | %.2fx | %.0f%% |\n",
                      r.variant.c_str(), (long long) r.heads_kept, (double) r.layer_params / 1e6, (long long) r.batch, r.dtype.c_str(),
                      r.device.c_str(), r.with_loss ? "yes" : "no", r.median_ms, r.p10_ms, r.p90_ms, r.tokens_per_s, r.speedup,
                      r.ideal_speedup, r.efficiency * 100);
        s << line;
    }
    return s.str();
}

std::string bench_csv(const std::vector<BenchRow> & rows) {
    std::ostringstream s;
    s << "variant,heads_kept,layer_params,batch,tgt_len,mem_len,dtype,device,with_loss,median_ms,p10_ms,p90_ms,mean_ms,stddev_ms,tokens_per_s,speedup,ideal_speedup,efficiency\n";
    for (const auto & r : rows) {
        s << r.variant << ',' << r.heads_kept << ',' << r.layer_params << ',' << r.batch << ',' << r.tgt_len << ',' << r.mem_len << ','
          << r.dtype << ',' << r.device << ',' << (r.with_loss ? 1 : 0) << ',' << r.median_ms << ',' << r.p10_ms << ',' << r.p90_ms << ','
          << r.mean_ms << ',' << r.stddev_ms << ',' << r.tokens_per_s << ',' << r.speedup << ',' << r.ideal_speedup << ',' << r.efficiency << '\n';
    }
    return s.str();
}

json bench_json(const std::vector<BenchRow> & rows) {
    json out = json::array();
    for (const auto & r : rows) {
        out.push_back({{"variant", r.variant}, {"heads_kept", r.heads_kept}, {"layer_params", r.layer_params}, {"batch", r.batch},
                       {"tgt_len", r.tgt_len}, {"mem_len", r.mem_len}, {"dtype", r.dtype}, {"device", r.device}, {"with_loss", r.with_loss},
                       {"samples_ms", r.samples_ms}, {"median_ms", r.median_ms}, {"p10_ms", r.p10_ms}, {"p90_ms", r.p90_ms},
                       {"mean_ms", r.mean_ms}, {"stddev_ms", r.stddev_ms}, {"tokens_per_s", r.tokens_per_s}, {"speedup", r.speedup},
                       {"ideal_speedup", r.ideal_speedup}, {"efficiency", r.efficiency}});
    }
    return out;
}

} // namespace studio
