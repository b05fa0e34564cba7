#!/usr/bin/env python3
"""Sum a Chrome trace (STUDIO_PROFILE=trace.json) by GPU kernel, or by CPU operator when it has no kernels.

  scripts/trace_summary.py TRACE [--top N] [--by-op [--depth D]]

--by-op groups kernels by the innermost CPU operator that launched them (and that operator's enclosing ones, D in all,
2 unless --depth says), through the launch's correlation id: which aten call a generic kernel such as elementwise_kernel<128,4> belongs to. Kernels
replayed from a CUDA graph have no launching operator and are grouped as "(graph)".
"""
import argparse
import bisect
import collections
import json


def launching_ops(events, depth):
    """correlation id -> 'innermost op <- parent <- ...' (depth operators) for every kernel launch made inside a CPU
    operator."""
    ops_by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation") and "dur" in e:
            ops_by_thread[e.get("tid")].append((float(e["ts"]), float(e["ts"]) + float(e["dur"]), e["name"]))
    starts = {}
    for tid, ops in ops_by_thread.items():
        ops.sort()
        starts[tid] = [o[0] for o in ops]
    result = {}
    for e in events:
        if e.get("cat") != "cuda_runtime" or "correlation" not in e.get("args", {}):
            continue
        tid, ts = e.get("tid"), float(e["ts"])
        ops = ops_by_thread.get(tid, [])
        i = bisect.bisect_right(starts.get(tid, []), ts)
        # Enclosing operators start before the launch and end after it; the innermost starts last.
        enclosing = [o for o in ops[max(0, i - 200):i] if o[1] >= ts]
        enclosing.sort(key=lambda o: o[0])
        names = [o[2] for o in enclosing[-depth:]][::-1]
        result[e["args"]["correlation"]] = " <- ".join(names) if names else "(no operator)"
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("trace")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--by-op", action="store_true", help="group kernels by the CPU operator that launched them")
    p.add_argument("--depth", type=int, default=2, help="with --by-op: how many enclosing operators name a group")
    a = p.parse_args()
    data = json.load(open(a.trace))
    events = data["traceEvents"] if isinstance(data, dict) else data
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    chosen = kernels or [e for e in events if e.get("ph") == "X" and "dur" in e and e.get("cat", "cpu_op") in ("cpu_op", "")]
    kind = "GPU kernels" if kernels else "CPU operators"
    ops = launching_ops(events, a.depth) if a.by_op and kernels else {}
    by_name = collections.defaultdict(lambda: [0.0, 0])
    for e in chosen:
        name = e["name"][:90]
        if a.by_op and kernels:
            name = f"{e['name'][:60]}  [{ops.get(e.get('args', {}).get('correlation'), '(graph)')[:60 * a.depth]}]"
        by_name[name][0] += float(e["dur"])
        by_name[name][1] += 1
    total = sum(v[0] for v in by_name.values())
    span = (max(e["ts"] + e["dur"] for e in chosen) - min(e["ts"] for e in chosen)) if chosen else 0
    print(f"{kind}: {len(chosen)} launches, {total / 1000:.2f} ms busy over a {span / 1000:.2f} ms span")
    for name, (dur, count) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[: a.top]:
        print(f"{dur / 1000:9.2f} ms {100 * dur / total:5.1f}% {count:6d}x  {name}")


if __name__ == "__main__":
    main()
