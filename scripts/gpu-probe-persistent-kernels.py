#!/usr/bin/env python3
"""Times the persistent columns' call of one All-attention layer at inference by flash's kernel and by cuDNN's, for
H = 1..8 heads and a few row counts (B*T), with q laid out as the model holds it (a view of (B*T, H, dh) rows). The
model picks cuDNN's or flash's per layer from this table's shape (backend/apart_attention.cpp). Run on the GPU machine:
  python3 scripts/gpu-probe-persistent-kernels.py [--rows 768 6144 24576] [--persistent 2048] [--head-dim 64]
Prints one markdown row per (rows, heads): median microseconds of CUDA-graph replays of each, their ratio, and the
largest difference of the two outputs and log-sum-exps; then cuDNN's call over the columns in two halves and in four
quarters (one call of 2 or 4 batch entries, its join not timed: the model's kernel does it as it starts), each checked
against the whole call."""
import argparse

import torch

from gpu_probe_timing import timed

p = argparse.ArgumentParser()
p.add_argument("--rows", type=int, nargs="+", default=[768, 3072, 6144, 24576])   # B*T at batch 4, 16, 32 and 128
p.add_argument("--persistent", type=int, default=2048)
p.add_argument("--head-dim", type=int, default=64)
args = p.parse_args()
dev = torch.device("cuda")
props = torch.cuda.get_device_properties(dev)
print(f"device {props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")


def flash(q, k, v):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=1.0)[:2]
    return out, lse


def cudnn(q, k, v):
    out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False, scale=1.0)[:2]
    return out, lse.reshape(out.shape[:3])


def cudnn_parts(q, k, v, s):
    """The columns in s parts, as s batch entries of one call (the queries read s times through a zero stride), joined
    by their log-sum-exps (in the model our kernel joins them as it starts)."""
    out, lse = cudnn(q.expand(s, -1, -1, -1), parts(k, s), parts(v, s))
    joined = torch.logsumexp(lse, 0)                                                          # (H,L)
    return ((out.float() * (lse - joined).exp().unsqueeze(-1)).sum(0, keepdim=True).to(out.dtype), joined.unsqueeze(0))


def parts(t, s):
    H, N, dh = t.shape[1], t.shape[2], t.shape[3]
    return t[0].view(H, s, N // s, dh).transpose(0, 1)                                       # (s,H,N/s,dh)


print("| rows | heads | flash us | cuDNN us | cuDNN / flash | max diff out, lse | cuDNN halves us | cuDNN quarters us (calls alone) |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for L in args.rows:
    for H in range(1, 9):
        q = torch.randn(L, H, args.head_dim, device=dev, dtype=torch.bfloat16).transpose(0, 1).unsqueeze(0)  # (1,H,L,dh) view
        k = torch.randn(1, H, args.persistent, args.head_dim, device=dev, dtype=torch.bfloat16) * 0.1
        v = torch.randn(1, H, args.persistent, args.head_dim, device=dev, dtype=torch.bfloat16)
        (fo, fl), (co, cl) = flash(q, k, v), cudnn(q, k, v)
        diff = f"{(fo.float() - co.float()).abs().max().item():.1e}, {(fl - cl).abs().max().item():.1e}"
        times = []
        for s in (2, 4):
            po, pl = cudnn_parts(q, k, v, s)
            assert (po.float() - co.float()).abs().max().item() < 2e-2 and (pl - cl).abs().max().item() < 1e-3, f"{s} parts disagree"
            ks, vs = parts(k, s), parts(v, s)
            times.append(timed(lambda: cudnn(q.expand(s, -1, -1, -1), ks, vs)))
        tf, tc = timed(lambda: flash(q, k, v)), timed(lambda: cudnn(q, k, v))
        print(f"| {L} | {H} | {tf:.1f} | {tc:.1f} | {tc / tf:.2f} | {diff} | {times[0]:.1f} | {times[1]:.1f} |", flush=True)
