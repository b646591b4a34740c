"""Local response normalisation (paper section 3.3), exact and fast.

The paper's formula, for the activity a at channel i of N channels:

    b_i = a_i / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a_j^2) ** beta

with k=2, n=5, alpha=1e-4, beta=0.75. Convention: like cuda-convnet, Caffe and
PyTorch's ``nn.LocalResponseNorm`` we divide alpha by n, i.e. use ``alpha / n`` as the
coefficient of the window sum. (The paper's text writes plain alpha; the released
cuda-convnet layer and every port since scale it by the window size.)

Why not ``nn.LocalResponseNorm``: on a CPU it is the hot spot of the whole network
(avg_pool3d over a padded copy, autograd through four elementwise ops, no bfloat16).
This version writes the gradient by hand, sums and divides in fp32 whatever the input's dtype, keeps
the layout channels_last, and sums each channel window as shifted slices of a zero-padded
copy (two passes each way, see ``squares``). The passes are fused by ``torch.compile`` when
the layer is ``compiled`` (training, and inference at fixed batch sizes); otherwise the same functions
run eagerly. Same numbers either way: the tests check both against the formula to 1e-5. A window sum
as a matmul with a 0/1 band matrix ran forward and backward 1.35-2.4x slower at the paper's shapes on
a 2-core CPU (docs/performance.md).
"""

from __future__ import annotations

import functools
import os
import sys

import torch
from torch import nn
from torch.nn import functional as F

K, N, ALPHA, BETA = 2.0, 5, 1e-4, 0.75  # the paper's hyper-parameters (section 3.3)


def padded(t: torch.Tensor, size: int) -> torch.Tensor:
    """``t`` with ``size // 2`` zero channels before and after, so every channel has a full window."""
    return F.pad(t, (0, 0, 0, 0, size // 2, size // 2))


def window_sum(p: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Sum over each channel's window of a ``padded`` tensor: ``size`` shifted slices, no masks."""
    out = p[:, 0:channels]
    for shift in range(1, size):
        out = out + p[:, shift:shift + channels]
    return out


def _neg_pow(d: torch.Tensor, beta: float) -> torch.Tensor:
    """d ** -beta; the paper's beta = 3/4 as rsqrt(d) * sqrt(rsqrt(d)), much cheaper than pow."""
    if beta == 0.75:
        r = torch.rsqrt(d)
        return r * torch.sqrt(r)
    return d.pow(-beta)


# The four kernels. Forward and backward each run as two passes: the first writes a padded tensor
# (the squares; in backward, what the window spreads back), the second sums its windows as plain
# shifted loads and does the rest. One fused pass with the padding inside it (masked loads at the
# ends of the channel axis) is what inductor makes of a single function, and on a CPU that did not
# vectorise along the channels: in inference at the paper's two shapes the two passes took 10 and
# 6 ms where the single pass took 24 and 21 ms. The padded tensor is bf16 for bf16 input (training),
# fp32 for any other, and the sums and powers are fp32: once the padded tensor outgrows the last-level cache,
# its memory traffic is the kernel's cost. Measured on a 2-core AMD EPYC (32 MB L3), forward (and
# forward + backward) in ms, fp32 -> bf16 padded tensor: paper LRN2 batch 64: 23-27 -> 7-12
# (52-57 -> 21-34); CIFAR LRN1 at 32x32, batch 128: 17.3 -> 5.0; at 28x28: 4.3 -> 4.4 (13.8 -> 13.9).
# The squares of bf16 activities rounded to bf16 change the window sum by at most 2^-9 of itself.
def _kept_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the padded tensors and the saved window sum are kept in for input of ``dtype``: bf16
    for bf16 (fp32's range in half the bytes), else fp32 (fp16's squares overflow above 256)."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def squares(z, size: int, relu: bool):
    """Forward pass 1: the padded squares of the activity (ReLU first with ``relu``)."""
    x = (torch.relu(z) if relu else z).to(_kept_dtype(z.dtype))
    return padded(x * x, size)


def lrn_forward(z, sq, k: float, alpha: float, beta: float, size: int, relu: bool, keep_sum: bool = True):
    """Forward pass 2: returns (output, window sum of squares); the sum is kept for the backward pass,
    and not written at all without ``keep_sum`` (no backward pass will come).

    With ``relu`` the input is the pre-activation and ReLU is applied first, in the same pass.
    """
    x = torch.relu(z) if relu else z
    s = window_sum(sq.float(), z.shape[1], size)
    d = k + (alpha / size) * s
    return (x.float() * _neg_pow(d, beta)).to(x.dtype), (s.to(_kept_dtype(x.dtype)) if keep_sum else None)


def spread_terms(z, s, grad, k: float, alpha: float, beta: float, size: int, relu: bool):
    """Backward pass 1: grad * a * d^(-beta-1), padded; each channel's window spreads it back."""
    x = torch.relu(z) if relu else z
    d = k + (alpha / size) * s.float()
    return padded((grad.float() * x.float() * _neg_pow(d, beta) / d).to(_kept_dtype(x.dtype)), size)


def lrn_backward(z, s, grad, spread, k: float, alpha: float, beta: float, size: int, relu: bool):
    """Backward pass 2, d b_i / d a_j by hand: grad * d^-beta - 2 alpha beta / n * a * window_sum(spread)."""
    x = torch.relu(z) if relu else z
    d = k + (alpha / size) * s.float()
    back = window_sum(spread.float(), z.shape[1], size)
    grad_x = grad.float() * _neg_pow(d, beta) - (2 * alpha * beta / size) * x.float() * back
    if relu:
        grad_x = torch.where(z > 0, grad_x, 0.0)
    return grad_x.to(x.dtype)


EAGER = (squares, lrn_forward, spread_terms, lrn_backward)
RECOMPILE_LIMIT = 32  # specialisations per kernel: two layers x training, low-resolution and evaluation shapes,
# forward and backward are more than dynamo's default 8, after which it would run the kernel eagerly


def compile_available() -> bool:
    """Whether compiled kernels may be used here: torch.compile exists and ``ALEXNET_COMPILE=0`` (an
    environment's way to keep every LRN eager, e.g. in the tests) is not set."""
    return hasattr(torch, "compile") and os.environ.get("ALEXNET_COMPILE", "1") != "0"


@functools.cache
def _compiled(dynamic: bool = False):
    """The fused kernels. dynamic=False: one specialised kernel per shape (conv1, conv2 x batch sizes), as
    training wants; dynamic=True: one kernel for any batch size (inference, whose batches are ragged),
    as fast at the paper's shapes (bf16, batch 37 and 64: 235 and 229 images/s against 222 and 192
    specialised, 2-core EPYC) and compiled once, where a specialised one costs seconds per new size."""
    return tuple(torch.compile(kernel, dynamic=dynamic) for kernel in EAGER)


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lrn):
        y, s = lrn.passes(x, keep_sum=True)
        ctx.save_for_backward(x, s)
        ctx.lrn = lrn
        return y

    @staticmethod
    def backward(ctx, grad):
        x, s = ctx.saved_tensors
        lrn = ctx.lrn
        grad = _like(grad, x)
        spread = lrn.kernel(2, x, s, grad, *lrn.hyper)
        return lrn.kernel(3, x, s, grad, _like(spread, x), *lrn.hyper), None


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` in ``x``'s memory layout, so that the shifted slices of pass 2 run along contiguous channels."""
    return t.contiguous(memory_format=_memory_format(x))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


class LocalResponseNorm(nn.Module):
    """The paper's LRN across channels; same arguments and numbers as ``nn.LocalResponseNorm``.

    ``compiled``: run the kernels compiled by torch.compile (a few fixed shapes: training, or any batch size
    with ``dynamic``: inference) or eagerly (any shape; no compiling). Same numbers either way. A compiler
    that fails on this machine turns it off for this layer, with one line on stderr.
    """

    def __init__(self, size: int = N, alpha: float = ALPHA, beta: float = BETA, k: float = K, relu: bool = False,
                 compiled: bool = False, dynamic: bool = False):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.relu = relu  # LRN(ReLU(x)) in one fused pass (the paper's order), else LRN(x)
        self.compiled = compiled
        self.dynamic = dynamic  # compiled for any batch size (see ``_compiled``)

    @property
    def hyper(self) -> tuple:
        return self.k, self.alpha, self.beta, self.size, self.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # Exporters cannot see inside a custom autograd Function. The ONNX exporter (torch.export
            # based) gets ReLU, then the same formula in plain ops (``lrn_by_band``: alpha / size, window
            # centred); TorchScript gets the standard op.
            x = torch.relu(x) if self.relu else x
            if torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing():
                return lrn_by_band(x, self.size, self.alpha, self.beta, self.k)
            return nn.functional.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        if not (torch.is_grad_enabled() and x.requires_grad):  # inference, or a frozen layer below
            return self.passes(x, keep_sum=False)[0]
        return _LRNFunction.apply(x, self)

    def passes(self, x: torch.Tensor, keep_sum: bool):
        """Both forward passes: (output, window sum or None)."""
        sq = _like(self.kernel(0, x, self.size, self.relu), x)
        return self.kernel(1, x, sq, *self.hyper, keep_sum)

    def kernel(self, which: int, *args):
        """Kernel ``which`` of ``EAGER``, compiled when this layer is (see the class docstring)."""
        if torch.compiler.is_compiling():  # inside a whole-network torch.compile: it traces the eager kernel
            return EAGER[which](*args)
        if self.compiled and compile_available():
            try:
                from torch._dynamo import config as dynamo_config

                with dynamo_config.patch(recompile_limit=RECOMPILE_LIMIT):
                    return _compiled(self.dynamic)[which](*args)
            except Exception as err:  # noqa: BLE001 - any compiler failure means "use eager"
                print(f"alexnet: torch.compile failed for LRN ({type(err).__name__}); using eager LRN",
                      file=sys.stderr)
                self.compiled = False
        return EAGER[which](*args)

    def extra_repr(self) -> str:
        return (f"size={self.size}, alpha={self.alpha} (divided by size), beta={self.beta}, k={self.k}, "
                f"relu={self.relu}, compiled={self.compiled}, dynamic={self.dynamic}")


def lrn_by_band(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """The LRN in ops every runtime runs fast, for ONNX export: the window sum of squares as a 1x1
    convolution with a 0/1 band matrix (channel j counts for channel i where |i - j| <= size // 2, zero
    beyond the edges: ONNX's and cuda-convnet's centred window), then x / (k + alpha / size * sum) ** beta.
    onnxruntime's own ``LRN`` kernel took 13 ms an image at the paper's shapes, 59% of the int8
    network's time (2-core EPYC); this runs as one GEMM and three elementwise passes."""
    channels = int(x.shape[1])
    band = torch.tensor([[[[float(abs(i - j) <= size // 2)]] for j in range(channels)] for i in range(channels)],
                        dtype=x.dtype, device=x.device)  # (C, C, 1, 1) built from numbers: a constant in the file
    window = F.conv2d(x * x, band)
    return x * torch.exp(torch.log(k + (alpha / size) * window) * -beta)  # onnxruntime's Pow: 2.4x Exp + Log

