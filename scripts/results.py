#!/usr/bin/env python3
"""The [repro] results (issue #8) from sweeps and their trained runs: python3 standard library only.

    scripts/results.py --sweep runs-gpu/wt2-all-16l-sweep --sweep runs-gpu/wt2-txl-16l-sweep \\
        --dense runs-gpu/wt2-all-16l --dense runs-gpu/wt2-txl-16l \\
        --csv docs/data/repro-results.csv --md results-table.md --update docs/results.md

--sweep DIR   a sweep's run directory (sweep.json, written by `studio --batch` of a config with "sweep")
--dense DIR   a trained run (its eval stage gives the dense row of its model type)
--csv FILE    one row per model and point, in the columns `studio plot-sweep` reads (plus more)
--md FILE     the results table and the comparison at matched layer parameters and sparsity, as markdown
--update FILE replaces what lies between the <!-- results:table --> and <!-- results:comparison --> markers

A point's speed-up is the sweep's own bench stage unless the point has bench-serial/bench.json (scripts/repro-gpu.sh
rebench: every point benched again one at a time, nothing else on the machine), which then wins.

Only points whose run finished are used; the others are named on stderr. Nothing is invented: a number missing in
the runs stays an empty cell.
"""
import argparse
import csv
import json
import os
import re
import sys

MODEL_NAMES = {"all_attention": "All-attention", "transformer_xl": "Transformer-XL"}
MODEL_ORDER = ["all_attention", "transformer_xl"]
CSV_COLUMNS = ["name", "model_type", "status", "heads_kept", "layer_params", "best_valid_ppl", "test_ppl",
               "label", "model", "l0_coefficient", "heads_total", "sparsity", "total_params", "speedup_b32_bf16"]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_events(run_dir):
    events = []
    with open(os.path.join(run_dir, "events.jsonl")) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                events.append(json.loads(line))
            except ValueError:
                pass  # a half-written last line
    return events


def dense_row(run_dir):
    """The trained model's row: its eval stage's dense perplexities and the parameters run_start counted."""
    events = read_events(run_dir)
    start = next((e for e in reversed(events) if e.get("event") == "run_start"), None)
    if start is None:
        raise SystemExit("results.py: %s has no run_start event" % run_dir)
    model = start.get("model", {})
    ppl = {}
    for e in events:
        if e.get("event") == "eval" and e.get("stage") == "eval" and e.get("model") == "dense":
            ppl[e.get("split")] = e.get("ppl")
    ends = [e for e in events if e.get("event") == "run_end"]
    status = ends[-1].get("status") if ends else "interrupted"
    heads = sum(model.get("heads_per_layer", []))
    return {
        "name": start.get("name", os.path.basename(os.path.normpath(run_dir))),
        "model_type": model.get("type", ""), "status": status, "label": "dense", "l0": None,
        "heads_kept": heads, "heads_total": heads, "sparsity": 0.0,
        "layer_params": model.get("params_layers"), "total_params": model.get("params_total"),
        "valid_ppl": ppl.get("valid"), "test_ppl": ppl.get("test"), "speedup": 1.0,
    }


def serial_speedup(point_dir):
    """The pruned model's speed-up from <point>/bench-serial/bench.json (batch 32 bf16 on CUDA when that row
    exists, else its first pruned row), or None when the point was not benched again."""
    path = os.path.join(point_dir, "bench-serial", "bench.json")
    if not os.path.exists(path):
        return None
    pruned = [r for r in read_json(path).get("rows", []) if r.get("variant") == "pruned"]
    best = [r for r in pruned if r.get("batch") == 32 and r.get("dtype") == "bf16" and r.get("device") == "cuda"]
    chosen = (best or pruned or [None])[0]
    return chosen.get("speedup") if chosen else None


def sweep_rows(sweep_dir):
    summary = read_json(os.path.join(sweep_dir, "sweep.json"))
    rows = []
    for p in summary.get("points", []):
        if p.get("status") != "ok":
            print("results.py: %s: status %s, left out%s" % (p.get("name"), p.get("status"),
                  (" (%s)" % p["error"]) if p.get("error") else ""), file=sys.stderr)
            continue
        # The coefficient the point ran with, whatever the sweep varied.
        l0 = p.get("values", {}).get("gate.l0_coefficient")
        point_dir = os.path.join(sweep_dir, p.get("dir", p["name"]))
        config_path = os.path.join(point_dir, "config.json")
        if os.path.exists(config_path):
            l0 = read_json(config_path).get("gate", {}).get("l0_coefficient", l0)
        serial = serial_speedup(point_dir)
        rows.append({
            "name": p["name"], "model_type": p.get("model_type") or "", "status": "ok",
            "label": "l0 %g" % l0 if l0 is not None else p["name"], "l0": l0,
            "heads_kept": p.get("heads_kept"), "heads_total": p.get("heads_total"), "sparsity": p.get("sparsity"),
            "layer_params": p.get("layer_params"), "total_params": p.get("params_total"),
            "valid_ppl": p.get("valid_ppl"), "test_ppl": p.get("test_ppl"), "speedup": serial if serial is not None else p.get("speedup_b32_bf16"),
        })
    return rows


def ordered(rows):
    def key(r):
        model = MODEL_ORDER.index(r["model_type"]) if r["model_type"] in MODEL_ORDER else len(MODEL_ORDER)
        return (model, r["model_type"], r["label"] != "dense", r["l0"] if r["l0"] is not None else -1.0, r["name"])
    return sorted(rows, key=key)


def fmt(value, pattern):
    return "" if value is None else pattern % value


def commas(value):
    return "" if value is None else "{:,}".format(int(value))


def table(rows):
    out = ["| model | l0 coefficient | heads kept | sparsity | layer params | total params | valid ppl | test ppl | speed-up (batch 32, bf16) |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        heads = "" if r["heads_kept"] is None else "%d / %s" % (r["heads_kept"], r["heads_total"] if r["heads_total"] is not None else "?")
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            MODEL_NAMES.get(r["model_type"], r["model_type"]), "dense" if r["label"] == "dense" else fmt(r["l0"], "%g"),
            heads, fmt(None if r["sparsity"] is None else 100 * r["sparsity"], "%.1f%%"),
            commas(r["layer_params"]), commas(r["total_params"]), fmt(r["valid_ppl"], "%.2f"), fmt(r["test_ppl"], "%.2f"),
            fmt(r["speedup"], "%.2fx")))
    return "\n".join(out) + "\n"


def interpolate(points, x):
    """Piecewise-linear y at x over (x, y) points; None outside their range. Points that share an x (a dense model
    and its gated control with no head closed are both at sparsity 0) count as one, at the mean of their y.

    >>> interpolate([(0.0, 85.0), (0.0, 84.0), (0.5, 90.0)], 0.0)
    84.5
    >>> interpolate([(0.0, 85.0), (0.0, 84.0), (0.5, 90.0)], 0.25)
    87.25
    >>> interpolate([(0.0, 85.0), (0.5, 90.0)], 0.75) is None
    True
    >>> interpolate([(1.0, 2.0)], 1.0)
    2.0
    """
    by_x = {}
    for px, py in points:
        if px is not None and py is not None:
            by_x.setdefault(px, []).append(py)
    merged = sorted((px, sum(ys) / len(ys)) for px, ys in by_x.items())
    for (x0, y0), (x1, y1) in zip(merged, merged[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if len(merged) == 1 and merged[0][0] == x:
        return merged[0][1]
    return None


def comparison(rows):
    """All-attention against Transformer-XL at matched layer parameters and at matched sparsity (test perplexity)."""
    ours = [r for r in rows if r["model_type"] == "all_attention"]
    theirs = [r for r in rows if r["model_type"] == "transformer_xl"]
    if not ours or not theirs:
        return "Needs finished rows of both models.\n"
    out = []
    for axis, title, show in (("layer_params", "layer parameters", commas),
                              ("sparsity", "head sparsity", lambda v: fmt(100 * v, "%.1f%%"))):
        out.append("At matched %s (Transformer-XL's test perplexity interpolated linearly between its rows, rows at the same x averaged; "
                   "margin = Transformer-XL - All-attention, positive when All-attention is better):\n" % title)
        out.append("| All-attention row | %s | All-attention test ppl | Transformer-XL test ppl | margin | relative |" % title)
        out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        wins = total = 0
        margins = []
        for r in ours:
            if r[axis] is None or r["test_ppl"] is None:
                continue
            other = interpolate([(t[axis], t["test_ppl"]) for t in theirs], r[axis])
            if other is None:
                out.append("| %s | %s | %.2f | outside its range | | |" % (r["label"], show(r[axis]), r["test_ppl"]))
                continue
            margin = other - r["test_ppl"]
            margins.append(margin)
            total += 1
            wins += margin > 0
            out.append("| %s | %s | %.2f | %.2f | %+.2f | %+.1f%% |" % (r["label"], show(r[axis]), r["test_ppl"], other, margin, 100 * margin / other))
        if total:
            out.append("\nAll-attention is better at %d of %d matched points; margins %+.2f to %+.2f test ppl.\n" % (wins, total, min(margins), max(margins)))
        else:
            out.append("\nNo All-attention row falls inside Transformer-XL's range.\n")
    return "\n".join(out)


def replace_between(text, marker, content):
    pattern = re.compile(r"(<!-- results:%s -->\n).*?(<!-- /results:%s -->)" % (marker, marker), re.S)
    if not pattern.search(text):
        raise SystemExit("results.py: no <!-- results:%s --> ... <!-- /results:%s --> markers to update" % (marker, marker))
    return pattern.sub(lambda m: m.group(1) + content + m.group(2), text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", action="append", default=[], help="a sweep's run directory (repeatable)")
    parser.add_argument("--dense", action="append", default=[], help="a trained run: the dense row of its model (repeatable)")
    parser.add_argument("--csv", help="write the rows here (studio plot-sweep draws it)")
    parser.add_argument("--md", help="write the table and the comparison here")
    parser.add_argument("--update", help="replace the marked table and comparison in this markdown file")
    args = parser.parse_args()
    if not args.sweep and not args.dense:
        parser.error("name at least one --sweep or --dense")

    rows = [dense_row(d) for d in args.dense]
    for r in rows:
        if r["status"] != "ok":
            print("results.py: %s: status %s (its numbers may be partial)" % (r["name"], r["status"]), file=sys.stderr)
    for s in args.sweep:
        rows += sweep_rows(s)
    # A dense row's 1.00x is the reference of its model's measured speed-ups; without any it says nothing.
    measured = {r["model_type"] for r in rows if r["label"] != "dense" and r["speedup"] is not None}
    for r in rows:
        if r["label"] == "dense" and r["model_type"] not in measured:
            r["speedup"] = None
    rows = ordered(rows)

    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(CSV_COLUMNS)
            for r in rows:
                w.writerow([r["name"], r["model_type"], "finished" if r["status"] == "ok" else r["status"], r["heads_kept"],
                            r["layer_params"], r["valid_ppl"], r["test_ppl"], r["label"], MODEL_NAMES.get(r["model_type"], r["model_type"]),
                            "" if r["l0"] is None else "%g" % r["l0"], r["heads_total"], r["sparsity"], r["total_params"],
                            "" if r["speedup"] is None else r["speedup"]])
    body = table(rows)
    compare = comparison(rows)
    if args.md:
        with open(args.md, "w") as f:
            f.write(body + "\n" + compare)
    if args.update:
        with open(args.update) as f:
            text = f.read()
        text = replace_between(replace_between(text, "table", body), "comparison", compare)
        with open(args.update, "w") as f:
            f.write(text)
    if not (args.csv or args.md or args.update):
        sys.stdout.write(body + "\n" + compare)


if __name__ == "__main__":
    main()
