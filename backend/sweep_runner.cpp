#include "sweep_runner.h"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "device.h"
#include "launcher.h"
#include "run_dir.h"
#include "safetensors.h"
#include "sweep.h"
#include "sweep_summary.h"

namespace studio {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

volatile std::sig_atomic_t g_sweep_signal = 0;
void remember_signal(int signal) { g_sweep_signal = signal; }

struct ChildExit {
    int code = 0;          ///< exit code, or 128 + signal
    std::string text;      ///< "exited with code 1", "was killed by signal 9"
};

// A point runs in its own process: a crash or an out-of-memory kill costs that point only, and every point starts
// with a clean CUDA context and its own ranks ("gpus"). Our SIGTERM/SIGINT is passed on, so the point checkpoints.
ChildExit run_child(std::vector<std::string> arguments) {
    // argv is built before fork: the child of a threaded process should only exec.
    arguments.insert(arguments.begin(), "studio");
    std::vector<char *> argv;
    for (auto & a : arguments) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = ::fork();
    if (pid < 0) return {1, std::string("could not be started: ") + std::strerror(errno)};
    if (pid == 0) {
        ::execv("/proc/self/exe", argv.data());
        std::fprintf(stderr, "sweep: exec failed: %s\n", std::strerror(errno));
        ::_exit(127);
    }
    bool forwarded = false;
    while (true) {
        if (g_sweep_signal && !forwarded) {
            ::kill(pid, SIGTERM);
            forwarded = true;
        }
        int status = 0;
        const pid_t done = ::waitpid(pid, &status, WNOHANG);
        if (done == pid) {
            if (WIFEXITED(status)) return {WEXITSTATUS(status), "exited with code " + std::to_string(WEXITSTATUS(status))};
            return {128 + WTERMSIG(status), "was killed by signal " + std::to_string(WTERMSIG(status))};
        }
        if (done < 0 && errno != EINTR) return {1, std::string("could not be waited for: ") + std::strerror(errno)};
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
}

} // namespace

int run_sweep(const BatchOptions & options, const json & config) {
    Sweep sweep;
    try {
        if (launcher_is_child()) {
            throw ConfigError("config error: sweep: start a sweep with studio --batch alone, not under torchrun or srun (each point starts its own ranks from \"gpus\")");
        }
        sweep = sweep_expand(config);
        for (const auto & point : sweep.points) config_check_environment(config_from_json(point.config), cuda_device_count());
    } catch (const std::exception & e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 2;
    }
    const std::string root = options.run_dir.empty() ? (fs::path(sweep.base.runs_dir) / sweep.base.name).string() : options.run_dir;
    const std::string summary_path = (fs::path(root) / "sweep.json").string();
    if (fs::exists(run_events_path(root))) {
        std::fprintf(stderr, "run error: %s holds a run, not a sweep; choose another --run-dir or name\n", root.c_str());
        return 2;
    }
    if (fs::exists(summary_path) && !options.resume) {
        std::fprintf(stderr, "run error: %s already holds a sweep; pass --resume to continue it, or choose another --run-dir or name\n", root.c_str());
        return 2;
    }

    std::signal(SIGTERM, remember_signal);
    std::signal(SIGINT, remember_signal);
    json summary = {{"format", "head-pruning-studio sweep"}, {"name", sweep.base.name}, {"config", options.config_path},
                    {"paths", sweep.paths}, {"status", "running"}, {"points", json::array()}};
    std::vector<json> exits(sweep.points.size());   // this invocation's exit of each point it ran
    auto write_summary = [&](const std::string & status) {
        json points = json::array();
        for (size_t i = 0; i < sweep.points.size(); ++i) {
            const auto & point = sweep.points[i];
            json row = sweep_point_row((fs::path(root) / point.name).string());
            if (exits[i].is_object() && exits[i]["code"] != 0 && row["status"] != "error" && row["status"] != "stopped") {
                // The point died before it could write its own error (a crash, a kill, a bad config).
                row["status"] = "error";
                row["error"] = "studio --batch " + exits[i]["text"].get<std::string>();
            }
            json head = {{"name", point.name}, {"dir", point.name}, {"values", point.values}};
            if (exits[i].is_object()) head["exit_code"] = exits[i]["code"];
            head.update(row);
            points.push_back(head);
        }
        summary["points"] = points;
        summary["status"] = status;
        sweep_write_summary(root, summary);
    };

    int failed = 0;
    bool stopped = false;
    try {
        fs::create_directories(root);
        file_write_atomic((fs::path(root) / "sweep-config.json").string(), config.dump(2) + "\n");
        write_summary("running");
        for (size_t i = 0; i < sweep.points.size(); ++i) {
            if (g_sweep_signal) { stopped = true; break; }
            const auto & point = sweep.points[i];
            const std::string dir = (fs::path(root) / point.name).string();
            const std::string tag = "[sweep] point " + std::to_string(i + 1) + "/" + std::to_string(sweep.points.size()) + " " + point.name;
            const json before = sweep_point_row(dir);
            if (before["status"] == "ok") {
                std::fprintf(stderr, "%s: finished before, skipped\n", tag.c_str());
                continue;
            }
            fs::create_directories(dir);
            const std::string point_config = (fs::path(dir) / "sweep-point.json").string();
            file_write_atomic(point_config, point.config.dump(2) + "\n");
            std::vector<std::string> arguments{"--batch", point_config, "--run-dir", dir};
            const bool resume = before["status"] != "pending";
            if (resume) arguments.push_back("--resume");
            if (!options.progress) arguments.push_back("--no-progress");
            std::fprintf(stderr, "%s: %s (%s)\n", tag.c_str(), resume ? "resuming" : "starting", point.values.dump().c_str());
            const ChildExit exit = run_child(arguments);
            exits[i] = {{"code", exit.code}, {"text", exit.text}};
            write_summary("running");
            if (exit.code == 3 || g_sweep_signal) {
                stopped = true;
                break;
            }
            if (exit.code != 0) {
                ++failed;
                std::fprintf(stderr, "%s: failed (%s); going on with the other points\n", tag.c_str(), exit.text.c_str());
            }
        }
        write_summary(stopped ? "stopped" : failed ? "failed" : "ok");
    } catch (const std::exception & e) {
        std::fprintf(stderr, "error: sweep: %s\n", e.what());
        return 1;
    }
    std::fprintf(stderr, "\n%s\n[sweep] summary: %s and %s/sweep.md\n", sweep_markdown(summary).c_str(), summary_path.c_str(), root.c_str());
    if (stopped) {
        std::fprintf(stderr, "stopped; continue with: studio --batch %s --run-dir %s --resume\n", options.config_path.c_str(), root.c_str());
        return 3;
    }
    if (failed) {
        std::fprintf(stderr, "[sweep] %d of %zu points failed\n", failed, sweep.points.size());
        return 1;
    }
    return 0;
}

} // namespace studio
