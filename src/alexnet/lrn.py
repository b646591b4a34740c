"""Local response normalisation (paper section 3.3), exact and fast.

The paper's formula, for the activity a at channel i of N channels:

    b_i = a_i / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a_j^2) ** beta

with k=2, n=5, alpha=1e-4, beta=0.75. Convention: like cuda-convnet, Caffe and
PyTorch's ``nn.LocalResponseNorm`` we divide alpha by n, i.e. use ``alpha / n`` as the
coefficient of the window sum. (The paper's text writes plain alpha; the released
cuda-convnet layer and every port since scale it by the window size.)

Why not ``nn.LocalResponseNorm``: on a CPU it is the hot spot of the whole network
(avg_pool3d over a padded copy, autograd through four elementwise ops, no bfloat16).
This version writes the gradient by hand and sums the channel window as a matmul with
a 0/1 band matrix, which runs on the matrix units (AMX/tensor cores) and keeps the
layout channels_last. The elementwise parts are fused by ``torch.compile`` when it is
available; otherwise the same functions run eagerly. Same numbers either way: the
tests check it against the formula to 1e-5.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

import torch
from torch import nn

K, N, ALPHA, BETA = 2.0, 5, 1e-4, 0.75  # the paper's hyper-parameters (section 3.3)


def band_matrix(channels: int, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """B[j, i] = 1 where |i - j| <= size // 2: ``x @ B`` sums each channel's window."""
    i = torch.arange(channels, device=device)
    return ((i[:, None] - i[None, :]).abs() <= size // 2).to(dtype)


def window_sum(t: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """Sum over the channel window of an NCHW tensor, computed in NHWC order."""
    n, c, h, w = t.shape
    rows = t.permute(0, 2, 3, 1).reshape(-1, c)
    return (rows @ band).reshape(n, h, w, c).permute(0, 3, 1, 2)


def _neg_pow(d: torch.Tensor, beta: float) -> torch.Tensor:
    """d ** -beta; the paper's beta = 3/4 as rsqrt(d) * sqrt(rsqrt(d)), much cheaper than pow."""
    if beta == 0.75:
        r = torch.rsqrt(d)
        return r * torch.sqrt(r)
    return d.pow(-beta)


def lrn_forward(z, band, k: float, alpha: float, beta: float, size: int, relu: bool):
    """Returns (output, window sum of squares); the window sum is kept for the backward pass.

    With ``relu`` the input is the pre-activation and ReLU is applied first, in the same pass.
    """
    x = torch.relu(z) if relu else z
    s = window_sum(x * x, band)
    d = k + (alpha / size) * s.float()
    return (x.float() * _neg_pow(d, beta)).to(x.dtype), s


def lrn_backward(z, s, grad, band, k: float, alpha: float, beta: float, size: int, relu: bool):
    """d b_i / d a_j by hand: grad * d^-beta - 2 alpha beta / n * a * window_sum(grad * a * d^(-beta-1))."""
    x = torch.relu(z) if relu else z
    xf, g = x.float(), grad.float()
    d = k + (alpha / size) * s.float()
    d_neg_beta = _neg_pow(d, beta)
    spread = window_sum((g * xf * d_neg_beta / d).to(x.dtype), band)
    grad_x = g * d_neg_beta - (2 * alpha * beta / size) * xf * spread.float()
    if relu:
        grad_x = torch.where(z > 0, grad_x, 0.0)
    return grad_x.to(x.dtype)


EAGER = (lrn_forward, lrn_backward)
# Compiling is on unless ALEXNET_COMPILE=0; it is switched off for the process if it fails once.
_compile = {"on": os.environ.get("ALEXNET_COMPILE", "1") != "0" and hasattr(torch, "compile")}


def compile_kernels(on: bool) -> None:
    """Use the compiled kernels in this process (when torch.compile works here) or the eager ones: the
    same numbers. Training keeps them on (a few fixed shapes, compiled once); inference on batches of
    any size (predict, retrieve, serve) turns them off, since every new shape would compile anew."""
    _compile["on"] = on and hasattr(torch, "compile") and os.environ.get("ALEXNET_COMPILE", "1") != "0"


@functools.cache
def _compiled():
    """The fused kernels; dynamic=False: one specialised kernel per shape (conv1, conv2 x batch sizes)."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" noise
    # Two layers x (training, low-resolution training, evaluation) batch shapes, forward and backward:
    # more than dynamo's default 8 specialisations per function, after which it would run eagerly.
    import torch._dynamo

    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(getattr(dynamo, "recompile_limit", 8), 32)
    return torch.compile(lrn_forward, dynamic=False), torch.compile(lrn_backward, dynamic=False)


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k, alpha, beta, size, relu):
        band = band_matrix(x.shape[1], size, x.dtype, x.device)
        y, s = _run(0, x, band, k, alpha, beta, size, relu)
        ctx.save_for_backward(x, s, band)
        ctx.hyper = (k, alpha, beta, size, relu)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, s, band = ctx.saved_tensors
        grad = grad.contiguous(memory_format=_memory_format(x))
        return _run(1, x, s, grad, band, *ctx.hyper), None, None, None, None, None


def _run(which: int, *args):
    """Call the compiled kernel; if compiling fails on this machine, use the eager one from then on."""
    if _compile["on"]:
        try:
            return _compiled()[which](*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure means "use eager"
            print(f"alexnet: torch.compile failed for LRN ({type(err).__name__}); using eager LRN", file=sys.stderr)
            _compile["on"] = False
    return EAGER[which](*args)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


class LocalResponseNorm(nn.Module):
    """The paper's LRN across channels; same arguments and numbers as ``nn.LocalResponseNorm``."""

    def __init__(self, size: int = N, alpha: float = ALPHA, beta: float = BETA, k: float = K):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """LRN of ``x``; ``relu=True`` means LRN(ReLU(x)) in one fused pass (the paper's order)."""
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # Exporters cannot see inside a custom autograd Function. The ONNX exporter (torch.export
            # based) gets ReLU, then one opaque op that ``export.py`` writes as ONNX's ``LRN`` node
            # (same formula: alpha / size, window size centred); TorchScript gets the standard op.
            x = torch.relu(x) if relu else x
            if torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing():
                return export_op()(x, self.size, self.alpha, self.beta, self.k)
            return nn.functional.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        return _LRNFunction.apply(x, self.k, self.alpha, self.beta, self.size, relu)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha} (divided by size), beta={self.beta}, k={self.k}"


@functools.cache
def export_op():
    """``alexnet::local_response_norm`` (registered on first use): ``nn.functional.local_response_norm``
    as one op that ``torch.export`` keeps whole, so ONNX export can write it as a single ``LRN`` node."""

    @torch.library.custom_op("alexnet::local_response_norm", mutates_args=())
    def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
        return nn.functional.local_response_norm(x, size, alpha, beta, k)

    @local_response_norm.register_fake
    def _(x, size, alpha, beta, k):
        return torch.empty_like(x)

    return local_response_norm
