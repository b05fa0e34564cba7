#!/usr/bin/env bash
# The whole test suite (backend and GUI, Qt Test under ctest). Builds first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d build ] || cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)"
export STUDIO_DATA="${STUDIO_DATA:-$(cd .. && pwd)/shared/data}"
ctest --test-dir build --output-on-failure --timeout 900 "$@"
