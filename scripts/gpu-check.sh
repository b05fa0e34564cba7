#!/usr/bin/env bash
# Run ON THE GPU MACHINE (PyTorch 2.x + CUDA + NCCL, no Qt, no internet) in one call: builds studio headless
# against the pip LibTorch, then runs the GPU checks and writes every result under $OUT (or ./gpu-out).
#   scripts/gpu-check.sh [build|smoke|selftest|trainbench|trainlayouts|traingraphs|resume|numerics|multigpu|profile|train|bench|lossbench|layerbench|kernelbench|splitprobe|kernelprobe|biasbench|switchbench|inferswitch|headscan|trainprofile|gate|repro|all]...
# Needs .gpu/ from scripts/gpu-prepare.sh (carried). NVLink multicast stays off (shared hosts).
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
export STUDIO_DATA="$PWD/.gpu/data" STUDIO_CACHE=/tmp/studio-cache
STUDIO=build-gpu/app/studio
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/summary.txt"; }

build() {
  local torch_prefix nccl
  torch_prefix=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
  nccl=$(python3 -c 'import nvidia.nccl as m;print(m.__path__[0])' 2>/dev/null || true)
  log "build against $(python3 -c 'import torch;print(torch.__version__)') (nccl: ${nccl:-none})"
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTUDIO_GUI=OFF -DSTUDIO_TESTS=OFF \
    -DCMAKE_PREFIX_PATH="$torch_prefix" -DCUDAToolkit_ROOT=/usr/local/cuda -DCMAKE_CUDA_ARCHITECTURES=90 \
    $([ -x /usr/local/cuda/bin/nvcc ] && echo -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc) \
    -DSTUDIO_EXTRA_INCLUDE="$PWD/.gpu/include" ${nccl:+-DSTUDIO_NCCL_INCLUDE="$nccl/include"} > "$OUT/cmake.log" 2>&1 \
    || { tail -30 "$OUT/cmake.log"; return 1; }
  cmake --build build-gpu -j16 > "$OUT/build.log" 2>&1 || { grep -E "error" -A5 "$OUT/build.log" | head -60; return 1; }
  log "built"
}

smoke() {
  $STUDIO devices --json | tee -a "$OUT/summary.txt"
  $STUDIO info configs/wt103_all_16l_train.json | head -8 | tee -a "$OUT/summary.txt"
}

# One epoch of the 16-layer reference architecture on WikiText-2 (issue [engine] 10): tokens/s and valid ppl.
train() {
  local config=configs/wt2_all_16l_train.json
  if [ -n "${TRAIN_EPOCHS:-}" ]; then   # a shorter baseline when the call's time is short
    python3 -c "import json,sys; c=json.load(open('$config')); c['train']['epochs']=float(sys.argv[1]); json.dump(c, open('/tmp/train.json','w'))" "$TRAIN_EPOCHS"
    config=/tmp/train.json
  fi
  log "train wt2-all-16l ($config, epochs ${TRAIN_EPOCHS:-from config})"
  $STUDIO --batch $config --run-dir runs-gpu/wt2-all-16l --no-progress 2>&1 | tail -5 | tee -a "$OUT/summary.txt"
  cp runs-gpu/wt2-all-16l/events.jsonl "$OUT/train-events.jsonl" 2>/dev/null
  python3 - "$OUT/train-events.jsonl" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys, statistics
ev = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
tr = [e for e in ev if e["event"] == "train"]
tps = [e["tokens_per_s"] for e in tr[2:]]   # the first two logged windows hold the eager steps and the capture
print("train steps", tr[-1]["step"] if tr else 0,
      "median tokens/s %.0f" % statistics.median(tps) if tps else "median tokens/s: n/a (fewer than 3 logged windows)")
for e in ev:
    if e["event"] == "eval": print("eval", e.get("model", ""), e["split"], "ppl %.3f" % e["ppl"])
PY
}

# Gating at three l0 coefficients from the trained 16-layer run (issue [gates] 9): heads kept, parameters, valid
# perplexity of the gated and the pruned model. Needs `train` first in the same call (a fresh machine is bare).
gate() {
  for l0 in ${L0S:-0.01 0.02 0.04}; do
    log "gate wt2-all-16l at l0 $l0"
    python3 - "$l0" <<'PY'
import json, sys
l0 = sys.argv[1]
c = json.load(open("configs/wt2_all_16l_gating.json"))
c["name"] = "wt2-all-16l-gate-" + l0
c["gate"]["l0_coefficient"] = float(l0)
json.dump(c, open("/tmp/gate-%s.json" % l0, "w"), indent=2)
PY
    $STUDIO --batch /tmp/gate-$l0.json --run-dir runs-gpu/gate-$l0 --no-progress 2>&1 | grep -E "^\[(prune|eval)\]|error" | tee -a "$OUT/summary.txt"
    cp runs-gpu/gate-$l0/events.jsonl "$OUT/gate-$l0-events.jsonl" 2>/dev/null
    cp runs-gpu/gate-$l0/pruned/heads.json "$OUT/gate-$l0-heads.json" 2>/dev/null
  done
}

# Inference speed of the reference shapes with random weights ([bench] 2-4): with the loss (eager) and without it
# (one CUDA graph per segment).
bench() {
  log "bench wt103 reference shapes, random weights, with loss"
  $STUDIO bench configs/wt103_all_16l_train.json --devices cuda --batch-sizes "${BENCH_BATCHES:-1,4,32,128}" --dtypes "${BENCH_DTYPES:-fp32,bf16}" \
    --with-loss 1 --out "$OUT/bench-wt103" 2>>"$OUT/bench.log" | tee "$OUT/bench-wt103.md"
  log "bench wt103 reference shapes, random weights, no loss, CUDA graphs"
  $STUDIO bench configs/wt103_all_16l_train.json --devices cuda --batch-sizes "${BENCH_BATCHES:-1,4,32,128}" --dtypes "${BENCH_DTYPES:-fp32,bf16}" \
    --with-loss 0 --out "$OUT/bench-wt103-noloss" 2>>"$OUT/bench.log" | tee "$OUT/bench-wt103-noloss.md"
}

# The fused GPU attention against the explicit computation, forward and gradients, fp32 and bf16.
selftest() {
  log "selftest"
  $STUDIO selftest --device cuda 2>&1 | tee -a "$OUT/summary.txt"
  return "${PIPESTATUS[0]}"
}

# Training-step speed of the reference config on random tokens (issue [gpu-speed] 1-2).
trainbench() {
  log "bench --train wt103-all-16l, random tokens, batches ${TRAIN_BATCHES:-24,64,128}"
  $STUDIO bench --train configs/wt103_all_16l_train.json --devices cuda --dtypes bf16 --batch-sizes "${TRAIN_BATCHES:-24,64,128}" \
    --steps 10 --warmup 3 -r 5 --out "$OUT/train-bench" 2>>"$OUT/train-bench.log" | tee -a "$OUT/summary.txt"
}

# Kernel-time breakdowns of three training steps (trainprofile below) and three inference segments (batch 32, no
# loss), by kernel and by the operator that launched each kernel.
profile() {
  trainprofile
  log "profile: inference segment, batch 32, bf16, no loss, eager"
  STUDIO_PROFILE=/tmp/infer-trace.json $STUDIO bench configs/wt103_all_16l_train.json --devices cuda --dtypes bf16 --batch-sizes 32 \
    --variants dense --with-loss 0 --cuda-graphs 0 --steps 3 --warmup 2 -r 1 --out /tmp/pi > /dev/null 2>&1
  python3 scripts/trace_summary.py /tmp/infer-trace.json --top 20 | tee -a "$OUT/summary.txt"
  python3 scripts/trace_summary.py /tmp/infer-trace.json --top 30 --by-op | tee -a "$OUT/summary.txt"
}

# Where a training step's GPU time goes, batch ${PROFILE_BATCH:-24}: kernel sums of three graphed steps, then of three
# eager steps by the operator that launched each kernel (graph replays carry no operator names).
trainprofile() {
  local b=${PROFILE_BATCH:-24} variant
  for variant in ${PROFILE_VARIANTS:-ungated}; do
    log "profile: training step, batch $b, bf16, $variant, graphed"
    STUDIO_PROFILE=/tmp/train-graph.json $STUDIO bench --train configs/wt103_all_16l_train.json --devices cuda --dtypes bf16 \
      --batch-sizes $b --train-variants $variant --steps 3 --warmup 3 -r 1 --out /tmp/ptg > /dev/null 2>&1
    python3 scripts/trace_summary.py /tmp/train-graph.json --top ${PROFILE_TOP:-30} | tee -a "$OUT/summary.txt"
    [ -n "${PROFILE_EAGER-1}" ] || continue   # PROFILE_EAGER= (empty): graphed only
    log "profile: training step, batch $b, bf16, $variant, eager, by operator"
    STUDIO_PROFILE=/tmp/train-eager.json $STUDIO bench --train configs/wt103_all_16l_train.json --devices cuda --dtypes bf16 \
      --batch-sizes $b --train-variants $variant --cuda-graphs 0 --steps 3 --warmup 3 -r 1 --out /tmp/pte > /dev/null 2>&1
    python3 scripts/trace_summary.py /tmp/train-eager.json --top ${PROFILE_EAGER_TOP:-45} --by-op --depth ${PROFILE_DEPTH:-2} | tee -a "$OUT/summary.txt"
  done
}

# The inference rows of [bench] 4 (batch 4 and 32, bf16, dense vs the 106/87/59-head models, the layers replayed as
# a CUDA graph), then where a batch-32 segment's time goes: kernel sums of three segments of the dense and the 59-head
# model (busy against span shows how long the GPU waited for the host).
#   inference_rows_and_profiles WITH_LOSS NAME REPETITIONS TOP WHAT
inference_rows_and_profiles() {
  local loss=$1 name=$2 reps=$3 top=$4 what=$5
  log "bench wt103 reference shapes, bf16, $what, batch 4 and 32"
  $STUDIO bench configs/wt103_all_16l_train.json --devices cuda --batch-sizes 4,32 --dtypes bf16 --with-loss "$loss" \
    --variants dense,pruned --steps 20 --warmup 5 -r "$reps" --out "$OUT/bench-$name" 2>>"$OUT/bench.log" | tee -a "$OUT/summary.txt"
  for variant in dense pruned-59; do
    log "profile: inference segment $what, batch 32, bf16, $variant"
    STUDIO_PROFILE=/tmp/$name-$variant.json STUDIO_PROFILE_VARIANT=$variant $STUDIO bench configs/wt103_all_16l_train.json \
      --devices cuda --batch-sizes 32 --dtypes bf16 --with-loss "$loss" --variants dense,pruned --steps 3 --warmup 2 -r 1 \
      --out /tmp/profile-$name > /dev/null 2>&1
    python3 scripts/trace_summary.py /tmp/$name-$variant.json --top "$top" | tee -a "$OUT/summary.txt"
  done
}
# With the loss (the reference's workload); without it (the layers alone: what does not shrink with the heads).
lossbench() { inference_rows_and_profiles 1 loss 5 15 "with the loss"; }
# Our relative-attention kernel against LibTorch's fused kernels (STUDIO_ATTENTION=sdpa): same build, same machine,
# loss-free graphed segments, one invocation each.
kernelbench() {
  for mode in sdpa own; do
    log "bench wt103 reference shapes, bf16, without the loss, batch 4 and 32, attention: $mode"
    STUDIO_ATTENTION=$([ $mode = sdpa ] && echo sdpa) $STUDIO bench configs/wt103_all_16l_train.json --devices cuda --batch-sizes 4,32 \
      --dtypes bf16 --with-loss 0 --variants dense,pruned --steps 20 --warmup 5 -r 7 --out "$OUT/bench-kernel-$mode" \
      2>>"$OUT/bench.log" | tee -a "$OUT/summary.txt"
  done
}
layerbench() { inference_rows_and_profiles 0 layers 7 25 "without the loss"; }
# What a segment costs at each uniform head count ([h]*16, h = 1..8), loss-free, batch ${SCAN_BATCHES:-4,32,128}, bf16:
# the part that removing heads cannot shrink (the fit's constant) and the steps of the attention kernels' waves. Then
# kernel sums of three batch-32 segments at ${SCAN_PROFILE_HEADS:-2 4 6} heads a layer (dense: layerbench).
headscan() {
  python3 -c "import json; c=json.load(open('configs/wt103_all_16l_train.json')); c['bench']['head_lists']=[[h]*16 for h in range(1,8)]; json.dump(c, open('/tmp/headscan.json','w'))"
  log "bench uniform head counts 1..8 a layer, bf16, without the loss, batches ${SCAN_BATCHES:-4,32,128}"
  $STUDIO bench /tmp/headscan.json --devices cuda --batch-sizes "${SCAN_BATCHES:-4,32,128}" --dtypes bf16 --with-loss 0 \
    --variants dense,pruned --steps 20 --warmup 5 -r 7 --out "$OUT/bench-headscan" 2>>"$OUT/bench.log" | tee -a "$OUT/summary.txt"
  local h
  for h in ${SCAN_PROFILE_HEADS:-2 4 6}; do
    log "profile: inference segment without the loss, batch 32, bf16, $h heads a layer"
    STUDIO_PROFILE=/tmp/scan-$h.json STUDIO_PROFILE_VARIANT=pruned-$((16 * h)) $STUDIO bench /tmp/headscan.json --devices cuda \
      --batch-sizes 32 --dtypes bf16 --with-loss 0 --variants pruned --steps 3 --warmup 2 -r 1 --out /tmp/profile-scan > /dev/null 2>&1
    python3 scripts/trace_summary.py /tmp/scan-$h.json --top 12 | tee -a "$OUT/summary.txt"
  done
}
# Training steps with the content columns' bias formed by LibTorch's operations (STUDIO_CONTENT_BIAS=ops) and by our
# kernels (the default), ungated, at ${BIAS_BATCHES:-24,64}, same build and machine.
biasbench() { SWITCH=STUDIO_CONTENT_BIAS switchbench; }
# Side by side on one machine, alternating for ${ROUNDS:-1} rounds: ${SWITCH}=${SWITCH_OFF:-ops} (STUDIO_CONTENT_BIAS,
# STUDIO_GATED_WEIGHT, STUDIO_SEGMENT_NORM, STUDIO_OUTPUT_BIAS, STUDIO_LOSS_BIAS, STUDIO_HEAD_BIAS, STUDIO_LAMB_NORMS
# =ops: LibTorch's operations; STUDIO_PERSISTENT_ATTENTION=flash; STUDIO_U_IN_BIAS=1; STUDIO_POSITION_COLUMNS=all;
# STUDIO_CONTENT_CAUSAL=0) against the switch unset, ungated training steps.
switchbench() {
  local switch=${SWITCH:?SWITCH=STUDIO_...} round mode
  for round in $(seq "${ROUNDS:-1}"); do
    for mode in ops kernels; do
      log "train bench round $round, $switch=$([ $mode = ops ] && echo "${SWITCH_OFF:-ops}" || echo unset)"
      env $([ $mode = ops ] && echo "$switch=${SWITCH_OFF:-ops}") $STUDIO bench --train configs/wt103_all_16l_train.json --devices cuda \
        --dtypes bf16 --batch-sizes "${SWITCH_BATCHES:-${BIAS_BATCHES:-24,64}}" --train-variants ungated --steps 10 --warmup 3 -r 5 \
        --out "$OUT/train-$switch-$mode-$round" 2>>"$OUT/train-bench.log" | tee -a "$OUT/summary.txt"
    done
  done
}
# The inference rows of [bench] 4 side by side, alternating for ${ROUNDS:-1} rounds: ${SWITCH}=${SWITCH_OFF} (e.g.
# STUDIO_REL_ATTENTION_WARPS=4: our kernel always in blocks of 4 warps) against the switch unset; loss-free graphed
# segments at batch ${INFER_BATCHES:-4,32}, dense vs the 106/87/59-head models.
inferswitch() {
  local switch=${SWITCH:?SWITCH=STUDIO_...} off=${SWITCH_OFF:?SWITCH_OFF=value} round mode
  for round in $(seq "${ROUNDS:-1}"); do
    for mode in off on; do
      log "inference bench round $round, $switch=$([ $mode = off ] && echo "$off" || echo unset)"
      env $([ $mode = off ] && echo "$switch=$off") $STUDIO bench configs/wt103_all_16l_train.json --devices cuda \
        --batch-sizes "${INFER_BATCHES:-4,32}" --dtypes bf16 --with-loss 0 --variants dense,pruned --steps 20 --warmup 5 -r 7 \
        --out "$OUT/infer-$switch-$mode-$round" 2>>"$OUT/bench.log" | tee -a "$OUT/summary.txt"
    done
  done
}
# The persistent columns' flash call of one layer with its keys split s ways, for 1..8 heads (see the script).
splitprobe() {
  log "probe: persistent flash call, keys split s ways"
  python3 scripts/gpu-probe-persistent-splits.py 2>&1 | tee -a "$OUT/summary.txt"
}
# The persistent columns' inference call by flash's kernel and by cuDNN's, 1..8 heads, a few row counts (see the script).
kernelprobe() {
  log "probe: persistent inference call, flash against cuDNN"
  python3 scripts/gpu-probe-persistent-kernels.py 2>&1 | tee -a "$OUT/summary.txt"
}
# Training's attention layouts side by side on one machine: the persistent columns in the content columns' kernel
# call (STUDIO_ATTENTION=concat) against apart (the default), ungated steps at ${LAYOUT_BATCHES:-24,48,64}.
trainlayouts() {
  for mode in concat apart; do
    log "bench --train wt103-all-16l, ungated, attention layout: $mode"
    STUDIO_ATTENTION=$([ $mode = concat ] && echo concat) $STUDIO bench --train configs/wt103_all_16l_train.json --devices cuda \
      --dtypes bf16 --batch-sizes "${LAYOUT_BATCHES:-24,48,64}" --train-variants ungated --steps 10 --warmup 3 -r 5 \
      --out "$OUT/train-$mode" 2>>"$OUT/train-bench.log" | tee -a "$OUT/summary.txt"
  done
}

# Training with the layers replayed from CUDA graphs against eager layers (--cuda-graphs 0), same build and machine,
# both variants at ${GRAPH_BATCHES:-24,64}.
traingraphs() {
  for mode in 0 1; do
    log "bench --train wt103-all-16l, layers from CUDA graphs: $mode"
    $STUDIO bench --train configs/wt103_all_16l_train.json --devices cuda --dtypes bf16 --batch-sizes "${GRAPH_BATCHES:-24,64}" \
      --cuda-graphs $mode --steps 10 --warmup 3 -r 5 --out "$OUT/train-graphs-$mode" 2>>"$OUT/train-bench.log" | tee -a "$OUT/summary.txt"
  done
}

# A killed run resumes exactly on the GPU too, where the layers and the optimizer replay from CUDA graphs: 60 steps of
# the WikiText-2 config straight through, and stopped at step 25 then resumed (eager warm-up steps, a new capture);
# the per-5-step losses after the stop and the final validation must agree.
resume() {
  python3 - <<'PY'
import json
c = json.load(open("configs/wt2_all_16l_train.json"))
c["train"].update({"steps": 60, "log_interval": 5, "eval_interval": 0})
json.dump(c, open("/tmp/resume.json", "w"))
PY
  rm -rf runs-gpu/resume-straight runs-gpu/resume-split
  $STUDIO --batch /tmp/resume.json --run-dir runs-gpu/resume-straight --no-progress > /dev/null 2>&1
  STUDIO_STOP_AT_STEP=25 $STUDIO --batch /tmp/resume.json --run-dir runs-gpu/resume-split --no-progress > /dev/null 2>&1
  $STUDIO --batch /tmp/resume.json --run-dir runs-gpu/resume-split --resume --no-progress > /dev/null 2>&1
  python3 - runs-gpu/resume-straight/events.jsonl runs-gpu/resume-split/events.jsonl <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
def read(path):
    ev = [json.loads(l) for l in open(path) if l.strip()]
    return ({e["step"]: e["loss"] for e in ev if e["event"] == "train" and e["step"] > 25},
            [e["ppl"] for e in ev if e["event"] == "eval"][-1:])
(a, pa), (b, pb) = read(sys.argv[1]), read(sys.argv[2])
diff = max(abs(a[s] - b[s]) for s in a)
print("resume on the GPU with CUDA graphs: %d windows after step 25, max |loss diff| %.2e; valid ppl %.4f vs %.4f %s"
      % (len(a), diff, pa[0], pb[0], "ok" if sorted(a) == sorted(b) and diff < 1e-3 and abs(pa[0] - pb[0]) < 1e-2 * pa[0] else "FAIL"))
PY
}

# First 200 steps on the GPU in bf16 and fp32 against the CPU's fp32 losses of the same seed and data ([gpu-speed] 3).
numerics() {
  for precision in bf16 fp32; do
    python3 - "$precision" <<'PY'
import json, sys
c = json.load(open("configs/numerics_check.json"))
c["device"] = "cuda"; c["precision"] = sys.argv[1]
json.dump(c, open("/tmp/numerics-%s.json" % sys.argv[1], "w"))
PY
    rm -rf runs-gpu/numerics-$precision
    $STUDIO --batch /tmp/numerics-$precision.json --run-dir runs-gpu/numerics-$precision --no-progress > /dev/null 2>&1
    cp runs-gpu/numerics-$precision/events.jsonl "$OUT/numerics-$precision-events.jsonl"
  done
  python3 scripts/compare_losses.py tests/data/numerics-cpu-fp32.json runs-gpu/numerics-fp32/events.jsonl --label "gpu fp32 vs cpu fp32" | tee -a "$OUT/summary.txt"
  python3 scripts/compare_losses.py runs-gpu/numerics-fp32/events.jsonl runs-gpu/numerics-bf16/events.jsonl --label "gpu bf16 vs gpu fp32" | tee -a "$OUT/summary.txt"
  python3 scripts/compare_losses.py tests/data/numerics-cpu-fp32.json runs-gpu/numerics-bf16/events.jsonl --label "gpu bf16 vs cpu fp32" \
    --max-abs "${NUMERICS_MAX:-0.1}" --mean-abs "${NUMERICS_MEAN:-0.03}" | tee -a "$OUT/summary.txt"
  return "${PIPESTATUS[0]}"
}

# Every GPU of the machine (N = 2: [multi-gpu] 3 and 6; N = 4 or 8: [scale-8gpu]; MULTI_GPUS=N to use fewer):
# N ranks over a global batch of 48 follow one GPU with 48 (no dropout, bf16), and tokens/s of N x 24 vs 1 x 24.
multigpu() {
  local gpus; gpus=${MULTI_GPUS:-$(python3 -c 'import torch;print(torch.cuda.device_count())')}
  if [ "$gpus" -lt 2 ]; then log "multigpu: skipped, $gpus GPU"; return 0; fi
  local steps=${MULTI_STEPS:-150}
  for case in "agree-1:1:48:0" "agree-$gpus:$gpus:48:0" "speed-1:1:24:1" "speed-$gpus:$gpus:$((24 * gpus)):1"; do
    IFS=: read -r name ranks batch dropout <<< "$case"
    python3 - "$name" "$ranks" "$batch" "$dropout" "$steps" <<'PY'
import json, sys
name, ranks, batch, dropout, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
c = json.load(open("configs/wt2_all_16l_train.json"))
c["name"] = "multigpu-" + name; c["gpus"] = ranks; c["stages"] = ["train"]
t = c["train"]; t.pop("epochs", None); t["steps"] = steps; t["batch_size"] = batch
t["log_interval"] = 1 if name.startswith("agree") else 25; t["eval_interval"] = 0; t["checkpoint_interval"] = 0
if not dropout:
    for k in ("attn_drop", "proj_drop", "input_drop", "output_drop", "word_drop"): c["model"][k] = 0.0
json.dump(c, open("/tmp/multigpu-%s.json" % name, "w"))
PY
    rm -rf runs-gpu/multigpu-$name
    log "multigpu $name: $ranks GPU(s), global batch $batch, dropout $dropout, $steps steps"
    $STUDIO --batch /tmp/multigpu-$name.json --run-dir runs-gpu/multigpu-$name --no-progress > "$OUT/multigpu-$name.log" 2>&1
    tail -3 "$OUT/multigpu-$name.log" | tee -a "$OUT/summary.txt"
    echo "warnings (lines starting [W): $(grep -c '^\[W' "$OUT/multigpu-$name.log")" | tee -a "$OUT/summary.txt"
    cp runs-gpu/multigpu-$name/events.jsonl "$OUT/multigpu-$name-events.jsonl"
  done
  python3 scripts/compare_losses.py runs-gpu/multigpu-agree-1/events.jsonl runs-gpu/multigpu-agree-$gpus/events.jsonl --label "$gpus ranks vs 1 x 48 bf16" | tee -a "$OUT/summary.txt"
  python3 - runs-gpu/multigpu-speed-1/events.jsonl runs-gpu/multigpu-speed-$gpus/events.jsonl "$gpus" <<'PY' | tee -a "$OUT/summary.txt"
import json, statistics, sys
def tps(path):
    ev = [json.loads(l) for l in open(path) if l.strip()]
    return statistics.median([e["tokens_per_s"] for e in ev if e["event"] == "train"][1:])
one, many, n = tps(sys.argv[1]), tps(sys.argv[2]), int(sys.argv[3])
print("scaling: 1 GPU x 24: %.0f tokens/s; %d GPUs x 24: %.0f tokens/s; %.2fx" % (one, n, many, many / one))
PY
}

# The [repro] comparison (issue #8): both baselines, both gating sweeps, results in $OUT/repro (scripts/repro-gpu.sh).
# The repro's evaluations and benches run the fused inference attention: check it first (seconds), and stop when it
# is wrong. STUDIO_ATTENTION=concat (no separate persistent kernel) or =explicit runs them anyway.
repro() {
  if [ -z "${STUDIO_ATTENTION:-}" ] && ! $STUDIO selftest --device cuda > "$OUT/repro-selftest.txt" 2>&1; then
    log "repro: studio selftest failed, not run ($OUT/repro-selftest.txt; STUDIO_ATTENTION=concat or explicit to run anyway)"
    cat "$OUT/repro-selftest.txt"
    return 1
  fi
  OUT="$OUT" STUDIO="$STUDIO" scripts/repro-gpu.sh
}

status=0
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(all)
for step in "${steps[@]}"; do
  case "$step" in
    all) build && smoke && selftest && trainbench && numerics && multigpu && bench || status=1 ;;
    build|smoke|train|gate|bench|lossbench|layerbench|kernelbench|splitprobe|kernelprobe|biasbench|switchbench|inferswitch|headscan|trainprofile|trainlayouts|traingraphs|resume|selftest|trainbench|numerics|multigpu|profile|repro) $step || status=1 ;;
    *) echo "unknown step $step"; status=2 ;;
  esac
done
exit $status
