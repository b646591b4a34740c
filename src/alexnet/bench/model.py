"""``alexnet bench model``: the paper's network alone, training steps and inference, against torchvision.

Training-step and inference images/s of the paper's network with this project's settings (the
training loop's own ``TrainStep``: bf16 autocast, channels_last, the compiled LRN, fused SGD with
momentum; plus whole-network torch.compile and, on CUDA, CUDA graphs where they are faster) against
``torchvision.models.alexnet()`` in a plain eager fp32 loop, same batch, threads and process. Each
variant is warmed up first (its compile time reported), then timed for ``steps`` steps per round,
rounds interleaved; rates are medians over rounds, speedups medians of the per-round ratios of the
fastest of our variants to torchvision. The paper's two-device split is timed beside them for
comparison (both towers on one device where only one exists), not as a way to run fast.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics
import time

import torch

from ..config import build_config, read_recipe
from ..nn.lrn import compile_available
from ..nn.model import AlexNet
from ..runtime import autocast, pick_device
from ..train.step import TrainStep
from .common import cpu_name, device_label, log, sync

CROP = 224
SPLIT = "ours_tower_split"  # measured for comparison, never the "best" of our variants


def bench_model(batch: int = 128, steps: int = 10, rounds: int = 3, device: str = "auto",
                compile: bool | None = None, width: float = 1.0, json_out: bool = False,
                onnx: bool | None = None) -> dict:
    """Measure (see the module docstring); print one JSON line (``json_out``) or a short table, return
    the dict. ``compile=None``: also try torch.compile on CUDA, eager only on the CPU. ``onnx`` (default:
    on the CPU): also the network exported to ONNX, float32 and int8, in onnxruntime (``_onnx_variants``)."""
    dev = pick_device(device)
    compile = dev.type == "cuda" if compile is None else compile
    onnx = dev.type == "cpu" if onnx is None else onnx
    config, ours, theirs = _model_pair(width, dev)
    x = torch.randn(batch, 3, CROP, CROP, device=dev)
    y = torch.randint(0, 1000, (batch,), device=dev)
    train_variants = _train_variants(config, ours, theirs, x, y, compile)
    infer_variants = _infer_variants(config, ours, theirs, x, compile)
    if onnx:
        infer_variants.update(_onnx_variants(ours, x))
    compile_s: dict[str, float] = {}
    calls = min(3, steps)  # warm-up calls per variant
    train = _rounds(_warm(train_variants, compile_s, "train", calls), batch, steps, rounds)
    infer = _rounds(_warm(infer_variants, compile_s, "inference", calls), batch, steps, rounds)
    result = _model_summary(train, infer, compile_s, config, batch, steps, rounds, dev, width)
    print(json.dumps(result) if json_out else model_table(result), flush=True)
    return result


def _model_pair(width: float, dev: torch.device):
    """The paper recipe's config, our paper network (channels_last, compiled LRN) and torchvision's alexnet."""
    import torchvision

    config = build_config(read_recipe("paper"), ["model.num_classes=1000", f"model.width={width}"])
    ours = AlexNet(config.model).set_lrn_compiled(config.train.compile_lrn)
    ours = ours.to(dev, memory_format=torch.channels_last)
    return config, ours, torchvision.models.alexnet().to(dev)


def _train_variants(config, ours, theirs, x, y, compile: bool) -> dict:
    """name -> a no-argument training step. Ours run the training loop's ``TrainStep``; torchvision runs
    zero_grad / cross-entropy / backward / step in fp32."""
    from torch.nn import functional as F

    ours_x = x.contiguous(memory_format=torch.channels_last)  # what the pipeline hands the network
    nets = {"eager": ours, **({"compiled": torch.compile(ours)} if compile else {})}
    sgd = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def ours_train(model, net):
        step = TrainStep.build(model, net, config)
        return lambda: (model.train(), step(ours_x, y))

    def theirs_train():
        theirs.train()
        sgd.zero_grad()
        F.cross_entropy(theirs(x), y).backward()
        sgd.step()

    split = _tower_split(ours, x.device)
    return {**{f"ours_{k}": ours_train(ours, net) for k, net in nets.items()}, "torchvision": theirs_train,
            SPLIT: ours_train(split, split)}


def _infer_variants(config, ours, theirs, x, compile: bool) -> dict:
    """name -> a no-argument inference step of each variant."""
    dev, precision = x.device, config.train.precision
    ours_x = x.contiguous(memory_format=torch.channels_last)

    def ours_infer(net):
        def step():
            net.eval()
            with torch.inference_mode(), autocast(dev, precision):
                net(ours_x)
        return step

    def theirs_infer():
        theirs.eval()
        with torch.inference_mode():
            theirs(x)

    variants = {"ours_eager": ours_infer(ours), "torchvision": theirs_infer}
    if compile:
        variants["ours_compiled"] = ours_infer(torch.compile(ours))
    if precision == "bf16":  # inference needs no fp32 master weights: cast them once, not every call
        variants["ours_bf16_weights"] = _bf16_infer(ours, ours_x)
    variants[SPLIT] = ours_infer(_tower_split(ours, dev))
    if compile and dev.type == "cuda":  # CUDA graphs replay the whole forward pass as one launch
        variants["ours_cudagraphs"] = ours_infer(torch.compile(ours, mode="reduce-overhead"))
    return variants


def _tower_split(model: torch.nn.Module, dev: torch.device) -> torch.nn.Module:
    """``model`` with the same weights as the paper's two-device split: on cuda:0 and cuda:1 where
    there are two GPUs, else both towers on ``dev``."""
    first = torch.device("cuda", 0) if dev.type == "cuda" else dev
    second = torch.device("cuda", 1) if dev.type == "cuda" and torch.cuda.device_count() > 1 else first
    split = AlexNet(dataclasses.replace(model.config, tower_devices=f"{first},{second}"))
    split.load_state_dict(model.state_dict())
    compiled = any(getattr(m, "compiled", False) for m in model.modules())
    return split.set_lrn_compiled(compiled).to(memory_format=torch.channels_last)


def _bf16_infer(model: torch.nn.Module, x: torch.Tensor):
    """Inference with a bfloat16 copy of the weights and input, no autocast (which casts every weight
    on every call)."""
    net = copy.deepcopy(model).to(torch.bfloat16).eval()
    xb = x.to(torch.bfloat16)

    def step():
        with torch.inference_mode():
            net(xb)
    return step


def _onnx_variants(model: AlexNet, x: torch.Tensor) -> dict:
    """``onnx`` and ``onnx_int8``: the network as ``alexnet export`` writes it, in an onnxruntime session with
    torch's thread count; int8 as ``--quantize int8`` makes it, calibrated on ``x`` (ranges only matter
    for accuracy, which ``alexnet export`` reports, not for speed)."""
    import shutil
    import tempfile
    from pathlib import Path

    from ..use.export import write_onnx
    from ..use.onnx_model import OnnxModel
    from ..use.quantize import quantize_int8

    folder = Path(tempfile.mkdtemp(prefix="alexnet-bench-"))
    fp32, int8 = folder / "model.onnx", folder / "model-int8.onnx"
    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format).float().cpu().eval()
    write_onnx(plain, fp32, {"preprocessing": None}, folder / "model.onnx.json")
    inputs = x.float().cpu().contiguous().numpy()
    quantize_int8(fp32, int8, inputs[:16], "{}")
    sessions = {name: OnnxModel(path) for name, path in (("onnx", fp32), ("onnx_int8", int8))}
    shutil.rmtree(folder)  # the sessions hold the networks

    def infer(session):
        return lambda: session(x)
    return {name: infer(session) for name, session in sessions.items()}


def _warm(variants: dict, compile_s: dict, kind: str, calls: int = 3) -> dict:
    """Run each variant ``calls`` times (compilation, autotuning, caches); record the seconds of
    compiling variants in ``compile_s``; drop a variant that fails (torch.compile on a machine
    without a compiler, say) with a message: eager always remains."""
    kept = {}
    for name, step in variants.items():
        start = time.perf_counter()
        try:
            for _ in range(calls):
                step()
            sync()
        except Exception as err:  # noqa: BLE001 - a failing compiled variant means "eager only"
            if name in ("ours_eager", "torchvision"):
                raise
            log(f"bench model: {kind} {name} failed ({type(err).__name__}: {str(err)[:200]}); left out")
            continue
        if name.endswith(("compiled", "cudagraphs")):  # eager variants have nothing to compile
            compile_s[f"{kind}_{name.removeprefix('ours_')}"] = round(time.perf_counter() - start, 1)
        kept[name] = step
    return kept


def _rounds(variants: dict, batch: int, steps: int, rounds: int) -> dict[str, list[float]]:
    """Per-round images/s of each variant, interleaved: every round runs each variant ``steps`` times."""
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, step in variants.items():
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                step()
            sync()
            rates[name].append(batch * steps / (time.perf_counter() - start))
        log(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} img/s" for k, v in rates.items()))
    return rates


def _best(rates: dict[str, list[float]]) -> tuple[str, float, float]:
    """Our fastest PyTorch variant by median (the two-device split left out), its median and the median
    per-round ratio to torchvision."""
    name = max((k for k in rates if k.startswith("ours_") and k != SPLIT), key=lambda k: statistics.median(rates[k]))
    ratio = statistics.median(a / b for a, b in zip(rates[name], rates["torchvision"]))
    return name.removeprefix("ours_"), statistics.median(rates[name]), ratio


def _model_summary(train, infer, compile_s, config, batch, steps, rounds, dev, width) -> dict:
    train_best, train_rate, train_ratio = _best(train)
    infer_best, infer_rate, infer_ratio = _best(infer)
    medians = {f"{kind}_{name.removeprefix('ours_')}_images_per_s": round(statistics.median(v), 1)
               for kind, rates in (("train", train), ("inference", infer)) for name, v in rates.items()
               if name != "torchvision" and not name.startswith("onnx")}
    onnx = {f"{name}_inference_images_per_s": round(statistics.median(v), 1) for name, v in infer.items()
            if name.startswith("onnx")}
    ours = infer[f"ours_{infer_best}"]
    onnx.update({f"{name}_speedup_vs_pytorch": round(statistics.median(a / b for a, b in zip(infer[name], ours)), 2)
                 for name in infer if name.startswith("onnx")})
    return {
        "bench": "model", "train_images_per_s": round(train_rate, 1),
        "torchvision_train_images_per_s": round(statistics.median(train["torchvision"]), 1),
        "train_speedup_vs_torchvision": round(train_ratio, 2),
        "inference_images_per_s": round(infer_rate, 1),
        "torchvision_inference_images_per_s": round(statistics.median(infer["torchvision"]), 1),
        "inference_speedup_vs_torchvision": round(infer_ratio, 2),
        "train_variant": train_best, "inference_variant": infer_best, **medians, **onnx, "compile_s": compile_s,
        "batch_size": batch, "steps": steps, "rounds": rounds, "threads": torch.get_num_threads(),
        "precision": config.train.precision, "channels_last": True, "compile": sorted(compile_s),
        "lrn_compiled": config.train.compile_lrn and compile_available(), "width": width,
        "device": device_label(dev), "torch_version": torch.__version__, "cpu": cpu_name(),
    }


def model_table(r: dict) -> str:
    return "\n".join([
        f"model alone, images/s (batch {r['batch_size']}, {r['threads']} threads, {r['device']}, "
        f"median of {r['rounds']}):",
        f"  train      ours ({r['precision']}, {r['train_variant']})  {r['train_images_per_s']:>10.1f}"
        f"   {r['train_speedup_vs_torchvision']:.2f}x torchvision "
        f"({r['torchvision_train_images_per_s']:.1f}, fp32 eager)",
        f"  inference  ours ({r['precision']}, {r['inference_variant']})  {r['inference_images_per_s']:>10.1f}"
        f"   {r['inference_speedup_vs_torchvision']:.2f}x torchvision ({r['torchvision_inference_images_per_s']:.1f})",
        *[f"  inference  {name + ' (onnxruntime)':<24}{r[name + '_inference_images_per_s']:>10.1f}   "
          f"{r[name + '_speedup_vs_pytorch']:.2f}x ours" for name in ("onnx", "onnx_int8")
          if name + "_inference_images_per_s" in r],
        f"  compile seconds: {r['compile_s'] or 'none'}",
    ])
