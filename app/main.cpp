// studio: the desktop studio (no arguments or `studio gui`), or the headless engine:
//   studio --batch CONFIG [--run-dir DIR] [--resume]     run a config's stages
//   studio info SOURCE [--json]                           model summary with exact parameter counts
//   studio validate CONFIG                                check a config
//   studio prune RUN_OR_CHECKPOINT [--out DIR]            physically remove closed heads
//   studio bench SOURCE [...]                             inference speed: dense vs masked vs pruned
//   studio bench --train CONFIG [...]                     training-step speed, phases, memory, MFU
//   studio selftest [--device D]                          fused GPU attention against the explicit computation
//   studio devices [--json]                               CUDA devices this build can use
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <CLI/CLI.hpp>
#include <ATen/Parallel.h>

#include "commands.h"
#include "launcher.h"
#ifdef STUDIO_WITH_GUI
#include "studio_gui.h"
#endif

namespace {
/// Keep freed tensor memory in the process. By default glibc returns a freed block over its (moving) thresholds to
/// the kernel, so the same multi-megabyte tensors of every CPU step come back as fresh pages, faulted and zeroed:
/// on the 2-core dev VM that was 30-50% of a CPU benchmark's time, and it varied 4x with the order of its rows
/// (docs/benchmarks.md, "CPU"). Blocks up to 32 MB (glibc's largest mmap threshold) come from the heap, which is never
/// trimmed below 1 GB of free space. LibTorch's CUDA memory is its own caching allocator's and is not affected.
void keep_freed_memory() {
#ifdef __GLIBC__
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    mallopt(M_TOP_PAD, 256 << 20);
#endif
}
/// Every logical CPU for LibTorch's intra-op threads, shared among the ranks on this host, unless OMP_NUM_THREADS
/// says otherwise. LibTorch's own default is the physical cores, which a 2-vCPU VM reports as 1: the dev machine's
/// CPU benchmark at batch 4 took 1.77 s a segment on 2 threads and 2.83 s on 1 (docs/benchmarks.md, "CPU").
void use_every_cpu() {
    if (std::getenv("OMP_NUM_THREADS")) return;
    const char * local_ranks = std::getenv("LOCAL_WORLD_SIZE");
    const int ranks = local_ranks ? std::max(1, std::atoi(local_ranks)) : 1;
    const int cpus = (int) std::thread::hardware_concurrency();
    if (cpus > 0) at::set_num_threads(std::max(1, cpus / ranks));
}
} // namespace

int main(int argc, char ** argv) {
    keep_freed_memory();
    use_every_cpu();
    studio::launcher_set_argv(argc, argv);
#ifdef STUDIO_WITH_GUI
    if (argc == 1 || std::strcmp(argv[1], "gui") == 0) return studio::studio_gui_main(argc > 1 ? argc - 1 : argc, argc > 1 ? argv + 1 : argv);
    if (std::strcmp(argv[1], "plot-sweep") == 0) return studio::studio_plot_sweep_main(argc - 1, argv + 1);
#endif

    CLI::App app{"Head Pruning Studio: trains Transformer LMs, learns which attention heads to remove, removes them, benchmarks."};
    app.require_subcommand(0, 1);
    std::string batch_config, run_dir;
    bool resume = false, no_progress = false;
    // A run folder is the likeliest mistake here: say how to continue it.
    const CLI::Validator config_file(
        [](std::string & path) -> std::string {
            if (std::filesystem::is_directory(path)) {
                return path + " is a folder; give a config file (to continue a run: --batch RUN/config.json --run-dir RUN --resume)";
            }
            return std::filesystem::exists(path) ? std::string() : path + ": no such file (check the path)";
        },
        "CONFIG");
    app.add_option("--batch", batch_config, "Run the stages of CONFIG headless")->check(config_file);
    app.add_option("--run-dir", run_dir, "Run directory (default: <runs_dir>/<name>)");
    app.add_flag("--resume", resume, "Continue the run in the run directory from its last complete checkpoint");
    app.add_flag("--no-progress", no_progress, "No live progress line");

    auto * info = app.add_subcommand("info", "Model summary with exact parameter counts");
    std::string info_source;
    bool info_json = false;
    info->add_option("source", info_source, "Config file, run folder or pruned/ folder")->required();
    info->add_flag("--json", info_json, "Print JSON");

    auto * validate = app.add_subcommand("validate", "Check a config (the GUI's validator)");
    std::string validate_path;
    validate->add_option("config", validate_path, "Config file")->required();

    auto * prune = app.add_subcommand("prune", "Physically remove the closed heads of a gated run or checkpoint");
    std::string prune_source, prune_out;
    prune->add_option("source", prune_source, "Run folder or checkpoint folder")->required();
    prune->add_option("--out", prune_out, "Output folder (default: <run>/pruned)");

    auto * bench = app.add_subcommand("bench", "Inference speed of dense, masked and pruned models");
    studio::BenchCommand bc;
    bench->add_option("source", bc.source, "Run folder (its models) or config file (random weights, bench.head_lists)")->required();
    bench->add_option("--batch-sizes", bc.batch_sizes, "Batch sizes, e.g. 1,4,32,128")->delimiter(',');
    bench->add_option("--devices", bc.devices, "cpu,cuda")->delimiter(',');
    bench->add_option("--dtypes", bc.dtypes, "fp32,bf16")->delimiter(',');
    bench->add_option("--variants", bc.variants, "dense,masked,pruned")->delimiter(',');
    bench->add_option("--repetitions,-r", bc.repetitions, "Repetitions per row (default: config, 5)");
    bench->add_option("--steps", bc.steps, "Segments per repetition");
    bench->add_option("--warmup", bc.warmup, "Untimed segments first");
    bench->add_option("--with-loss", bc.with_loss, "1: include the adaptive-softmax loss (the reference's workload), 0: stop before it");
    bench->add_option("--out", bc.out_dir, "Folder for bench.json/csv/md (default: <run>/bench)");
    bench->add_option("--output,-o", bc.format, "stdout format: md, csv or json")->check(CLI::IsMember({"md", "csv", "json"}));
    bench->add_option("--cuda-graphs", bc.cuda_graphs, "1: replay a CUDA segment's layers as a graph, the loss after it (default), 0: launch eagerly");
    bench->add_flag("--train", bc.train, "Time training steps (forward, backward, optimizer) of a config's model on random tokens");
    bench->add_option("--train-variants", bc.train_variants, "With --train: ungated,gated (default both)")->delimiter(',');
    bench->add_option("--peak-tflops", bc.peak_tflops, "With --train: the device's peak TFLOP/s for MFU (default 790 for cuda bf16)");

    auto * selftest = app.add_subcommand("selftest", "Check the fused GPU attention against the explicit computation");
    std::string selftest_device = "auto";
    selftest->add_option("--device", selftest_device, "cpu, cuda or auto");
    auto * devices = app.add_subcommand("devices", "CUDA devices this build and machine can use");
    bool devices_json = false;
    devices->add_flag("--json", devices_json, "Print JSON");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError & e) {
        // --help and --version exit 0; every other parse error is bad input, exit 2 as a bad config's.
        return app.exit(e) == 0 ? 0 : 2;
    }
    if (*info) return studio::info_command(info_source, info_json);
    if (*validate) return studio::validate_command(validate_path);
    if (*prune) return studio::prune_command(prune_source, prune_out);
    if (*bench) return studio::bench_command(bc);
    if (*devices) return studio::devices_command(devices_json);
    if (*selftest) return studio::selftest_command(selftest_device);
    if (!batch_config.empty()) {
        studio::BatchOptions options;
        options.config_path = batch_config;
        options.run_dir = run_dir;
        options.resume = resume;
        options.progress = !no_progress;
        return studio::run_batch(options);
    }
    std::printf("%s", app.help().c_str());
    return 0;
}
