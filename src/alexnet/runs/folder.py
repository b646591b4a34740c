"""The run folder: every file of a training run, named in one place.

``RUN_DIR`` (``alexnet train --out``) holds::

    config.toml           the resolved config (written when the run starts)
    metrics.jsonl         one JSON object per epoch (``append_metrics``; read by ``metrics``)
    events.out.tfevents.* TensorBoard scalars of the same rows (``tensorboard``)
    checkpoints/          step-<step>.pt files, last.pt and best.pt (hard links to them), ``Checkpoints``
    summary.json          the final numbers (written when the run ends)
    figures/              what ``alexnet figures`` draws for the run's checkpoint
    report.html, report.md, report_curves.png   what ``alexnet report`` writes

Train writes it; report, figures, ablate, serve and eval read it through ``RunFolder``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import UsageError
from ..files import atomic_link
from .checkpoint import save_checkpoint

STEP_FILE = re.compile(r"step-(\d+)\.pt")


class RunFolder:
    """A run's folder and the names of its files (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.toml"
        self.metrics_file = self.path / "metrics.jsonl"
        self.summary_file = self.path / "summary.json"
        self.features = self.path / "features.safetensors"  # a probe's cached rows (train.probe)
        self.checkpoints = self.path / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.best = self.checkpoints / "best.pt"
        self.figures = self.path / "figures"
        self.writer = None  # TensorBoard, while a run writes its metrics (open_tensorboard)

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunFolder | None:
        """The run folder a checkpoint lies in (``RUN_DIR/checkpoints/X.pt``), or None for a file elsewhere."""
        parent = Path(checkpoint).parent
        return cls(parent.parent) if parent.name == "checkpoints" else None

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def holds_run(self) -> bool:
        """Whether a run has written a checkpoint here."""
        return self.last.is_file()

    def start(self, config_toml: str, resume: bool, write: bool = True) -> None:
        """Make the folder ready for a run with this config: refused if it holds another run and this is
        not a resume, or holds none and this is one; then (``write``: the one process that writes)
        ``config.toml`` is (re)written."""
        if resume and not self.holds_run():
            raise UsageError(f"--resume: no checkpoint at {self.last}; start without --resume")
        if not resume and self.last.exists():
            raise UsageError(f"run folder {self.path} already holds a run; pass --resume to continue it or choose "
                             "another --out")
        if write:
            if not resume:  # left by a run that stopped before its first checkpoint: not this run's
                self.metrics_file.unlink(missing_ok=True)
                self.features.unlink(missing_ok=True)
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            self.config.write_text(config_toml)

    def config_text(self) -> str | None:
        return self.config.read_text(encoding="utf-8") if self.config.is_file() else None

    # ------------------------------------------------------------------ metrics.jsonl

    def append_metrics(self, row: dict) -> None:
        """One epoch's row, to metrics.jsonl and, while open, to TensorBoard."""
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and value is not None:
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def metrics(self, in_progress: bool = False) -> list[dict]:
        """The rows of metrics.jsonl, one per epoch; a line that is not a row is refused in one line, except
        the cut-off last line of a run still writing it (``in_progress``)."""
        try:
            lines = self.metrics_file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise UsageError(f"{self.metrics_file}: not UTF-8 text; each line must be one epoch's metrics as JSON, "
                             "as `alexnet train` writes them") from None
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            row = _row(line)
            if row is None:
                if in_progress and number == len(lines):  # being written right now
                    break
                raise UsageError(f"{self.metrics_file}:{number}: not a JSON object with an 'epoch' key; each line "
                                 "must be one epoch's metrics, as `alexnet train` writes them")
            rows.append(row)
        return rows

    def trim_metrics(self, epochs: int) -> None:
        """Drop the rows of epochs after ``epochs`` and any line cut short (a run killed between a row and
        its checkpoint, or while writing the row), so a resumed run appends after its checkpoint's epoch."""
        if not self.metrics_file.is_file():
            return
        lines = [line for line in self.metrics_file.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if (row := _row(line)) is not None and row["epoch"] <= epochs]
        if len(kept) != len(lines):
            self.metrics_file.write_text("".join(line + "\n" for line in kept))

    # ------------------------------------------------------------------ summary.json

    def write_summary(self, summary: dict) -> None:
        self.summary_file.write_text(json.dumps(summary, indent=2) + "\n")

    def summary(self) -> dict | None:
        """summary.json, or None while the run has not finished; a damaged file is refused in one line."""
        if not self.summary_file.is_file():
            return None
        try:
            blob = json.loads(self.summary_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"{self.summary_file}: not valid JSON ({err}); repair it, or delete it to treat the "
                             "run as unfinished") from None
        if not isinstance(blob, dict):
            raise UsageError(f"{self.summary_file}: expected a JSON object, found {type(blob).__name__}")
        return blob

    def finished(self) -> bool:
        """Whether summary.json is whole and the run was not stopped early (a kill can cut it short)."""
        try:
            return json.loads(self.summary_file.read_text()).get("stopped") is None
        except (OSError, ValueError, AttributeError):
            return False

    def open_tensorboard(self) -> None:
        """Write the metrics rows to TensorBoard event files in the folder too (``tensorboard --logdir``)."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.path))

    def close_tensorboard(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def checkpoint_files(self, keep: int) -> Checkpoints:
        return Checkpoints(self.checkpoints, keep)


def _row(line: str) -> dict | None:
    """One metrics line as a dict with an ``epoch``, or None when it is not one."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and "epoch" in row else None


class Checkpoints:
    """The run's checkpoint folder: step files, ``last.pt`` and ``best.pt`` links, pruning.

    Every save writes ``step-<step>.pt`` (temp file, fsync, rename); ``last.pt`` and ``best.pt`` are
    hard links to step files, so they cost no second write or disk space. The newest ``keep`` step
    files are kept. A failed write (disk full, no permission) leaves the previous ``last.pt`` in
    place and stops the run with one line.
    """

    def __init__(self, folder: Path, keep: int):
        self.folder, self.keep = folder, keep  # keep >= 1: TrainConfig checks it

    def sweep(self) -> None:
        """Remove temp files a killed run left behind (its last complete checkpoint stays)."""
        for tmp in self.folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    def save(self, model, config: dict, state: dict, step: int, best: bool) -> Path:
        """Write step ``step``'s checkpoint, point ``last.pt`` (and ``best.pt``) at it, prune old ones."""
        path = self.folder / f"step-{step:09d}.pt"
        try:
            save_checkpoint(path, model, config, **state)
            atomic_link(path, self.last)
            if best:
                atomic_link(path, self.folder / "best.pt")
        except OSError as err:
            kept = f"the previous checkpoint {self.last} is kept" if self.last.exists() else "no checkpoint exists yet"
            raise UsageError(f"could not write checkpoint {path} ({err.strerror or err}); {kept}: free disk space "
                             "or fix the folder's permissions, then continue with --resume") from None
        self._prune()
        return path

    def _prune(self) -> None:
        steps = sorted(p for p in self.folder.iterdir() if STEP_FILE.fullmatch(p.name))
        for old in steps[:-self.keep]:
            old.unlink(missing_ok=True)  # last.pt / best.pt are links of their own: they stay
