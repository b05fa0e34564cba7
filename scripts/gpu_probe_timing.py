"""Timing for the GPU probe scripts (scripts/gpu-probe-*.py): median microseconds of one call, replayed from a
CUDA graph of `inner` calls so that the host's launches do not count."""
import statistics

import torch


def timed(fn, reps=7, inner=50):
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn(); fn()
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        for _ in range(inner): fn()
    for _ in range(3): g.replay()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b) * 1000 / inner)
    return statistics.median(times)
