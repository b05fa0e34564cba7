#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz, clang, ASan+UBSan, no LibTorch/Qt) and runs each for a while.
#   scripts/fuzz.sh [SECONDS] [HARNESS...]     default: 600 seconds each, all four harnesses
# Environment: CXX (default clang++-14, else clang++), BUILD (default build-fuzz), PARALLEL (harnesses run at
# the same time, default 1; the dev machine has 2 cores, so at most 2), FUZZ_ARGS (extra libFuzzer flags),
# KEEP_GOING=1 (libFuzzer -fork=1 -ignore_crashes=1: keep fuzzing the whole time after a crash, saving every
# crash file; use it while known findings are unfixed, then triage $BUILD/artifacts/ by replaying each file).
# Everything runs under nice -n 19. The seed corpora in tests/fuzz/corpus/ are read, never written: new inputs
# go to $BUILD/corpus/<harness>/, crashes to $BUILD/artifacts/<harness>/, logs to $BUILD/logs/<harness>.log.
# Exit status: 0 when every harness ran clean, 1 when any found something (its crash file is printed).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:-600}
shift || true
HARNESSES=("$@")
[ ${#HARNESSES[@]} -gt 0 ] || HARNESSES=(config events wikitext safetensors)
BUILD=${BUILD:-build-fuzz}
PARALLEL=${PARALLEL:-1}
if [ -z "${CXX:-}" ]; then
  if command -v clang++-14 >/dev/null; then CXX=clang++-14; else CXX=clang++; fi
fi

nice -n 19 cmake -S tests/fuzz -B "$BUILD" -G Ninja -DCMAKE_CXX_COMPILER="$CXX" >/dev/null
nice -n 19 cmake --build "$BUILD" -j1 --target $(printf 'fuzz_%s ' "${HARNESSES[@]#fuzz_}")

# Longest useful input per harness: configs and safetensors headers are a few KiB; events and WikiText need
# several lines to exercise the split/cache paths.
max_len() {
  case "$1" in
    config) echo 4096 ;; events) echo 4096 ;; wikitext) echo 4096 ;; safetensors) echo 4096 ;; *) echo 4096 ;;
  esac
}

run_one() {
  local h=${1#fuzz_}
  local work="$BUILD/corpus/$h" art="$BUILD/artifacts/$h/" log="$BUILD/logs/$h.log"
  mkdir -p "$work" "$art" "$(dirname "$log")"
  local dict=()
  [ -f "tests/fuzz/$h.dict" ] && dict=(-dict="tests/fuzz/$h.dict")
  local cmd=(nice -n 19 "$BUILD/fuzz_$h" "$work" "tests/fuzz/corpus/fuzz_$h" "${dict[@]}"
             -max_total_time="$SECONDS_EACH" -max_len="$(max_len "$h")" -timeout=10 -rss_limit_mb=2048
             -print_final_stats=1 -artifact_prefix="$art" ${FUZZ_ARGS:-})
  [ "${KEEP_GOING:-0}" = 1 ] && cmd+=(-fork=1 -ignore_crashes=1)
  echo "[fuzz] $(date -u +%FT%TZ) ${cmd[*]}" | tee "$log"
  # Crash files of earlier runs stay in $art until triaged; only the ones this run writes are its findings.
  local started="$BUILD/logs/$h.started"
  touch "$started"
  local rc=0
  "${cmd[@]}" >>"$log" 2>&1 || rc=$?
  local execs
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
  # Fork mode has no final stats: its status lines start with "#<total executions>:".
  [ -n "$execs" ] || execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
  local crashes earlier
  crashes=$(find "$art" -type f -newer "$started" | wc -l)
  earlier=$(find "$art" -type f ! -newer "$started" | wc -l)
  [ "$earlier" -eq 0 ] || echo "[fuzz] fuzz_$h: $earlier crash file(s) of earlier runs in $art (replay one: $BUILD/fuzz_$h FILE)"
  if [ "$rc" -eq 0 ] && [ "$crashes" -eq 0 ]; then
    echo "[fuzz] fuzz_$h: clean, ${execs:-?} executions in ${SECONDS_EACH}s (log $log)"
  else
    echo "[fuzz] fuzz_$h: FOUND SOMETHING (exit $rc), ${execs:-?} executions; $crashes new crash file(s):"
    find "$art" -type f -newer "$started" | sed "s|^|  |"
    grep -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error|==FUZZ FINDING==|SUMMARY' "$log" | sort | uniq -c | head -20 | sed 's/^/  /'
    rc=1
  fi
  return "$rc"
}

status=0
pids=()
for h in "${HARNESSES[@]}"; do
  run_one "$h" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$PARALLEL" ]; then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
exit $status
