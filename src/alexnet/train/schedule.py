"""Learning-rate schedules: the paper's divide-by-10-on-plateau, steps, one-cycle and cosine."""

from __future__ import annotations

import math

from ..config import OptimConfig


class Schedule:
    """The learning rate for every optimiser step; ``end_epoch`` feeds the plateau rule."""

    def __init__(self, cfg: OptimConfig, steps_per_epoch: int):
        # cfg.schedule is one of config.SCHEDULES: OptimConfig refuses any other
        self.cfg, self.steps_per_epoch = cfg, steps_per_epoch
        self.factor = 1.0  # plateau: 0.1 ** drops
        self.drops = 0
        self.best = math.inf
        self.epochs_since_best = 0

    def lr(self, step: int) -> float:
        cfg, per_epoch = self.cfg, self.steps_per_epoch
        warmup = cfg.warmup_epochs * per_epoch
        if step < warmup:
            return cfg.lr * (step + 1) / warmup
        if cfg.schedule == "plateau":
            return cfg.lr * self.factor
        if cfg.schedule == "step":
            return cfg.lr * 0.1 ** (step // max(1, cfg.step_epochs * per_epoch))
        progress = min(1.0, (step - warmup) / max(1.0, cfg.epochs * per_epoch - warmup))
        end = cfg.final_lr_fraction
        if cfg.schedule == "onecycle":  # linear ramp up (the warm-up), then linear down
            return cfg.lr * (1 - (1 - end) * progress)
        return cfg.lr * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress)))

    def end_epoch(self, val_top1_err: float) -> bool:
        """Section 5: divide the rate by 10 when validation error stops improving. True if it dropped."""
        if val_top1_err < self.best:
            self.best, self.epochs_since_best = val_top1_err, 0
            return False
        self.epochs_since_best += 1
        stalled = self.epochs_since_best >= self.cfg.plateau_patience
        if self.cfg.schedule == "plateau" and stalled and self.drops < self.cfg.plateau_max_drops:
            self.drops, self.factor, self.epochs_since_best = self.drops + 1, self.factor * 0.1, 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"factor": self.factor, "drops": self.drops, "best": self.best,
                "epochs_since_best": self.epochs_since_best}

    def load_state_dict(self, state: dict) -> None:
        self.factor, self.drops = state["factor"], state["drops"]
        self.best, self.epochs_since_best = state["best"], state["epochs_since_best"]
