#!/usr/bin/env bash
# Run ON THE GPU MACHINE after `scripts/gpu-check.sh build` (headless build-gpu/, data in .gpu/data): the [repro]
# comparison of issue #8. Trains both baselines, runs both gating sweeps (gate, prune, eval, bench at batch 32 bf16),
# then packs the runs' events, configs and summaries, their logs, and scripts/results.py's table and CSV into
# $OUT/repro/repro.tar.gz (the device tool brings back few files: $OUT/repro holds summary.txt, the tarball and the
# table alone).
#   scripts/repro-gpu.sh [train|sweep|rebench|results|all]...    (default: all)
# With two or more GPUs the All-attention work runs on GPU 0 and the Transformer-XL work on GPU 1 at the same time
# (REPRO_SERIAL=1: one after the other on GPU 0). Each model's work is resumable: a run or sweep that finished is
# skipped, a stopped one continues from its last checkpoint, so the script can be called again until it is done.
#   TRAIN_EPOCHS=N     train for N epochs instead of the configs' 4 (recorded in each run's config.json)
#   GATE_EPOCHS=N      gate each sweep point for N epochs instead of 1
#   REBENCH_DEVICE=cpu the serial re-bench on the CPU (a dry run of this script on a machine without a GPU)
#   REPRO_BUDGET_S=S   stop cleanly (SIGTERM: checkpoint, exit 3) after S seconds in all, to fit a call's time limit
# Times on two H200s (2026-11-29, one model per GPU): training 12 epochs 8 min 16 s (All-attention, 54k tokens/s) and
# 6 min 48 s (Transformer-XL); a sweep point about 1.6 min (1 epoch of gating, fp32 eval, bench), 5 per model; the
# serial re-bench about 12 s a point. In 10-minute calls: `build repro` with REPRO_BUDGET_S, then `repro` again within
# the machine's 30 s warm window (the runs live on its disk), until it says done.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT/repro"
export STUDIO_DATA="${STUDIO_DATA:-$PWD/.gpu/data}" STUDIO_CACHE="${STUDIO_CACHE:-/tmp/studio-cache}"
STUDIO="${STUDIO:-build-gpu/app/studio}"
RUNS=runs-gpu                      # the sweep configs' gate.checkpoint names runs-gpu/wt2-{all,txl}-16l
DEADLINE=$(( $(date +%s) + ${REPRO_BUDGET_S:-604800} ))
LOGS=$RUNS/logs
mkdir -p "$LOGS"
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/repro/summary.txt"; }

[ -x "$STUDIO" ] || { log "no $STUDIO: run scripts/gpu-check.sh build first"; exit 2; }
gpus=$("$STUDIO" devices --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["cuda_devices"])')
parallel=0; [ "${gpus:-0}" -ge 2 ] && [ -z "${REPRO_SERIAL:-}" ] && parallel=1

# configs/X.json with epochs overridden (stage: train or gate), else the file itself.
config_for() {
  local config=$1 stage=$2 epochs=$3
  [ -z "$epochs" ] && { echo "$config"; return; }
  local out
  out="/tmp/repro-$(basename "$config" .json)-$stage-$epochs.json"
  python3 -c "import json,sys; c=json.load(open(sys.argv[1])); c[sys.argv[2]]['epochs']=float(sys.argv[3]); json.dump(c, open(sys.argv[4],'w'), indent=2)" \
    "$config" "$stage" "$epochs" "$out"
  echo "$out"
}

finished() { tail -n 1 "$1/events.jsonl" 2>/dev/null | grep -q '"event":"run_end","status":"ok"'; }

# studio --batch CONFIG RUN_DIR [resume-marker] on one GPU, stopped cleanly at the deadline.
batch() {
  local gpu=$1 config=$2 dir=$3 marker=$4 name; name=$(basename "$dir")
  local left=$(( DEADLINE - $(date +%s) )) resume=()
  [ "$left" -le 30 ] && { log "$name: no time left in REPRO_BUDGET_S"; return 3; }
  [ -e "$dir/$marker" ] && resume=(--resume)
  log "$name on GPU $gpu: $config ${resume[*]}"
  CUDA_VISIBLE_DEVICES=$gpu timeout -s TERM -k 60 "$left" "$STUDIO" --batch "$config" --run-dir "$dir" "${resume[@]}" --no-progress \
    > "$LOGS/$name.log" 2>&1
  local rc=$?
  log "$name: exit $rc ($(grep -E '^\[(eval|prune)\]|error' "$LOGS/$name.log" | tail -n 3 | tr '\n' ' '))"
  return "$rc"
}

train_model() {   # all|txl GPU
  local dir=$RUNS/wt2-$1-16l
  if finished "$dir"; then log "$(basename "$dir"): trained before, skipped"; return 0; fi
  batch "$2" "$(config_for "configs/wt2_$1_16l_train.json" train "${TRAIN_EPOCHS:-}")" "$dir" events.jsonl
}

sweep_model() {   # all|txl GPU
  finished "$RUNS/wt2-$1-16l" || { log "wt2-$1-16l is not trained: run the train step first"; return 1; }
  batch "$2" "$(config_for "configs/wt2_$1_16l_sweep.json" gate "${GATE_EPOCHS:-}")" "$RUNS/wt2-$1-16l-sweep" sweep.json
  local rc=$?
  [ -f "$RUNS/wt2-$1-16l-sweep/sweep.md" ] && cat "$RUNS/wt2-$1-16l-sweep/sweep.md" >> "$OUT/repro/summary.txt"
  return "$rc"
}

both() {   # train_model|sweep_model
  local rc=0
  if [ "$parallel" = 1 ]; then
    "$1" all 0 & local a=$!
    "$1" txl 1 & local t=$!
    wait $a || rc=1
    wait $t || rc=1
  else
    "$1" all 0 || rc=1
    "$1" txl 0 || rc=1
  fi
  return "$rc"
}

# The sweeps' bench stages run while the other GPU's sweep gates and evaluates: the host is shared, and the benchmark
# with the loss is bound by it (2026-11-29: one point's speed-up read 0.83x during the sweep and 1.22x alone). So every
# point is benched again, one at a time on GPU 0, into <point>/bench-serial/, which scripts/results.py prefers.
rebench() {
  local point rc=0
  for point in "$RUNS"/wt2-all-16l-sweep/*/ "$RUNS"/wt2-txl-16l-sweep/*/; do
    [ -f "$point/pruned/heads.json" ] || continue
    [ -f "$point/bench-serial/bench.json" ] && continue
    [ $(( DEADLINE - $(date +%s) )) -le 30 ] && { log "rebench: no time left in REPRO_BUDGET_S"; return 3; }
    rm -rf "$point/bench-serial.tmp"
    CUDA_VISIBLE_DEVICES=0 "$STUDIO" bench "$point" --devices "${REBENCH_DEVICE:-cuda}" --batch-sizes 32 --dtypes bf16 --variants dense,pruned \
      -r 9 --out "$point/bench-serial.tmp" > "$LOGS/rebench-$(basename "$point").log" 2>&1 \
      && mv "$point/bench-serial.tmp" "$point/bench-serial" || { rc=1; log "rebench $(basename "$point") failed"; }
    grep -E '^\| pruned' "$LOGS/rebench-$(basename "$point").log" | sed "s|^|$(basename "$point") |" >> "$OUT/repro/summary.txt"
  done
  return "$rc"
}

collect() {
  local pack=$RUNS/repro-pack args=()
  log "pack events, configs, summaries and logs into $OUT/repro/repro.tar.gz"
  rm -rf "$pack" && mkdir -p "$pack"
  (find $RUNS/wt2-all-16l $RUNS/wt2-txl-16l $RUNS/wt2-all-16l-sweep $RUNS/wt2-txl-16l-sweep $LOGS \
      \( -name events.jsonl -o -name config.json -o -name sweep.json -o -name sweep.md -o -name sweep-config.json \
         -o -name heads.json -o -path '*/bench/bench.*' -o -path '*/bench-serial/bench.*' -o -name '*.log' \) -not -path '*/checkpoints/*' -print0 2>/dev/null \
    | tar --null -cf - -T - | tar -xf - -C "$pack") || true
  for m in all txl; do
    [ -f "$RUNS/wt2-$m-16l/events.jsonl" ] && args+=(--dense "$RUNS/wt2-$m-16l")
    [ -f "$RUNS/wt2-$m-16l-sweep/sweep.json" ] && args+=(--sweep "$RUNS/wt2-$m-16l-sweep")
  done
  if [ ${#args[@]} -gt 0 ]; then
    python3 scripts/results.py "${args[@]}" --csv "$pack/results.csv" --md "$pack/results-table.md" 2>&1 | tee -a "$OUT/repro/summary.txt"
    cp "$pack/results-table.md" "$OUT/repro/results-table.md"
    cat "$pack/results-table.md" >> "$OUT/repro/summary.txt"
  fi
  tar -czf "$OUT/repro/repro.tar.gz" -C "$pack" .
}

log "repro: $gpus GPU(s), $([ "$parallel" = 1 ] && echo "All-attention on GPU 0, Transformer-XL on GPU 1" || echo "one model after the other")"
status=0
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(all)
for step in "${steps[@]}"; do
  case "$step" in
    all) both train_model || status=1; both sweep_model || status=1; rebench || status=1; collect ;;
    train) both train_model || status=1 ;;
    sweep) both sweep_model || status=1 ;;
    rebench) rebench || status=1 ;;
    results) collect ;;
    *) echo "unknown step $step (train, sweep, rebench, results, all)"; status=2 ;;
  esac
done
exit $status
