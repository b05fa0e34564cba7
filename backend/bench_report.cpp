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

SampleStats sample_stats(const std::vector<double> & s) {
    SampleStats r;
    r.median = percentile(s, 0.5);
    r.p10 = percentile(s, 0.1);
    r.p90 = percentile(s, 0.9);
    double sum = 0;
    for (double v : s) sum += v;
    r.mean = s.empty() ? 0 : sum / (double) s.size();
    double var = 0;
    for (double v : s) var += (v - r.mean) * (v - r.mean);
    r.stddev = s.size() > 1 ? std::sqrt(var / (double) (s.size() - 1)) : 0.0;
    return r;
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
        std::string notes = r.cuda_graph ? (r.loss_in_graph ? "graph, loss in graph" : "graph") : "";
        if (!r.attention.empty() && r.attention != "explicit") notes += (notes.empty() ? "" : ", ") + r.attention;
        const std::string device = notes.empty() ? r.device : r.device + " (" + notes + ")";
        char line[512];
        std::snprintf(line, sizeof line, "| %s | %lld | %.2fM | %lld | %s | %s | %s | %.3f | %.3f-%.3f | %.0f | %.2fx | %.2fx | %.0f%% |\n",
                      r.variant.c_str(), (long long) r.heads_kept, (double) r.layer_params / 1e6, (long long) r.batch, r.dtype.c_str(),
                      device.c_str(), r.with_loss ? "yes" : "no", r.median_ms, r.p10_ms, r.p90_ms, r.tokens_per_s, r.speedup,
                      r.ideal_speedup, r.efficiency * 100);
        s << line;
    }
    return s.str();
}

std::string bench_csv(const std::vector<BenchRow> & rows) {
    std::ostringstream s;
    s << "variant,heads_kept,layer_params,batch,tgt_len,mem_len,dtype,device,with_loss,median_ms,p10_ms,p90_ms,mean_ms,stddev_ms,tokens_per_s,speedup,ideal_speedup,efficiency,cuda_graph,attention,loss_in_graph\n";
    for (const auto & r : rows) {
        s << r.variant << ',' << r.heads_kept << ',' << r.layer_params << ',' << r.batch << ',' << r.tgt_len << ',' << r.mem_len << ','
          << r.dtype << ',' << r.device << ',' << (r.with_loss ? 1 : 0) << ',' << r.median_ms << ',' << r.p10_ms << ',' << r.p90_ms << ','
          << r.mean_ms << ',' << r.stddev_ms << ',' << r.tokens_per_s << ',' << r.speedup << ',' << r.ideal_speedup << ',' << r.efficiency << ',' << (r.cuda_graph ? 1 : 0) << ','
          << r.attention << ',' << (r.loss_in_graph ? 1 : 0) << '\n';
    }
    return s.str();
}

json bench_json(const std::vector<BenchRow> & rows) {
    json out = json::array();
    for (const auto & r : rows) {
        out.push_back({{"variant", r.variant}, {"heads_kept", r.heads_kept}, {"layer_params", r.layer_params}, {"batch", r.batch},
                       {"tgt_len", r.tgt_len}, {"mem_len", r.mem_len}, {"dtype", r.dtype}, {"device", r.device}, {"cuda_graph", r.cuda_graph}, {"loss_in_graph", r.loss_in_graph},
                       {"attention", r.attention},
                       {"with_loss", r.with_loss},
                       {"samples_ms", r.samples_ms}, {"median_ms", r.median_ms}, {"p10_ms", r.p10_ms}, {"p90_ms", r.p90_ms},
                       {"mean_ms", r.mean_ms}, {"stddev_ms", r.stddev_ms}, {"tokens_per_s", r.tokens_per_s}, {"speedup", r.speedup},
                       {"ideal_speedup", r.ideal_speedup}, {"efficiency", r.efficiency}});
    }
    return out;
}

std::string train_bench_markdown(const std::vector<TrainBenchRow> & rows) {
    std::ostringstream s;
    s << "| variant | batch | dtype | device | ms/step (median) | p10-p90 ms | tokens/s | forward ms | backward ms | optimizer ms (share) | peak GB | TFLOP/s | MFU |\n";
    s << "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    for (const auto & r : rows) {
        if (!r.error.empty()) {
            s << "| " << r.variant << " | " << r.batch << " | " << r.dtype << " | " << r.device << " | " << r.error
              << " | - | - | - | - | - | - | - | - |\n";
            continue;
        }
        const double phases = r.forward_ms + r.backward_ms + r.optimizer_ms;
        char mfu[16] = "n/a";
        if (r.mfu > 0) std::snprintf(mfu, sizeof mfu, "%.1f%%", r.mfu * 100);
        char line[512];
        std::snprintf(line, sizeof line, "| %s | %lld | %s | %s | %.2f | %.2f-%.2f | %.0f | %.2f | %.2f | %.2f (%.1f%%) | %.1f | %.1f | %s |\n",
                      r.variant.c_str(), (long long) r.batch, r.dtype.c_str(), r.device.c_str(), r.median_ms, r.p10_ms, r.p90_ms,
                      r.tokens_per_s, r.forward_ms, r.backward_ms, r.optimizer_ms, phases > 0 ? 100.0 * r.optimizer_ms / phases : 0.0,
                      r.peak_memory_gb, r.tflops, mfu);
        s << line;
    }
    return s.str();
}

std::string train_bench_csv(const std::vector<TrainBenchRow> & rows) {
    std::ostringstream s;
    s << "variant,batch,tgt_len,mem_len,dtype,device,median_ms,p10_ms,p90_ms,mean_ms,stddev_ms,tokens_per_s,forward_ms,backward_ms,optimizer_ms,"
         "peak_memory_gb,flops_per_token,tflops,mfu,error\n";
    for (const auto & r : rows) {
        s << r.variant << ',' << r.batch << ',' << r.tgt_len << ',' << r.mem_len << ',' << r.dtype << ',' << r.device << ',' << r.median_ms << ','
          << r.p10_ms << ',' << r.p90_ms << ',' << r.mean_ms << ',' << r.stddev_ms << ',' << r.tokens_per_s << ',' << r.forward_ms << ','
          << r.backward_ms << ',' << r.optimizer_ms << ',' << r.peak_memory_gb << ',' << r.flops_per_token << ',' << r.tflops << ',' << r.mfu << ','
          << r.error << '\n';
    }
    return s.str();
}

json train_bench_json(const std::vector<TrainBenchRow> & rows) {
    json out = json::array();
    for (const auto & r : rows) {
        out.push_back({{"variant", r.variant}, {"batch", r.batch}, {"tgt_len", r.tgt_len}, {"mem_len", r.mem_len}, {"dtype", r.dtype},
                       {"device", r.device}, {"samples_ms", r.samples_ms}, {"median_ms", r.median_ms}, {"p10_ms", r.p10_ms},
                       {"p90_ms", r.p90_ms}, {"mean_ms", r.mean_ms}, {"stddev_ms", r.stddev_ms}, {"tokens_per_s", r.tokens_per_s},
                       {"forward_ms", r.forward_ms}, {"backward_ms", r.backward_ms}, {"optimizer_ms", r.optimizer_ms},
                       {"peak_memory_gb", r.peak_memory_gb}, {"flops_per_token", r.flops_per_token}, {"tflops", r.tflops}, {"mfu", r.mfu}});
        if (!r.error.empty()) out.back()["error"] = r.error;
    }
    return out;
}

} // namespace studio
