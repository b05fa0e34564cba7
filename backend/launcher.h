// Starting the ranks of a one-machine data-parallel run ("gpus": N) the way torchrun does: N child processes of
// this same executable with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set. This process stays as a
// supervisor: it forwards SIGTERM/SIGINT, and when one rank fails it stops the others instead of letting them hang.
#pragma once

#include <cstdint>

namespace studio {

/// Remembers the command line so the ranks can be started with the same arguments.
void launcher_set_argv(int argc, char ** argv);
/// True inside a rank started by a launcher (ours or torchrun: WORLD_SIZE is set).
bool launcher_is_child();
/// Starts `ranks` children and waits; returns 0 when all succeed, else the first failing rank's exit code.
int launcher_run_siblings(int64_t ranks, bool cuda);

} // namespace studio
