"""Stopping a run cleanly: SIGTERM/SIGINT, agreement across processes, and a test fault.

A cluster preempts a job with SIGTERM (Slurm, Kubernetes, torchrun passing it on) and a user
presses Ctrl-C (SIGINT). Either one asks the run to finish its current step, write a
checkpoint and exit 0; a second SIGINT interrupts at once. Under torchrun every process must
stop at the same step, so the processes agree on it (``agreed``) at fixed steps.

``ALEXNET_FAULT_AT_STEP=N[:RANK]`` kills this process with SIGKILL right after step N (and
after any checkpoint of that step) in the first attempt of a run (torchrun's restart count 0):
the tests use it for a real ``kill -9`` at a known place. The variable is read once, when the
run starts (``fault_step``).
"""

from __future__ import annotations

import os
import signal
import threading

import torch
import torch.distributed as dist

from ..runtime import Dist


class StopRequest:
    """Context manager: while active, SIGTERM and SIGINT set ``signal`` instead of killing. ``stopped``
    is the signal that ended the run on any process (set when the processes agreed to stop), and
    ``fault_at`` the step ``ALEXNET_FAULT_AT_STEP`` names for this process (read once, here)."""

    def __init__(self, ddp: Dist = Dist()):
        self.ddp = ddp
        self.signal: str | None = None
        self.stopped: str | None = None
        self.fault_at = fault_step(ddp.rank)
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agree(self, first_bad_step: int, device: torch.device) -> int:
        """With every process (a collective under torchrun): whether any was asked to stop (then
        ``stopped`` names the signal) and the earliest step any saw a non-finite loss at (0: none)."""
        stop, bad = agreed(self.signal is not None, first_bad_step, self.ddp.world, device)
        if stop:
            self.stopped = self.signal or "a signal to another process"
        return bad

    def fault(self, step: int) -> None:
        """SIGKILL this process after ``step`` when ``ALEXNET_FAULT_AT_STEP`` names it (tests)."""
        fault_injection(step, self.fault_at)

    def _handle(self, signum, frame) -> None:
        if self.signal == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signal = signal.Signals(signum).name
        self.ddp.log(f"{self.signal} received: finishing this step, writing a checkpoint, then exiting "
                     "(Ctrl-C again to interrupt at once)")


def agreed(stop: bool, first_bad_step: int, world: int, device: torch.device) -> tuple[bool, int]:
    """Whether any process was asked to stop, and the earliest step any process saw a non-finite
    loss at (0: none). A collective under torchrun: every process calls it at the same steps."""
    if world == 1:
        return stop, first_bad_step
    big = 2**62
    t = torch.tensor([-int(stop), first_bad_step or big], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t[0] < 0), int(t[1]) if t[1] < big else 0


def fault_step(rank: int) -> int | None:
    """The step after which ``ALEXNET_FAULT_AT_STEP`` asks to kill this process (see above), or None."""
    spec = os.environ.get("ALEXNET_FAULT_AT_STEP")
    if not spec or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return None
    at, _, who = spec.partition(":")
    return int(at) if not who or int(who) == rank else None


def fault_injection(step: int, at: int | None) -> None:
    """SIGKILL this process if ``step`` is the step ``fault_step`` named."""
    if step == at:
        os.kill(os.getpid(), signal.SIGKILL)
