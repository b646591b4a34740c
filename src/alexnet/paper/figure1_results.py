"""Figure 1's numbers and picture from its curves: epochs to each threshold over the seeds, the
ratio tanh / ReLU and its sensitivity to the threshold, the summary line, the PNG and a table
(``figure1.py`` trains the curves)."""

from __future__ import annotations

import statistics
from pathlib import Path

THRESHOLD = 0.25  # the paper's training error rate target
THRESHOLDS = (0.22, 0.24, 0.25, 0.26, 0.27, 0.30)  # the sensitivity table's thresholds
CHANCE = 0.9  # error of an untrained ten-class net: the curve's point at epoch 0
ACTIVATIONS = ("relu", "tanh")
NAMES = {"relu": "ReLU", "tanh": "tanh"}


def epochs_to_threshold(errors: list[float], threshold: float = THRESHOLD, start: float = CHANCE) -> tuple[float, bool]:
    """Fractional epochs until the training error first reaches ``threshold``, and whether it did.

    ``errors[k]`` is the error of epoch k + 1, placed at x = k + 1; the curve starts at
    (0, ``start``). The crossing is linearly interpolated between the two epoch points around it.
    A curve that never reaches the threshold gives (its last epoch, False): a lower bound.
    """
    points = [start, *errors]
    for k in range(1, len(points)):
        if points[k] <= threshold:
            before, after = points[k - 1], points[k]
            if before <= threshold:  # start already below: reached at once
                return float(k - 1), True
            return k - 1 + (before - threshold) / (before - after), True
    return float(len(errors)), False


def ratio_of(relu: tuple[float, bool], tanh: tuple[float, bool]) -> float | None:
    """tanh epochs / relu epochs; None when relu did not reach the threshold (no bound either way)."""
    if not relu[1] or relu[0] <= 0:
        return None
    return tanh[0] / relu[0]


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _hit(curve: dict, threshold: float) -> tuple[float | None, bool]:
    """Epochs to ``threshold`` and whether the curve got there; (None, False) for a diverged run."""
    return (None, False) if curve.get("diverged") else epochs_to_threshold(curve["train_error"], threshold)


def crossings(curves: dict[str, list[dict]], thresholds=THRESHOLDS) -> list[dict]:
    """One row per threshold: each seed's epochs to it (None: diverged), their mean and std over the
    seeds that did not diverge, whether every seed reached it (if not, the mean is a lower bound),
    and the ratio of the means (None when a ReLU mean is missing or a lower bound), also per seed."""
    rows = []
    for threshold in thresholds:
        row = {"threshold": threshold}
        hits = {a: [_hit(c, threshold) for c in curves[a]] for a in ACTIVATIONS}
        for a in ACTIVATIONS:
            done = [e for e, _ in hits[a] if e is not None]
            mean = statistics.fmean(done) if done else None
            std = statistics.stdev(done) if len(done) > 1 else 0.0
            row |= {a: [_rounded(e, 3) for e, _ in hits[a]], f"{a}_mean": _rounded(mean, 3), f"{a}_std": round(std, 3),
                    f"{a}_reached": all(r for _, r in hits[a])}
        pairs = [(r, t) for r, t in zip(hits["relu"], hits["tanh"])]
        per_seed = [None if r[0] is None or t[0] is None else ratio_of(r, t) for r, t in pairs]
        ratio = None if row["relu_mean"] is None or row["tanh_mean"] is None else ratio_of(
            (row["relu_mean"], row["relu_reached"]), (row["tanh_mean"], row["tanh_reached"]))
        rows.append({**row, "ratio": _rounded(ratio, 2), "ratio_lower_bound": not row["tanh_reached"],
                     "ratio_per_seed": [_rounded(x, 2) for x in per_seed],
                     "ratio_per_seed_lower_bound": [not t[1] for _, t in pairs]})
    return rows


def summary_of(curves: dict, table: list[dict], setup: str, wall: float, paths: dict[str, Path]) -> dict:
    """The command's JSON line: epochs to 25% of each activation (mean over seeds) and their ratio."""
    row = next(r for r in table if r["threshold"] == THRESHOLD)
    return {"relu_epochs_to_25pct": row["relu_mean"], "tanh_epochs_to_25pct": row["tanh_mean"],
            "relu_std": row["relu_std"], "tanh_std": row["tanh_std"], "ratio": row["ratio"],
            "ratio_per_seed": row["ratio_per_seed"], "relu_per_seed": row["relu"], "tanh_per_seed": row["tanh"],
            "relu_lower_bound": not row["relu_reached"], "tanh_lower_bound": not row["tanh_reached"],
            "epochs_to_25pct": "mean over seeds of fractional epochs, linear interpolation between epoch points",
            "relu_lr": curves["relu"][0]["lr"], "tanh_lr": curves["tanh"][0]["lr"],
            "seeds": [c["seed"] for c in curves["relu"]], "epochs": max(len(c["train_error"]) for c in curves["relu"]),
            "setup": setup, "minutes": round(wall / 60, 2), **{k: str(v) for k, v in paths.items()}}


def _cell(row: dict, a: str) -> str:
    if row[f"{a}_mean"] is None:
        return "diverged"
    bound = "" if row[f"{a}_reached"] else ">"
    return f"{bound}{row[f'{a}_mean']:.1f} ± {row[f'{a}_std']:.1f}"


def _ratio(row: dict) -> str:
    if row["ratio"] is None:
        return "-"
    return f"{'>' if row['ratio_lower_bound'] else ''}{row['ratio']:.2f}"


def table_markdown(table: list[dict], curves: dict) -> str:
    """The threshold table as markdown ('>': some seed never got there, a lower bound)."""
    seeds = ", ".join(str(c["seed"]) for c in curves["relu"])
    lines = [f"Epochs to each training-error threshold, mean ± std over seeds {seeds} "
             "('>': a seed never reached it, so a lower bound); ratio = mean tanh / mean ReLU.", "",
             "| threshold | ReLU epochs | tanh epochs | ratio tanh/ReLU | ratio per seed |", "|---|---|---|---|---|"]
    for row in table:
        per_seed = ", ".join("-" if x is None else f"{'>' if bound else ''}{x:.2f}"
                             for x, bound in zip(row["ratio_per_seed"], row["ratio_per_seed_lower_bound"]))
        mark = " (the paper's)" if row["threshold"] == THRESHOLD else ""
        lines.append(f"| {row['threshold']:.0%}{mark} | {_cell(row, 'relu')} | {_cell(row, 'tanh')} | {_ratio(row)} "
                     f"| {per_seed} |")
    return "\n".join(lines) + "\n"


def plot(curves: dict, table: list[dict], path: Path, setup: str = "paper") -> None:
    """The paper's Figure 1 style: training error rate against epochs, ReLU solid, tanh dashed; the
    mean over seeds as the line, the seeds' range shaded, the 25% line; the threshold table beside."""
    from .plotting import pyplot

    plt = pyplot()
    fig, (ax, side) = plt.subplots(1, 2, figsize=(9, 4), dpi=120, gridspec_kw={"width_ratios": [3, 2]})
    row25 = next(r for r in table if r["threshold"] == THRESHOLD)
    for a, line in (("relu", "-"), ("tanh", "--")):
        n = max(len(c["train_error"]) for c in curves[a])  # a diverged seed's curve stops early
        by_epoch = [[c["train_error"][k] for c in curves[a] if k < len(c["train_error"])] for k in range(n)]
        epochs = range(1, n + 1)
        mean = [statistics.fmean(v) for v in by_epoch]
        ax.fill_between(epochs, [min(v) for v in by_epoch], [max(v) for v in by_epoch], color="grey", alpha=0.3, lw=0)
        ax.plot(epochs, mean, line, color="black", lw=1.4,
                label=f"{NAMES[a]} (lr {curves[a][0]['lr']:g}): 25% at {_cell(row25, a)} epochs")
    ax.axhline(THRESHOLD, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("Epochs")
    ax.set_ylabel("Training error rate")
    top = max(max(c["train_error"], default=0) for cs in curves.values() for c in cs)
    ax.set_ylim(0, 0.75 if top < 0.7 else min(1.0, top + 0.05))  # the paper's 0-0.75 when the curves fit
    ax.set_xlim(0, max(len(c["train_error"]) for cs in curves.values() for c in cs) + 1)
    ax.set_title(f"Four-layer CNN on CIFAR-10, {len(curves['relu'])} seeds ({setup} setup)", fontsize=10)
    ax.legend(frameon=False, fontsize=7, loc="upper right")
    side.axis("off")
    cells = [[f"{r['threshold']:.0%}", _cell(r, "relu"), _cell(r, "tanh"), _ratio(r)] for r in table]
    shown = side.table(cellText=cells, colLabels=["error", "ReLU ep.", "tanh ep.", "tanh/ReLU"], loc="center")
    shown.auto_set_font_size(False)
    shown.set_fontsize(8)
    shown.scale(1, 1.4)
    side.set_title("epochs to each threshold (mean ± std)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
