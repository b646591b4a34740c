"""Ablations: re-measure the paper's design claims on CIFAR-10, one switch at a time, over seeds.

Every arm is the recipe (default ``cifar10``) with one change, trained with the same budget and
the same seeds; ``--study all`` trains one shared baseline per seed and every other arm. The
paper's claims (section 3.2-4.2) as changes in validation error, arm minus baseline:

    lrn      model.lrn=false                 LRN reduces top-1/top-5 error by 1.4/1.2 points
    pooling  model.overlap_pool=false        overlapping 3/2 pooling: -0.4/-0.3 points vs 2/2
    dropout  model.dropout=0.0               without dropout: substantial overfitting (no number)
    augment  data.crop_padding=0 data.flip=false   without crops and flips: substantial overfitting
    pca      data.pca_std=0.1                PCA lighting reduces top-1 error by over 1 point
    pca_fb   data.pca_std=0.1 data.pca_scale=fb   the same, with fb.resnet.torch's smaller shift
    towers   model.towers=false model.one_gpu=true   two towers: -1.7/-1.2 points vs the one-GPU net

The ``towers`` arm is the paper's one-GPU net (section 3.2, ``model.one_gpu``): "half as many
kernels in each convolutional layer trained on one GPU", except that, as its footnote says, the
last convolutional layer and the fully-connected layers keep their full size so that both nets
have about the same number of parameters (cifar10 recipe: 4.70 M against the baseline's 5.13 M;
the paper's network: 59.8 M against 61.0 M). The parameter counts are recorded in ablation.json.

Verdicts compare top-1 error. ``delta`` = mean(arm) - mean(baseline) in points; ``noise`` =
the pooled seed-to-seed standard deviation sqrt((s_arm^2 + s_base^2) / 2) (sample std over
seeds). |delta| <= noise: "within noise"; otherwise "agrees" when the sign is the paper's and
"disagrees" when it is not. Nothing is tuned per arm: the same recipe, budget and seeds.

Two documented regimes (``--regime``); both switch off the recipe's speed-ups that change what
is learned (frozen layers, the 3x3 conv2, the low-resolution phase: every arm trains the paper's
5x5 conv2 on padded 32x32 crops and flips unless it changes them), so each arm differs from the
baseline in its switch alone:

    short    dropout 0.25, the recipe's budget or --epochs/--limit (docs/ablation.md: 4 epochs on
             25,000 images): the claims about architecture (LRN, pooling, towers) at a budget
             where the net underfits. This is the demo recipe as it stood when that table was
             measured, so the table is reproducible.
    overfit  the regime the regularisation claims (dropout 4.2, crops/flips and PCA 4.1) are
             about: a 5,000-image class-balanced training subset trained 30 epochs, validated on
             all 10,000 test images, with the paper's dropout 0.5. There the baseline's training
             error falls well below its test error (docs/ablation-overfit.md), so taking a
             regulariser away can show as more overfitting. --epochs/--limit override its budget.

A run folder ``<out>/<arm>/seed<k>`` with a summary.json of a finished run is reused (after
checking that its config.toml is the config this call would train); a run that was stopped (by
a signal, or killed) continues from its last checkpoint, and one stopped before its first
checkpoint is trained again. A signal (Ctrl-C, SIGTERM) stops the whole ablation once the
current run has written its checkpoint. So a stopped ablation re-runs only what is missing.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .. import config as cfgmod
from ..errors import UsageError
from ..runs.folder import RunFolder
from ..runtime import log


@dataclass(frozen=True)
class Arm:
    name: str  # study name and run folder
    label: str  # what the arm is, for the table
    change: tuple[str, ...]  # the overrides that make this arm
    claim: str  # the paper's claim, as this arm's change in error
    paper_top1: float | None  # the paper's delta (arm - baseline) in points, where it gives one
    paper_top5: float | None
    sign: int  # +1: the paper says this arm has the higher error; -1: the lower


BASELINE = Arm("baseline", "baseline", (), "", None, None, 0)
ARMS = {arm.name: arm for arm in (
    Arm("lrn", "no LRN", ("model.lrn=false",), "LRN reduces top-1/top-5 by 1.4/1.2 % (3.3)", 1.4, 1.2, +1),
    Arm("pooling", "2x2/2 pooling", ("model.overlap_pool=false",),
        "overlapping pooling reduces top-1/top-5 by 0.4/0.3 % (3.4)", 0.4, 0.3, +1),
    Arm("dropout", "no dropout", ("model.dropout=0.0",), "without dropout: substantial overfitting (4.2)",
        None, None, +1),
    Arm("augment", "no crops or flips", ("data.crop_padding=0", "data.flip=false"),
        "without crops and flips: substantial overfitting (4.1)", None, None, +1),
    Arm("pca", "PCA lighting", ("data.pca_std=0.1",), "PCA lighting reduces top-1 by over 1 % (4.1)", -1.0, None, -1),
    # pca with fb.resnet.torch's reading of the eigenvalues (data.pca_scale)
    Arm("pca_fb", "PCA lighting (fb scale)", ("data.pca_std=0.1", "data.pca_scale=fb"),
        "PCA lighting reduces top-1 by over 1 % (4.1), fb.resnet.torch's smaller shift", -1.0, None, -1),
    Arm("towers", "one-GPU net", ("model.towers=false", "model.one_gpu=true"),
        "two towers reduce top-1/top-5 by 1.7/1.2 % vs one GPU with half the kernels (3.2)", 1.7, 1.2, +1),
)}
PAPER_CLAIMS = ("lrn", "pooling", "dropout", "augment", "pca", "towers")  # --study all; pca_fb only by name
STUDIES = (*ARMS, "all")
# --regime: its overrides for every arm (before --epochs/--limit and the user's) and default --study
# no speed-ups that change what is learned; the paper's 5x5 conv2, as when the tables were measured
SAME_LEARNING = ("optim.freeze_after=[]", "data.low_res_epochs=0", "model.conv2_kernel=5")
REGIMES = {
    "short": (("model.dropout=0.25", *SAME_LEARNING), "all"),
    "overfit": (("data.limit=5000", "data.val_limit=0", "optim.epochs=30", "model.dropout=0.5", *SAME_LEARNING),
                "dropout,augment,pca,pca_fb"),
}

def select_arms(study: str) -> list[Arm]:
    """The baseline and the arms of ``study`` (a name, several comma-separated, or all)."""
    names = [s.strip() for s in study.split(",") if s.strip()]
    unknown = [n for n in names if n not in STUDIES]
    if unknown or not names:
        raise UsageError(f"unknown study {unknown[0] if unknown else study!r}; choose from {', '.join(STUDIES)} "
                         "(several comma-separated)")
    picked = [n for n in ARMS if n in names or ("all" in names and n in PAPER_CLAIMS)]
    return [BASELINE, *(ARMS[n] for n in picked)]


def budget_overrides(epochs: int | None, limit: int | None) -> list[str]:
    out = []
    if epochs is not None:
        if epochs < 1:
            raise UsageError(f"--epochs must be at least 1; got {epochs}")
        out.append(f"optim.epochs={epochs}")
    if limit is not None:
        if limit < 0:
            raise UsageError(f"--limit must not be negative; got {limit}")
        out.append(f"data.limit={limit}")
    return out


def arm_overrides(arm: Arm, seed: int, budget: list[str], user: list[str], recipe: dict) -> list[str]:
    """All overrides of one run, in order: budget, quiet progress, validation at the end only,
    the user's, the seed, then the arm's change (which must not be overridden by the user)."""
    user_keys = {cfgmod.parse_override(o)[0] for o in user}
    clash = sorted(user_keys & ({"seed"} | {cfgmod.parse_override(c)[0] for c in arm.change}))
    if clash:
        raise UsageError(f"override {clash[0]} is what the {arm.name} arm (or --seeds) sets; leave it out, or change "
                         f"the recipe (--recipe FILE) to give every arm another starting point")
    fixed = [*budget, "train.progress=false"]
    if "train.eval_every" not in user_keys:  # the summary needs only the final validation
        epochs = cfgmod.build_config(recipe, [*fixed, *user]).optim.epochs
        fixed.append(f"train.eval_every={epochs}")
    return [*fixed, *user, f"seed={seed}", *arm.change]


def ablate(recipe: dict, arms: list[Arm], seeds: list[int], budget: list[str], user: list[str], out: Path,
           data_path: str | None = None, regime: str = "short") -> dict:
    """Train (or reuse) every arm x seed under ``out`` on ``data_path`` (default: the recipe's data);
    write ablation.md/json/png; return the paths."""
    started = time.monotonic()
    configs = {(arm.name, seed): cfgmod.build_config(recipe, arm_overrides(arm, seed, budget, user, recipe), data_path)
               for arm in arms for seed in seeds}  # every config checked before the first run starts
    runs = {arm.name: [] for arm in arms}
    for (name, seed), config in configs.items():
        runs[name].append(run_one(config, out / name / f"seed{seed}", f"{name}/seed{seed}"))
    params = {arm.name: runs[arm.name][0]["parameters"] or _parameters(configs[arm.name, seeds[0]]) for arm in arms}
    rows = table_rows(arms, runs)
    wall = time.monotonic() - started
    first = configs[BASELINE.name, seeds[0]]
    record = {"recipe": first.recipe, "seeds": seeds, "regime": regime,
              "budget": {"epochs": first.optim.epochs, "limit": first.data.limit, "val_size": first.data.val_size,
                         "batch_size": first.data.batch_size,
                         "overrides": budget, "user_overrides": user, "data_path": first.data.path},
              "verdict_rule": "top-1 delta vs pooled seed std sqrt((s_arm^2 + s_base^2) / 2): within it "
                              "'within noise', else 'agrees' if the sign is the paper's, 'disagrees' if not",
              "arms": {arm.name: {"change": list(arm.change), "claim": arm.claim, "paper_top1": arm.paper_top1,
                                  "paper_top5": arm.paper_top5, "parameters": params[arm.name],
                                  "runs": runs[arm.name]} for arm in arms},
              "rows": rows, "wall_seconds": round(wall, 1),
              "train_seconds_total": round(sum(r["train_seconds"] for rs in runs.values() for r in rs), 1),
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_count": os.cpu_count(), "device": runs[arms[0].name][0].get("device"),
                          "torch_version": runs[arms[0].name][0].get("torch_version")}}
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "ablation.md", "json": out / "ablation.json", "png": out / "ablation.png"}
    paths["json"].write_text(json.dumps(record, indent=2) + "\n")
    paths["md"].write_text(markdown(record, arms))
    plot(rows, paths["png"])
    trained = sum(not r["reused"] for rs in runs.values() for r in rs)
    return {**{k: str(v) for k, v in paths.items()}, "runs": sum(map(len, runs.values())), "trained": trained,
            "minutes": round(wall / 60, 2)}


def run_one(config: cfgmod.RunConfig, run_dir: Path, name: str) -> dict:
    """Train one arm x seed into ``run_dir``, continue it from its last checkpoint when it was stopped,
    or reuse its finished run; returns its numbers. A run a signal stops ends the whole ablation."""
    folder = RunFolder(run_dir)
    finished, last = folder.finished(), folder.last
    changed = config_differences(folder.config, config) if run_dir.exists() else []
    if (finished or last.is_file()) and changed:
        raise UsageError(f"{run_dir} holds a {'finished' if finished else 'stopped'} run with another config "
                         f"({', '.join(changed[:3])} differ); use another --out or delete that folder")
    if finished:
        log(f"ablate: {name}: reusing the finished run in {run_dir}")
        return _numbers(folder, config.seed, reused=True, wall=None)
    from ..runs.load import load_run
    from ..train.loop import train

    resume = None
    if last.is_file():
        log(f"ablate: {name}: continuing the stopped run in {run_dir} from its last checkpoint")
        resume = load_run(last, data_path=config.data.path, keep_towers=True)
    elif run_dir.exists():
        log(f"ablate: {name}: {run_dir} holds no checkpoint (a run stopped before its first epoch ended): "
            "training it again")
        shutil.rmtree(run_dir)
    else:
        log(f"ablate: {name}: training into {run_dir}")
    started = time.monotonic()
    summary = train(config if resume is None else resume.config, run_dir, resume=resume)
    if summary.get("stopped"):
        raise SystemExit(f"ablate: stopped by {summary['stopped']} in {name}; run the same command again to "
                         "continue from its last checkpoint")
    return _numbers(folder, config.seed, reused=False, wall=time.monotonic() - started)


def config_differences(path: Path, config: cfgmod.RunConfig) -> list[str]:
    """Keys whose value in the run's stored config.toml differs from ``config`` (all keys if it is missing).

    Keys only one side has are ignored, so a finished run stays reusable when a new config field is added,
    and so is a value ``config`` leaves out: ``model.num_classes`` left to the data (the run stored the
    count it found).
    """
    if not path.is_file():
        return ["config.toml"]
    stored = cfgmod.flatten(tomllib.loads(path.read_text()))
    current = {k: v for k, v in cfgmod.flatten(cfgmod.to_dict(config)).items() if v is not None}
    return sorted(k for k in stored.keys() & current.keys() if stored[k] != current[k])


def _numbers(folder: RunFolder, seed: int, reused: bool, wall: float | None) -> dict:
    summary, rows = folder.summary(), folder.metrics()
    return {"seed": seed, "val_top1_err": summary["val_top1_err"], "val_top5_err": summary["val_top5_err"],
            "train_top1_err": rows[-1]["train_top1_err"] if rows else None, "epochs": summary["epochs"],
            "train_seconds": summary["train_seconds"], "wall_seconds": None if wall is None else round(wall, 1),
            "reused": reused, "device": summary.get("device"), "torch_version": summary.get("torch_version"),
            "parameters": summary.get("parameters"), "run_dir": str(folder.path)}


def _parameters(config: cfgmod.RunConfig) -> int | None:
    """The network's size, for a run reused whose summary does not say (None if fc8 follows the data)."""
    from ..nn.model import AlexNet, count_parameters

    return count_parameters(AlexNet(config.model)) if config.model.num_classes is not None else None


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the std of a single value is 0."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def verdict(delta: float, noise: float, sign: int) -> str:
    """'within noise' when |delta| <= noise, else whether the delta has the paper's sign."""
    if abs(delta) <= noise:
        return "within noise"
    return "agrees" if delta * sign > 0 else "disagrees"


def table_rows(arms: list[Arm], runs: dict[str, list[dict]]) -> list[dict]:
    """Per arm: top-1/top-5 error mean and std in %, delta vs the baseline in points, and the verdict."""
    rows = []
    for arm in arms:
        top1 = mean_std([100 * r["val_top1_err"] for r in runs[arm.name]])
        top5 = mean_std([100 * r["val_top5_err"] for r in runs[arm.name]])
        row = {"study": arm.name if arm is not BASELINE else "-", "arm": arm.name, "label": arm.label,
               "change": " ".join(arm.change),
               "top1_mean": top1[0], "top1_std": top1[1], "top5_mean": top5[0], "top5_std": top5[1],
               "seeds": len(runs[arm.name]), "claim": arm.claim, "paper_top1": arm.paper_top1,
               "paper_top5": arm.paper_top5}
        train = [r.get("train_top1_err") for r in runs[arm.name]]
        row["train_top1_mean"] = None if None in train else mean_std([100 * t for t in train])[0]
        if arm is not BASELINE:
            base = rows[0]
            row["delta_top1"] = top1[0] - base["top1_mean"]
            row["delta_top5"] = top5[0] - base["top5_mean"]
            row["noise_top1"] = math.sqrt((top1[1] ** 2 + base["top1_std"] ** 2) / 2)
            row["verdict"] = verdict(row["delta_top1"], row["noise_top1"], arm.sign)
        rows.append(row)
    return rows


def _gap_sentences(rows: list[dict]) -> list[str]:
    """How each regulariser's removal moves the train-test gap (overfitting) and the test error."""
    base, out = rows[0], []
    for row in rows[1:]:
        if row["arm"] not in ("dropout", "augment") or row.get("train_top1_mean") is None:
            continue
        gap, base_gap = row["top1_mean"] - row["train_top1_mean"], base["top1_mean"] - base["train_top1_mean"]
        wider = "widens" if gap > base_gap else "narrows"
        out.append(f"- **{row['label']}** {wider} the gap from {base_gap:.1f} to {gap:.1f} points "
                   f"({'more' if gap > base_gap else 'less'} overfitting) and changes test error by "
                   f"{row['delta_top1']:+.2f} points ({row['verdict']}).")
    return [*out, ""] if out else []


def markdown(record: dict, arms: list[Arm]) -> str:
    b, m = record["budget"], record["machine"]
    data = f"data.limit={b['limit']}" if b["limit"] else "all 50,000 training images"
    val = b["val_size"]
    val = f"{val:,} of the test images" if 0 < val < 10000 else "the 10,000 test images"
    regime = record.get("regime", "short")
    lines = [f"# Ablations of the paper's design choices on CIFAR-10 ({record['recipe']} recipe, {regime} regime)", "",
             f"Budget per run: {b['epochs']} epochs on {data} (validation: {val}), batch "
             f"{b['batch_size']}; seeds {', '.join(map(str, record['seeds']))}. Overrides for every arm: "
             f"`{' '.join(b['overrides'] + b['user_overrides']) or '-'}`. Wall time {record['wall_seconds'] / 60:.1f} "
             f"min for this call (training and validation {record['train_seconds_total'] / 60:.1f} min over all runs) "
             f"on {m['device']}, {m['cpu_count']} CPUs, torch {m['torch_version']}.", "",
             "Errors in % on the validation set, mean ± sample std over seeds; Δ = arm − baseline in points "
             "(positive: the arm is worse); train = training error of the last epoch (on augmented batches, with "
             "dropout on); gap = top-1 − train, how far the net overfits. Verdict on top-1: |Δ| within the pooled seed "
             "std → within noise, otherwise agrees or "
             "disagrees with the sign of the paper's claim (written as arm − baseline).", "",
             "| study | arm | change | top-1 err % | top-5 err % | Δ top-1 | Δ top-5 | train % | gap "
             "| paper Δ top-1/top-5 | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in record["rows"]:
        delta1 = f"{row['delta_top1']:+.2f}" if "delta_top1" in row else "-"
        delta5 = f"{row['delta_top5']:+.2f}" if "delta_top5" in row else "-"
        t = row.get("train_top1_mean")
        train, gap = ("-", "-") if t is None else (f"{t:.1f}", f"{row['top1_mean'] - t:+.1f}")
        lines.append(f"| {row['study']} | {row['label']} | `{row['change'] or 'recipe as is'}` | "
                     f"{row['top1_mean']:.2f} ± {row['top1_std']:.2f} | {row['top5_mean']:.2f} ± {row['top5_std']:.2f} "
                     f"| {delta1} | {delta5} | {train} | {gap} | {_paper(row)} | {row.get('verdict', '-')} |")
    lines += ["", "The paper's claims: " + "; ".join(f"**{a.label}**: {a.claim}" for a in arms if a.claim) + ".", ""]
    disagree = [r for r in record["rows"] if r.get("verdict") == "disagrees"]
    if disagree:
        lines += ["Where CIFAR-10 at this budget disagrees with the paper: " + "; ".join(
            f"**{r['label']}** (`{r['change']}`) changes top-1 error by {r['delta_top1']:+.2f} points where the "
            f"paper expects {'a rise' if ARMS[r['arm']].sign > 0 else 'a fall'}" for r in disagree) + ".", ""]
    base = record["rows"][0]
    regularisers = [r for r in disagree if r["arm"] in ("dropout", "augment")]
    if regularisers and base.get("train_top1_mean") is not None and base["train_top1_mean"] >= base["top1_mean"]:
        lines += [f"The overfitting claims are about the paper's 90-epoch training. At this budget the baseline's "
                  f"last-epoch training error ({base['train_top1_mean']:.1f} %) is still above its validation error "
                  f"({base['top1_mean']:.1f} %): the net has not begun to overfit, so taking a regulariser away "
                  "helps instead of hurting. Testing these claims needs a regime where the net overfits: "
                  "`alexnet ablate --regime overfit`.", ""]
    if base.get("train_top1_mean") is not None and base["train_top1_mean"] < base["top1_mean"]:
        gap = base["top1_mean"] - base["train_top1_mean"]
        lines += [f"In this regime the baseline overfits: its last-epoch training error "
                  f"({base['train_top1_mean']:.1f} %, with augmentation and dropout on) is {gap:.1f} points below "
                  f"its validation error ({base['top1_mean']:.1f} %).", ""]
        lines += _gap_sentences(record["rows"])
    if "towers" in record["arms"]:
        p = record["arms"]
        lines += [f"The towers arm is the paper's one-GPU net (`model.one_gpu`: conv1-conv4 with half the kernels, "
                  f"conv5 and the fully-connected layers full): {p['towers']['parameters']:,} parameters against the "
                  f"baseline's {p['baseline']['parameters']:,}, as section 3.2 compares them.", ""]
    return "\n".join(lines)


def _paper(row: dict) -> str:
    if row["paper_top1"] is None:
        return "overfitting (no number)" if row["claim"] else "-"
    top1 = f"{row['paper_top1']:+.1f}" if not row["arm"].startswith("pca") else "< -1"  # "over 1 %"
    return f"{top1} / {row['paper_top5']:+.1f}" if row["paper_top5"] is not None else f"{top1} / -"


def plot(rows: list[dict], path: Path) -> None:
    """Top-1 and top-5 error per arm with the seed std as error bars; the baseline's top-1 as a line."""
    from .plotting import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 4), dpi=120)
    x = range(len(rows))
    width = 0.38
    ax.bar([i - width / 2 for i in x], [r["top1_mean"] for r in rows], width, yerr=[r["top1_std"] for r in rows],
           capsize=3, color="#4c72b0", label="top-1")
    ax.bar([i + width / 2 for i in x], [r["top5_mean"] for r in rows], width, yerr=[r["top5_std"] for r in rows],
           capsize=3, color="#dd8452", label="top-5")
    ax.axhline(rows[0]["top1_mean"], color="#4c72b0", lw=0.8, ls="--")
    ax.set_xticks(list(x), [r["arm"] if r["arm"] == "baseline" else f"{r['arm']}\n{r['delta_top1']:+.2f}"
                            for r in rows])
    ax.set_ylabel("validation error (%)")
    ax.set_title(f"CIFAR-10 ablations: mean ± std over {rows[0]['seeds']} seed(s); Δ top-1 under each arm", fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
