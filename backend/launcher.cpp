#include "launcher.h"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

namespace studio {

namespace {

std::vector<std::string> g_argv;
volatile std::sig_atomic_t g_forward_signal = 0;

void remember_signal(int signal) { g_forward_signal = signal; }

// A port the kernel says is free now; the rank-0 store binds it moments later.
int free_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = 0;
    socklen_t length = sizeof address;
    int port = 29500;
    if (fd >= 0 && ::bind(fd, (sockaddr *) &address, sizeof address) == 0 && ::getsockname(fd, (sockaddr *) &address, &length) == 0) {
        port = ntohs(address.sin_port);
    }
    if (fd >= 0) ::close(fd);
    return port;
}

} // namespace

void launcher_set_argv(int argc, char ** argv) {
    g_argv.assign(argv, argv + argc);
}

bool launcher_is_child() {
    const char * world = std::getenv("WORLD_SIZE");
    return world && *world;
}

int launcher_run_siblings(int64_t ranks, bool cuda) {
    if (g_argv.empty()) {
        std::fprintf(stderr, "launcher: command line unknown; start the ranks with torchrun --no-python instead\n");
        return 2;
    }
    const std::string port = std::to_string(free_port());
    std::vector<pid_t> children;
    for (int64_t r = 0; r < ranks; ++r) {
        pid_t pid = ::fork();
        if (pid < 0) {
            std::fprintf(stderr, "launcher: cannot start rank %lld: %s\n", (long long) r, std::strerror(errno));
            for (pid_t c : children) ::kill(c, SIGTERM);
            return 1;
        }
        if (pid == 0) {
            ::setenv("RANK", std::to_string(r).c_str(), 1);
            ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
            ::setenv("WORLD_SIZE", std::to_string(ranks).c_str(), 1);
            ::setenv("LOCAL_WORLD_SIZE", std::to_string(ranks).c_str(), 1);
            ::setenv("MASTER_ADDR", "127.0.0.1", 1);
            ::setenv("MASTER_PORT", port.c_str(), 1);
            if (cuda) ::setenv("NCCL_NVLS_ENABLE", "0", 0); // never NVLink multicast on shared hosts
            std::vector<char *> args;
            for (auto & a : g_argv) args.push_back(a.data());
            args.push_back(nullptr);
            ::execv("/proc/self/exe", args.data());
            std::fprintf(stderr, "launcher: exec failed: %s\n", std::strerror(errno));
            ::_exit(127);
        }
        children.push_back(pid);
    }
    std::signal(SIGTERM, remember_signal);
    std::signal(SIGINT, remember_signal);
    int result = 0;
    size_t alive = children.size();
    bool stopping = false;
    auto stop_deadline = std::chrono::steady_clock::time_point::max();
    while (alive > 0) {
        if (g_forward_signal && !stopping) {
            for (pid_t c : children) if (c > 0) ::kill(c, SIGTERM);
            g_forward_signal = 0;
        }
        int status = 0;
        pid_t done = ::waitpid(-1, &status, WNOHANG);
        if (done > 0) {
            for (size_t r = 0; r < children.size(); ++r) {
                if (children[r] != done) continue;
                children[r] = -1;
                --alive;
                const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
                if (code != 0 && !stopping) {
                    std::fprintf(stderr, "launcher: rank %zu %s %d; stopping the other ranks\n", r,
                                 WIFEXITED(status) ? "exited with code" : "was killed by signal", WIFEXITED(status) ? code : WTERMSIG(status));
                    result = code;
                    stopping = true;
                    stop_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
                    for (pid_t c : children) if (c > 0) ::kill(c, SIGTERM);
                }
            }
            continue;
        }
        if (stopping && std::chrono::steady_clock::now() > stop_deadline) {
            for (pid_t c : children) if (c > 0) ::kill(c, SIGKILL);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return result;
}

} // namespace studio
