"""Which cuBLAS kernel the training backward's long-K products get at batch 512 of the reference shapes, and what
splitting K buys: the position keys' gradient (H,P,B*T)x(H,B*T,dh) against the same in s parts, and the layer's
weight gradients (D,B*T)x(B*T,D). Run on the GPU machine: python3 scripts/gpu-probe-position-keys-grad.py"""
import torch
from torch.profiler import profile, ProfilerActivity

H, B, T, P, dh, D = 8, 512, 192, 200, 64, 512
dev, bf = "cuda", torch.bfloat16
grad_position = torch.randn(H, B, T, P, device=dev, dtype=bf)                  # (H,B,T,P)
q_store = torch.randn(B, T, H, dh, device=dev, dtype=bf)                       # the model's batch-major (B,T,H,dh)
q_rows = q_store.permute(2, 0, 1, 3).reshape(H, B * T, dh)                     # (H,B*T,dh) view
q_head_major = q_rows.contiguous()                                             # (H,B*T,dh)
rows = torch.randn(B * T, D, device=dev, dtype=bf)
grads = torch.randn(B * T, D, device=dev, dtype=bf)


def timed(name, fn, reps=20):
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = sorted({e.name[:60] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})
    print(f"{name:58s} {start.elapsed_time(end) / reps * 1000:8.1f} us  {' | '.join(kernels)}")


def whole():
    return torch.matmul(grad_position.view(H, B * T, P).transpose(1, 2), q_rows)


def split(s, source):
    parts = torch.bmm(grad_position.view(H * s, B * T // s, P).transpose(1, 2), source.reshape(H * s, B * T // s, dh))
    return parts.view(H, s, P, dh).float().sum(1).to(bf)


reference = whole().float()
timed("position keys' gradient, one product (now)", whole)
for s in (2, 4, 8, 16):
    err = ((split(s, q_head_major).float() - reference).abs().max() / reference.abs().max()).item()
    timed(f"  in {s} parts, q head-major (rel. diff {err:.1e})", lambda: split(s, q_head_major))
    timed(f"  in {s} parts, q batch-major (a copy)", lambda: split(s, q_rows))
timed("weight gradient (D,B*T)x(B*T,D)", lambda: grads.t().mm(rows))
timed("weight gradient (2D,B*T)x(B*T,D)", lambda: torch.cat([grads, grads], 1).t().mm(rows))
