#!/usr/bin/env python3
"""Compare the per-step training losses of two runs (events.jsonl files or a JSON {"step": loss} map).

  scripts/compare_losses.py REFERENCE CANDIDATE [--max-abs X] [--mean-abs Y] [--label TEXT]

Prints the differences (max, mean, at a few steps) and exits 1 when a tolerance is exceeded. For a resumed run the
last logged loss of a step counts (resumes log the replayed steps again).
"""
import argparse
import json
import sys


def losses(path):
    if path.endswith(".json"):
        return {int(k): float(v) for k, v in json.load(open(path)).items()}
    by_step = {}
    for line in open(path):
        line = line.strip()
        if not line:
            continue
        try:
            e = json.loads(line)
        except ValueError:
            continue  # a half-written last line
        if e.get("event") == "train" and e.get("stage", "train") == "train":
            by_step[int(e["step"])] = float(e["loss"])
    return by_step


def main():
    p = argparse.ArgumentParser()
    p.add_argument("reference")
    p.add_argument("candidate")
    p.add_argument("--max-abs", type=float, default=None)
    p.add_argument("--mean-abs", type=float, default=None)
    p.add_argument("--label", default="")
    p.add_argument("--dump", help="write the reference's losses as a JSON step map here")
    a = p.parse_args()
    ref, cand = losses(a.reference), losses(a.candidate)
    if a.dump:
        json.dump({str(k): v for k, v in sorted(ref.items())}, open(a.dump, "w"), indent=0)
    steps = sorted(set(ref) & set(cand))
    if not steps:
        print(f"{a.label}: no common steps ({len(ref)} vs {len(cand)} logged)")
        return 1
    diffs = {s: cand[s] - ref[s] for s in steps}
    worst = max(steps, key=lambda s: abs(diffs[s]))
    mean = sum(abs(d) for d in diffs.values()) / len(diffs)
    marks = [s for s in (1, 2, 10, 50, 100, 150, 200) if s in diffs]
    print(f"{a.label}: {len(steps)} steps; mean |diff| {mean:.5f}; max |diff| {abs(diffs[worst]):.5f} at step {worst}; "
          + ", ".join(f"step {s}: {ref[s]:.4f} vs {cand[s]:.4f}" for s in marks))
    ok = (a.max_abs is None or abs(diffs[worst]) <= a.max_abs) and (a.mean_abs is None or mean <= a.mean_abs)
    if not ok:
        print(f"{a.label}: FAILED (tolerance: max {a.max_abs}, mean {a.mean_abs})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
