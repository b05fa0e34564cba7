#!/usr/bin/env bash
# One command from a fresh Debian 12 to a trained, gated, pruned and benchmarked model:
# installs the apt packages, builds studio (GUI included), then runs configs/quickstart.json.
#   scripts/setup.sh            everything
#   scripts/setup.sh --no-run   install and build only (what CI does before the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
# OpenBLAS's OpenMP build: without it LibTorch falls back to the reference BLAS (36x slower); never the pthread
# build, whose thread pool fights LibTorch's OpenMP pool on a 2-core machine.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  build-essential cmake ninja-build \
  libtorch-dev libopenblas0-openmp libgloo-dev \
  qt6-base-dev libqcustomplot-dev libqcustomplot2.1-qt6 nlohmann-json3-dev libcli11-dev \
  xvfb xauth > /dev/null
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
[ "${1:-}" = "--no-run" ] && exit 0

# Data: ./data/wikitext-2, else $STUDIO_DATA, else the copy beside this checkout (../shared/data), else download.
if [ -z "${STUDIO_DATA:-}" ] && [ ! -d data/wikitext-2 ]; then
  if [ -d ../shared/data/wikitext-2 ]; then export STUDIO_DATA="$(cd ../shared/data && pwd)"
  else scripts/fetch-wikitext.sh wikitext-2; fi
fi
run_dir="runs/quickstart"
[ -e "$run_dir/events.jsonl" ] && run_dir="runs/quickstart-$(date +%Y%m%d-%H%M%S)"
./build/app/studio --batch configs/quickstart.json --run-dir "$run_dir"
echo "Done: $run_dir. Open it in the desktop studio with: ./build/app/studio gui --open $run_dir"
