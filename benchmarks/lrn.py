"""LRN speed: our fused LocalResponseNorm against torch.nn.LocalResponseNorm, in the same run.

Forward + backward, channels_last, at conv1's size in the paper (64x96x55x55) and at the
CIFAR model's conv1 size (256x64x32x32). nn.LocalResponseNorm has no bfloat16 kernel on the
CPU, so the reference always runs in float32. Prints one JSON line with the speed-ups.

    .venv/bin/python benchmarks/lrn.py [--threads 2] [--reps 5] [--batch 1.0]

--batch scales both batches (default 1.0: 64 and 256 images; 0.05 gives 3 and 13, a quick
smoke run whose times say little).
"""

import argparse
import json
import time

import torch

from alexnet.nn.lrn import LocalResponseNorm
from alexnet.runtime import keep_freed_memory


def time_fwd_bwd(module, x, reps):
    grad = torch.ones_like(x)
    for _ in range(2):  # warm-up (and compile)
        module(x.detach().requires_grad_()).backward(grad)
    started = time.perf_counter()
    for _ in range(reps):
        module(x.detach().requires_grad_()).backward(grad)
    return (time.perf_counter() - started) / reps * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=float, default=1.0,
                        help="scale both batch sizes by this (default 1.0: the paper's 64, the CIFAR model's 256)")
    args = parser.parse_args()
    keep_freed_memory()  # as the alexnet command does
    torch.set_num_threads(args.threads)
    reference, ours = torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0), LocalResponseNorm(compiled=True)
    result = {"threads": args.threads, "batch_scale": args.batch}
    for name, (batch, *rest) in (("paper_conv1", (64, 96, 55, 55)), ("cifar_conv1", (256, 64, 32, 32))):
        shape = (max(1, round(batch * args.batch)), *rest)
        x = (torch.relu(torch.randn(shape)) * 3).contiguous(memory_format=torch.channels_last)
        ref_ms = time_fwd_bwd(reference, x, args.reps)
        fp32_ms = time_fwd_bwd(ours, x, args.reps)
        bf16_ms = time_fwd_bwd(ours, x.bfloat16(), args.reps)
        result[name] = {"shape": list(shape), "torch_ms": round(ref_ms, 1), "ours_fp32_ms": round(fp32_ms, 1),
                        "ours_bf16_ms": round(bf16_ms, 1),
                        "speedup_fp32": round(ref_ms / fp32_ms, 2), "speedup_bf16": round(ref_ms / bf16_ms, 2)}
        print(name, result[name], flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
