#!/usr/bin/env bash
# Run ON THE GPU MACHINE (PyTorch 2.x + CUDA + NCCL, no Qt, no internet) in one call: builds studio headless
# against the pip LibTorch, then runs the GPU checks and writes every result under $OUT (or ./gpu-out).
#   scripts/gpu-check.sh [build|smoke|train|bench|gate|repro|all]...
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
tps = [e["tokens_per_s"] for e in tr[2:]] or [0]
print("train steps", tr[-1]["step"] if tr else 0, "median tokens/s %.0f" % statistics.median(tps))
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

bench() {
  log "bench wt103 reference shapes, random weights"
  $STUDIO bench configs/wt103_all_16l_train.json --devices cuda --batch-sizes 1,4,32,128 --dtypes fp32,bf16 \
    --out "$OUT/bench-wt103" 2>>"$OUT/bench.log" | tee "$OUT/bench-wt103.md"
}

# The [repro] comparison (issue #8): both baselines, both gating sweeps, results in $OUT/repro (scripts/repro-gpu.sh).
repro() { OUT="$OUT" STUDIO="$STUDIO" scripts/repro-gpu.sh; }

status=0
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(all)
for step in "${steps[@]}"; do
  case "$step" in
    all) build && smoke && train && bench || status=1 ;;
    build|smoke|train|gate|bench|repro) $step || status=1 ;;
    *) echo "unknown step $step"; status=2 ;;
  esac
done
exit $status
