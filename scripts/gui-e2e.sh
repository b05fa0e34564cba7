#!/usr/bin/env bash
# End-to-end check of the desktop studio under a virtual display: launch configs/quickstart.json from the GUI, wait
# until the gate heatmap shows data from that run, save the window to docs/screenshot-studio.png and quit (the GUI stops
# the run, which then writes run_end "stopped").
#   STUDIO=path/to/studio (default build/app/studio)  CONFIG=... (default configs/quickstart.json)
#   SHOT=... (default docs/screenshot-studio.png)      TIMEOUT=seconds (default 600)
set -euo pipefail
cd "$(dirname "$0")/.."

STUDIO=${STUDIO:-build/app/studio}
CONFIG=${CONFIG:-}
SHOT=${SHOT:-docs/screenshot-studio.png}
TIMEOUT=${TIMEOUT:-600}

[[ -x "$STUDIO" ]] || { echo "gui-e2e: $STUDIO not found: build it first (cmake --build build --target studio)" >&2; exit 2; }
RUNS=$(mktemp -d /tmp/studio-gui-e2e.XXXXXX)
if [[ -z "$CONFIG" ]]; then
    # The quickstart's first steps: a short train stage, then gating, so the heatmap fills within a minute.
    CONFIG="$RUNS/quickstart-e2e.json"
    python3 - "$CONFIG" <<'PY'
import json, sys
c = json.load(open("configs/quickstart.json"))
c["name"] = "quickstart-e2e"
c["train"].update({"steps": 40, "eval_interval": 0, "checkpoint_interval": 0, "log_interval": 5})
c["gate"].update({"steps": 300, "log_interval": 5, "gates_interval": 5, "l0_warmup": 20})
json.dump(c, open(sys.argv[1], "w"), indent=2)
PY
fi
[[ -f "$CONFIG" ]] || { echo "gui-e2e: $CONFIG not found" >&2; exit 2; }
export STUDIO_DATA="${STUDIO_DATA:-$(cd .. && pwd)/shared/data}"
command -v xvfb-run >/dev/null || { echo "gui-e2e: xvfb-run missing (apt-get install xvfb xauth)" >&2; exit 2; }

echo "gui-e2e: runs in $RUNS"
mkdir -p "$(dirname "$SHOT")"
rm -f "$SHOT.new"

start=$(date +%s)
set +e
xvfb-run -a -s "-screen 0 1280x800x24 -nolisten tcp" \
    "$STUDIO" gui --launch "$CONFIG" --runs-dir "$RUNS" --screenshot "$SHOT.new" --exit-when-gates --timeout "$TIMEOUT"
rc=$?
set -e
echo "gui-e2e: studio gui exited with $rc after $(( $(date +%s) - start )) s"

run_dir=$(find "$RUNS" -mindepth 1 -maxdepth 1 -type d | head -n 1)
if [[ $rc -ne 0 || ! -s "$SHOT.new" ]]; then
    echo "gui-e2e: FAILED (runs kept in $RUNS)" >&2
    if [[ -n "$run_dir" && -f "$run_dir/stdout.log" ]]; then
        echo "--- last lines of $run_dir/stdout.log ---" >&2
        tail -n 20 "$run_dir/stdout.log" | tr '\r' '\n' | tail -n 20 >&2
    fi
    rm -f "$SHOT.new"
    exit 1
fi

# The screenshot must be the whole window, not a crop or an empty grab.
if command -v identify >/dev/null; then
    size=$(identify -format '%wx%h' "$SHOT.new")
    colors=$(identify -format '%k' "$SHOT.new")
    echo "gui-e2e: screenshot $size, $colors colours"
    w=${size%x*}; h=${size#*x}
    if (( w < 1000 || h < 600 || colors < 50 )); then
        echo "gui-e2e: FAILED: the screenshot looks wrong ($size, $colors colours)" >&2
        exit 1
    fi
fi
mv -f "$SHOT.new" "$SHOT"

# The GUI sent SIGTERM on exit: give the engine time to checkpoint and close its events with run_end.
if [[ -n "$run_dir" ]]; then
    for _ in $(seq 1 60); do
        grep -q '"run_end"' "$run_dir/events.jsonl" 2>/dev/null && break
        sleep 1
    done
    if grep -q '"run_end"' "$run_dir/events.jsonl" 2>/dev/null; then
        echo "gui-e2e: $(grep '"run_end"' "$run_dir/events.jsonl" | tail -n 1)"
    else
        echo "gui-e2e: warning: no run_end in $run_dir/events.jsonl 60 s after the GUI quit" >&2
    fi
fi
rm -rf "$RUNS"
echo "gui-e2e: OK, wrote $SHOT"
