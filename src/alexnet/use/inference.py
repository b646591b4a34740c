"""How a trained network runs for inference: the fastest settings that keep its outputs.

``predict``, ``retrieve``, ``eval``, ``serve`` and ``explain``'s class choice all run the network through
``Settings`` chosen here, so a slow path cannot come back in one command unseen (tests/test_inference.py
pins them). Measured on the paper network, batch 64, 2-core AMD EPYC (AVX-512 bf16), torch 2.14:

- **bf16** where the CPU computes it natively (AVX-512 bf16 or AMX; CUDA): 240 against 110 images/s in
  fp32 with everything else the same; the top class is the fp32 one for 99.88% of the demo network's
  10,000 test images (12 differ; probabilities within 0.007). Elsewhere bf16 is emulated and slower: fp32.
- **channels_last** weights and inputs (oneDNN's native layout): 62 against 53 images/s in fp32.
- **the compiled LRN**, one kernel for any batch size (``nn.lrn._compiled(dynamic=True)``): the eager LRN
  takes 90 images/s in bf16 against 240 compiled. Compiling costs about 4 s once per process (the kernel
  is cached on disk; about 15 s the very first time on a machine), so a job of fewer than
  ``COMPILE_FROM`` images x views keeps the eager kernels; ``serve`` compiles at start-up.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass

import torch

from ..errors import UsageError
from ..nn.lrn import compile_available
from ..nn.model import AlexNet

COMPILE_FROM = 512  # images x views: below it the compile time outweighs what it saves (~7 ms an image)
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class Settings:
    """How a network runs: autocast precision, memory layout, and the LRN's kernels (the default: plain
    fp32, as the figures run it)."""

    precision: str = "fp32"  # fp32 | bf16 (autocast)
    channels_last: bool = False
    lrn: str = "eager"  # eager | compiled (one kernel for any batch size)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (not emulated in fp32, which is slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def choose(device: torch.device, work: int | None, precision: str = "auto") -> Settings:
    """The settings for ``work`` images x views on ``device`` (None: a long-lived server, any amount).
    ``precision``: auto (bf16 where native, else fp32), bf16 or fp32 (the user's choice, kept)."""
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        precision = "bf16" if native_bf16(device) else "fp32"
    compiled = compile_available() and (work is None or work >= COMPILE_FROM)
    return Settings(precision, True, "compiled" if compiled else "eager")


def ready(model: torch.nn.Module, device: torch.device, settings: Settings) -> torch.nn.Module:
    """``model`` on ``device`` in eval mode, laid out and with its LRN kernels as ``settings`` say (its
    weights stay float32: ``fast`` casts them)."""
    if hasattr(model, "set_lrn_compiled"):
        model.set_lrn_compiled(settings.lrn == "compiled", dynamic=True)
    layout = torch.channels_last if settings.channels_last else torch.contiguous_format
    return model.to(device, memory_format=layout).eval()


def fast(model: torch.nn.Module, settings: Settings, copy: bool = True) -> torch.nn.Module:
    """The network the forward passes run: under bf16 its weights in bf16 (``copy``: a copy, the float32
    one kept for gradients, as explain's), 1.25x autocast's rate with float32 weights, which casts every
    weight on every call (paper network, batch 64); otherwise ``model`` itself. Run it under autocast:
    it casts the float32 inputs."""
    if settings.precision != "bf16" or not isinstance(model, AlexNet):
        return model
    return (deepcopy(model) if copy else model).to(torch.bfloat16)
