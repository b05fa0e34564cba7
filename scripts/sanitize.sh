#!/usr/bin/env bash
# Builds the Torch-free backend tests with AddressSanitizer + UndefinedBehaviorSanitizer (top-level option
# STUDIO_SANITIZE) into build-asan/ and runs them with leak detection on.
#   scripts/sanitize.sh                 configure + build + test
#   TESTS='test_(config|formats)' scripts/sanitize.sh   another ctest -R pattern
# Environment: BUILD (default build-asan), TESTS (ctest -R pattern, default the three Torch-free suites, plus
# test_fuzz_regressions once it is registered in tests/backend/CMakeLists.txt), CMAKE_ARGS (extra configure flags).
# Runs under nice -n 19 with -j1 (the dev machine has 2 shared cores). Prints the time of each phase.
# Suppressions: tests/sanitize/lsan.supp and ubsan.supp, for findings inside LibTorch/Qt only (see the files).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BUILD:-build-asan}
TESTS=${TESTS:-'^test_(config|wikitext|formats|fuzz_regressions)$'}

phase_start=$(date +%s)
phase() { local now; now=$(date +%s); echo "[sanitize] $1: $((now - phase_start)) s"; phase_start=$now; }

echo "[sanitize] $(date -u +%FT%TZ) configure $BUILD (STUDIO_SANITIZE=ON, GUI off, PCH off)"
nice -n 19 cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSTUDIO_SANITIZE=ON -DSTUDIO_GUI=OFF -DSTUDIO_PCH=OFF -DSTUDIO_TESTS=ON ${CMAKE_ARGS:-} >/dev/null
phase configure

# Only the test executables ctest will run (and what they link: studio_core), never studio_engine/LibTorch code.
known=$(ninja -C "$BUILD" -t targets all 2>/dev/null || true)
targets=()
for t in test_config test_wikitext test_formats test_fuzz_regressions; do
  if grep -q "^$t:" <<<"$known"; then targets+=("$t"); fi
done
echo "[sanitize] building ${targets[*]}"
nice -n 19 cmake --build "$BUILD" -j1 --target "${targets[@]}"
phase build

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$ROOT/tests/sanitize/lsan.supp:print_suppressions=1${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export UBSAN_OPTIONS="suppressions=$ROOT/tests/sanitize/ubsan.supp:print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
rc=0
(cd "$BUILD" && nice -n 19 ctest -R "$TESTS" --output-on-failure -j1) || rc=$?
phase test
if [ "$rc" -eq 0 ]; then
  echo "[sanitize] $(date -u +%FT%TZ) clean: ${targets[*]}"
else
  echo "[sanitize] $(date -u +%FT%TZ) FAILED (ctest exit $rc): read the sanitizer report above"
fi
exit "$rc"
