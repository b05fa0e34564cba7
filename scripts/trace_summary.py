#!/usr/bin/env python3
"""Sum a Chrome trace (STUDIO_PROFILE=trace.json) by GPU kernel, or by CPU operator when it has no kernels.

  scripts/trace_summary.py TRACE [--top N]
"""
import argparse
import collections
import json


def main():
    p = argparse.ArgumentParser()
    p.add_argument("trace")
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args()
    data = json.load(open(a.trace))
    events = data["traceEvents"] if isinstance(data, dict) else data
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    chosen = kernels or [e for e in events if e.get("ph") == "X" and "dur" in e and e.get("cat", "cpu_op") in ("cpu_op", "")]
    kind = "GPU kernels" if kernels else "CPU operators"
    by_name = collections.defaultdict(lambda: [0.0, 0])
    for e in chosen:
        name = e["name"][:90]
        by_name[name][0] += float(e["dur"])
        by_name[name][1] += 1
    total = sum(v[0] for v in by_name.values())
    span = (max(e["ts"] + e["dur"] for e in chosen) - min(e["ts"] for e in chosen)) if chosen else 0
    print(f"{kind}: {len(chosen)} launches, {total / 1000:.2f} ms busy over a {span / 1000:.2f} ms span")
    for name, (dur, count) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[: a.top]:
        print(f"{dur / 1000:9.2f} ms {100 * dur / total:5.1f}% {count:6d}x  {name}")


if __name__ == "__main__":
    main()
