#!/usr/bin/env python3
"""Times the persistent columns' part of training attention (every batch row's queries against one layer's 2048
persistent keys, no bias) by LibTorch's flash kernels and by its cuDNN kernels, forward and backward, and checks that
cuDNN's backward keeps the contract training relies on: given ANOTHER output and log-sum-exp (the joined ones of two
parts), it returns the gradients flash's backward returns for them. Run on the GPU machine:
  python3 scripts/gpu-probe-cudnn-attention.py [--batches 24 192] [--dropout 0.2]"""
import argparse, statistics
import torch

p = argparse.ArgumentParser()
p.add_argument("--batches", type=int, nargs="+", default=[24, 192])
p.add_argument("--tgt-len", type=int, default=192)
p.add_argument("--heads", type=int, default=8)
p.add_argument("--head-dim", type=int, default=64)
p.add_argument("--persistent", type=int, default=2048)
p.add_argument("--dropout", type=float, default=0.2)
args = p.parse_args()
dev, bf16 = torch.device("cuda"), torch.bfloat16
print(f"device {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, cudnn {torch.backends.cudnn.version()}")
flash_f, flash_b = torch.ops.aten._scaled_dot_product_flash_attention, torch.ops.aten._scaled_dot_product_flash_attention_backward
cudnn_f, cudnn_b = torch.ops.aten._scaled_dot_product_cudnn_attention, torch.ops.aten._scaled_dot_product_cudnn_attention_backward
H, dh, N = args.heads, args.head_dim, args.persistent


def timed(fn, reps=5, inner=10):
    for _ in range(3): fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner): fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


for B in args.batches:
    L = B * args.tgt_len
    q = torch.randn(L, H, dh, device=dev, dtype=bf16).view(1, L, H, dh).transpose(1, 2)     # (1,H,L,dh), rows (L,H,dh)
    k = (torch.randn(1, H, N, dh, device=dev) * 0.125).to(bf16)
    v = torch.randn(1, H, N, dh, device=dev, dtype=bf16)
    g = torch.randn(L, H, dh, device=dev, dtype=bf16).view(1, L, H, dh).transpose(1, 2)
    flops = 4 * L * N * dh * H                                                                # forward: two products
    for drop in (0.0, args.dropout):
        fo = flash_f(q, k, v, drop, False, False, scale=1.0)
        try:
            co = cudnn_f(q, k, v, None, True, drop, False, False, scale=1.0)
        except Exception as e:
            print(f"B {B}: cuDNN forward failed: {str(e).splitlines()[0]}")
            break
        if drop == 0.0:
            print(f"B {B}: flash out {tuple(fo[0].shape)} strides {fo[0].stride()}, lse {tuple(fo[1].shape)} {fo[1].dtype}; "
                  f"cuDNN out strides {co[0].stride()}, lse {tuple(co[1].shape)} {co[1].dtype} strides {co[1].stride()}")
            print(f"B {B}: forward cuDNN vs flash: out {rel(co[0], fo[0]):.2e}, lse {rel(co[1].reshape(fo[1].shape), fo[1]):.2e}")
            # The joined contract: another output and a larger log-sum-exp, as if a second part held some mass.
            o_joined = (fo[0].float() * 0.7 + 0.1 * torch.randn_like(fo[0].float())).to(bf16)
            lse_joined = fo[1] + 0.4
            fb = flash_b(g, q, k, v, o_joined, lse_joined, None, None, L, N, 0.0, False, fo[6], fo[7], scale=1.0)
            try:
                cb = cudnn_b(g, q, k, v, o_joined, lse_joined.reshape(co[1].shape).contiguous() if co[1].dim() != lse_joined.dim() else lse_joined,
                             co[6], co[7], None, co[2], co[3], L, N, 0.0, False, scale=1.0)
                print(f"B {B}: backward given a joined out and lse, cuDNN vs flash: dq {rel(cb[0], fb[0]):.2e}, dk {rel(cb[1], fb[1]):.2e}, "
                      f"dv {rel(cb[2], fb[2]):.2e}; dq strides {cb[0].stride()}")
            except Exception as e:
                print(f"B {B}: cuDNN backward failed: {str(e).splitlines()[0]}")
        t_ff = timed(lambda: flash_f(q, k, v, drop, False, False, scale=1.0))
        t_cf = timed(lambda: cudnn_f(q, k, v, None, True, drop, False, False, scale=1.0))
        t_fb = timed(lambda: flash_b(g, q, k, v, fo[0], fo[1], None, None, L, N, drop, False, fo[6], fo[7], scale=1.0))
        try:
            t_cb = timed(lambda: cudnn_b(g, q, k, v, co[0], co[1], co[6], co[7], None, co[2], co[3], L, N, drop, False, scale=1.0))
        except Exception as e:
            print(f"B {B}: cuDNN backward failed: {str(e).splitlines()[0]}")
            t_cb = float("nan")
        print(f"| {B} | {drop} | flash {t_ff:.3f} / {t_fb:.3f} ms ({flops / t_ff / 1e9:.0f} / {2.5 * flops / t_fb / 1e9:.0f} TFLOP/s) | "
              f"cuDNN {t_cf:.3f} / {t_cb:.3f} ms ({flops / t_cf / 1e9:.0f} / {2.5 * flops / t_cb / 1e9:.0f} TFLOP/s) |")
