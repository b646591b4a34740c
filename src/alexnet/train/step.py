"""One training step, and what it is made of: the optimiser, the grad scaler, DDP around the model.

``TrainStep`` holds what a step uses and nothing else, so the training loop and ``alexnet bench``
run the same step: autocast forward, cross-entropy (label smoothing), backward through the scaler
(a no-op unless fp16), the optimiser step. One code path for CPU, one GPU and DDP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..errors import UsageError
from ..runtime import Dist, all_sum, autocast


@dataclass
class TrainStep:
    """Forward, backward and the optimiser step on one augmented batch."""

    net: torch.nn.Module  # what trains: the model, or DDP around it under torchrun
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # enabled for fp16 only
    precision: str = "fp32"  # autocast: fp32 | bf16 | fp16
    label_smoothing: float = 0.0
    skip_nonfinite: bool = False  # train.on_nonfinite = "skip": a step whose loss is not finite is not taken

    @classmethod
    def build(cls, model: torch.nn.Module, net: torch.nn.Module, config) -> TrainStep:
        """The step of run config ``config`` for ``model`` (``net``: it, or DDP around it). A fine-tune
        (``init.path``) trains the layers it took from its init at ``optim.pretrained_lr_scale`` x fc8's rate."""
        device = next(model.parameters()).device
        pretrained = PRETRAINED if config.init.path else ()
        fp16 = config.train.precision == "fp16"
        return cls(net, make_optimizer(model, config.optim, pretrained, fused_ok=not fp16),
                   torch.amp.GradScaler(device.type, enabled=fp16),
                   config.train.precision, config.optim.label_smoothing, config.train.on_nonfinite == "skip")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Train on ``x``, ``y``; returns the loss, the logits and whether the step was taken."""
        with autocast(x.device, self.precision):
            logits = self.net(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        if self.skip_nonfinite and not _all_finite(loss):
            return loss, logits, False
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, logits, True


def _all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every process (all must skip together, or DDP would hang)."""
    bad = 0.0 if torch.isfinite(loss.detach()) else 1.0
    return all_sum([bad], loss.device)[0] == 0  # all_sum is the value itself in a lone process


PRETRAINED = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")  # a fine-tune's layers from its init


def make_optimizer(model: torch.nn.Module, cfg, pretrained: tuple[str, ...] = (),
                   fused_ok: bool = True) -> torch.optim.SGD:
    """SGD with momentum (``cfg`` an ``OptimConfig``); weight decay on weights (and on biases too if
    ``decay_biases``, as the paper). The layers named in ``pretrained`` form groups of their own whose
    ``lr_scale`` is ``cfg.pretrained_lr_scale`` (the loop sets each group's rate to the schedule's x it).
    ``fused_ok`` False (under fp16's grad scaler) keeps the update out of the fused kernel."""
    groups = []
    for taken, scale in ((True, cfg.pretrained_lr_scale), (False, 1.0)):
        params = [(n, p) for n, p in model.named_parameters() if (n.split(".")[0] in pretrained) == taken]
        decay = [p for n, p in params if cfg.decay_biases or not n.endswith("bias")]
        no_decay = [p for n, p in params if not cfg.decay_biases and n.endswith("bias")]
        groups += [{"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": scale},
                   {"params": no_decay, "weight_decay": 0.0, "lr_scale": scale}]
    # fused: one kernel for the whole update (on the paper net 23 ms a step against foreach's 40 ms on a
    # 2-core CPU; the same weights bit for bit over the tested steps); foreach where it is unsupported,
    # and under fp16's grad scaler (``fused_ok`` False): fused SGD hands the scaler's overflow check to its
    # kernel, which on a skipped first step leaves the momentum buffer uninitialised (torch 2.14: weights
    # of 1e35 one step later), so fp16 takes the optimiser the scaler skips itself.
    fused = fused_ok and next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.SGD([g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov, fused=fused, foreach=None if fused else True)


def wrap(model: torch.nn.Module, ddp: Dist, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel under torchrun (gradients averaged over processes), the model itself alone."""
    if ddp.world == 1:
        return model
    if getattr(model, "tower_devices", None):
        raise UsageError("model.tower_devices (the paper's two-device split) runs in one process: every torchrun "
                         "process would put its towers on the same two devices; leave it empty to train with torchrun")
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
