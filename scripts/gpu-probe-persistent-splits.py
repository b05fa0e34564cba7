#!/usr/bin/env python3
"""Times the persistent columns' flash call of one All-attention layer at inference, with the 2048 persistent keys
split into s chunks that the kernel sees as s batch entries (q broadcast with batch stride 0), for H = 1..8 heads.
A layer of few heads fills few of the GPU's SMs; splitting the keys multiplies its blocks. Run on the GPU machine:
  python3 scripts/gpu-probe-persistent-splits.py [--rows 6144] [--persistent 2048] [--head-dim 64]
Prints one markdown row per (heads, splits): median microseconds of CUDA-graph replays, and whether the split
parts merged by their log-sum-exps equal the unsplit call. Alone the call gains up to 1.4x; inside the model, beside
the projections that run concurrently with it, the split gained nothing and was taken out again (docs/benchmarks.md,
session 9). The script stays as the record of that measurement."""
import argparse

import torch

from gpu_probe_timing import timed

p = argparse.ArgumentParser()
p.add_argument("--rows", type=int, nargs="+", default=[768, 6144])   # B*T at batch 4 and 32
p.add_argument("--persistent", type=int, default=2048)
p.add_argument("--head-dim", type=int, default=64)
p.add_argument("--splits", type=int, nargs="+", default=[1, 2, 4, 8])
args = p.parse_args()
dev = torch.device("cuda")
props = torch.cuda.get_device_properties(dev)
print(f"device {props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}")
flash = torch.ops.aten._scaled_dot_product_flash_attention


def call(q, k, v, s):
    H, L, dh = q.shape[1], q.shape[2], q.shape[3]
    N = k.shape[1]
    qs = q.expand(s, H, L, dh)                                   # batch stride 0
    ks = k.view(H, s, N // s, dh).transpose(0, 1)                # (s,H,N/s,dh)
    vs = v.view(H, s, N // s, dh).transpose(0, 1)
    out, lse = flash(qs, ks, vs, 0.0, False, False, scale=1.0)[:2]     # (s,H,L,dh), (s,H,L)
    return out, lse


print("| rows | heads | splits | us | us/head | merged vs unsplit max err |")
print("| ---: | ---: | ---: | ---: | ---: | ---: |")
for L in args.rows:
    for H in range(1, 9):
        q = torch.randn(1, H, L, args.head_dim, device=dev, dtype=torch.bfloat16)
        k = torch.randn(H, args.persistent, args.head_dim, device=dev, dtype=torch.bfloat16) * 0.1
        v = torch.randn(H, args.persistent, args.head_dim, device=dev, dtype=torch.bfloat16)
        ref, ref_lse = call(q, k, v, 1)
        for s in args.splits:
            out, lse = call(q, k, v, s)
            total = torch.logsumexp(lse, 0)                          # (H,L)
            merged = (out.float() * torch.exp(lse - total).unsqueeze(-1)).sum(0)
            err = (merged - ref[0].float()).abs().max().item()
            us = timed(lambda: call(q, k, v, s))
            print(f"| {L} | {H} | {s} | {us:.1f} | {us / H:.1f} | {err:.2e} |", flush=True)
