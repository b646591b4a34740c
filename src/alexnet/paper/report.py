"""One self-contained HTML page, and a markdown twin, for a run folder (``alexnet report RUN_DIR``).

report.html carries everything inside it (images as base64 ``data:`` URIs, inline CSS, no
scripts, nothing fetched), so it can be archived or mailed alone; report.md shows the same and
references PNG files beside it. Contents: the final numbers (summary.json), the training
curves (metrics.jsonl), the resolved config (config.toml) and the paper's figures that
`alexnet figures` wrote into RUN_DIR/figures. A run still in progress (metrics.jsonl but no
summary.json yet) gets a report of what exists.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..runs.folder import RunFolder

# Captions of the PNGs that `alexnet figures` writes; any other PNG in figures/ gets its file name.
CAPTIONS = {
    "figure3.png": "Figure 3: the kernels of conv1, one block per tower (the paper's two GPUs).",
    "figure4_top5.png": "Figure 4 (left): the five most probable classes of each image; the true class in red.",
    "figure4_neighbours.png": "Figure 4 (right): the gallery images whose fc7 activations are nearest each query.",
    "figure4_gradcam.png": "Figure 4's images: where the network finds its top class (Grad-CAM at conv5, "
                           "alexnet explain).",
    "figure_units.png": "What units see (Zeiler & Fergus's Figure 2): the 9 gallery patches that excite each unit "
                        "most.",
}
CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; } td, th { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #f3f3f3; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: .85em; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; } figcaption { color: #555; font-size: .9em; }
.status { display: inline-block; padding: .15em .6em; border-radius: .3em; background: #e8f0fe; }
"""


@dataclass
class Report:
    """What a run folder holds for its report; ``summary`` is None while the run is in progress."""

    folder: RunFolder
    rows: list[dict]  # metrics.jsonl, one per epoch
    summary: dict | None
    config_text: str | None
    figures: list[Path]

    @property
    def name(self) -> str:
        return self.folder.name


def write_report(run_dir: Path, out: Path | None = None) -> dict:
    """report.html, report.md and report_curves.png of the run in ``run_dir`` into ``out`` (default
    ``run_dir``); returns their paths."""
    record = read_run(RunFolder(run_dir))
    out = out or run_dir
    out.mkdir(parents=True, exist_ok=True)
    curves = draw_curves(record.rows, out / "report_curves.png") if record.rows else None
    images = ([curves] if curves else []) + record.figures
    paths = {"html": out / "report.html", "markdown": out / "report.md"}
    paths["html"].write_text(render_html(record, curves), encoding="utf-8")
    paths["markdown"].write_text(render_markdown(record, curves, out), encoding="utf-8")
    return {**{k: str(v) for k, v in paths.items()}, "images": [str(p) for p in images]}


def read_run(folder: RunFolder) -> Report:
    if not folder.path.is_dir():
        raise UsageError(f"{folder.path}: no such run folder; pass the folder `alexnet train --out` wrote")
    if not folder.metrics_file.is_file():
        raise UsageError(f"{folder.metrics_file} not found: {folder.path} is not a run folder, or its run has not "
                         "finished an epoch yet; pass the folder `alexnet train --out` wrote")
    summary = folder.summary()
    rows = folder.metrics(in_progress=summary is None)
    if not rows and summary is None:  # as a missing metrics.jsonl: nothing to report yet
        raise UsageError(f"{folder.metrics_file} holds no epoch yet: the run has not finished one; report it after "
                         "its first epoch, or pass the folder of a finished run")
    order = list(CAPTIONS)  # the paper's order, then any other PNG by name
    figures = sorted(folder.figures.glob("*.png"),
                     key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
    return Report(folder, rows, summary, folder.config_text(), figures)


# --------------------------------------------------------------------------- curves


def series(rows: list[dict], key: str) -> tuple[list, list]:
    """(epochs, values) of ``key`` where it is present and not null (validation runs every few epochs)."""
    points = [(row["epoch"], row[key]) for row in rows if row.get(key) is not None]
    return [e for e, _ in points], [v for _, v in points]


def draw_curves(rows: list[dict], path: Path) -> Path:
    """Training loss, top-1/top-5 error, learning rate and images/s against the epoch, in one PNG."""
    from .plotting import pyplot

    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), layout="constrained")
    panels = [(axes[0, 0], "training loss", [("train_loss", "train loss")], 1),
              (axes[0, 1], "error (%)", [("train_top1_err", "train top-1"), ("val_top1_err", "val top-1"),
                                         ("val_top5_err", "val top-5")], 100),
              (axes[1, 0], "learning rate", [("lr", "lr")], 1),
              (axes[1, 1], "images / s", [("images_per_s", "training images/s")], 1)]
    for ax, title, keys, scale in panels:
        for key, label in keys:
            epochs, values = series(rows, key)
            ax.plot(epochs, [v * scale for v in values], "o-", markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- content


def status(record: Report) -> str:
    epochs = record.rows[-1]["epoch"] if record.rows else 0
    if record.summary is None:
        return f"in progress: epochs recorded {epochs}, no summary.json yet"
    return f"finished: epochs {record.summary.get('epochs', epochs)}"


def numbers(record: Report) -> list[tuple[str, str]]:
    """The final numbers as (label, text): summary.json, or the latest metrics of a running training."""
    s = record.summary
    if s is None:
        epochs, top1 = series(record.rows, "val_top1_err")
        _, top5 = series(record.rows, "val_top5_err")
        last = record.rows[-1] if record.rows else {}
        s = {"val_top1_err": top1[-1] if top1 else None, "val_top5_err": top5[-1] if top5 else None,
             "best_val_top1_err": min(top1) if top1 else None, "epochs": last.get("epoch"),
             "train_seconds": last.get("elapsed_s"), "images_per_s": last.get("images_per_s")}
    rows = [("val top-1 error", percent(s.get("val_top1_err"))), ("val top-5 error", percent(s.get("val_top5_err"))),
            ("best val top-1 error", percent(s.get("best_val_top1_err"))), ("epochs", text(s.get("epochs"))),
            ("training time", seconds(s.get("train_seconds"))), ("images / s", text(s.get("images_per_s")))]
    extra = [("val examples", "examples"), ("device", "device"), ("torch version", "torch_version"),
             ("git commit", "git_commit"), ("recipe", "recipe")]
    return rows + [(label, text(s[key])) for label, key in extra if s.get(key) is not None]


def percent(value, missing: str = "–") -> str:
    return missing if not isinstance(value, (int, float)) else f"{100 * value:.2f}%"


def seconds(value) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    minutes, secs = divmod(round(value), 60)
    return f"{value:.1f} s ({minutes // 60}:{minutes % 60:02d}:{secs:02d})"


def text(value) -> str:
    return "–" if value is None else str(value)


def epoch_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and per-epoch cells of the metrics table (validation columns blank where not run)."""
    header = ["epoch", "train loss", "train top-1", "val top-1", "val top-5", "lr", "images/s", "elapsed"]
    cells = [[text(r.get("epoch")), num(r.get("train_loss"), ".4f"), percent(r.get("train_top1_err"), ""),
              percent(r.get("val_top1_err"), ""), percent(r.get("val_top5_err"), ""), num(r.get("lr"), ".3g"),
              num(r.get("images_per_s"), ".0f"), num(r.get("elapsed_s"), ".0f") + " s"] for r in rows]
    return header, cells


def num(value, fmt: str) -> str:
    return "" if not isinstance(value, (int, float)) else format(value, fmt)


def caption(path: Path) -> str:
    return CAPTIONS.get(path.name, path.name)


# --------------------------------------------------------------------------- HTML and markdown


def render_html(record: Report, curves: Path | None) -> str:
    """The page; every inserted text goes through html.escape."""
    e = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
             f"<title>alexnet run {e(record.name)}</title>\n<style>{CSS}</style></head><body>",
             f"<h1>alexnet run {e(record.name)}</h1>", f"<p class=\"status\">{e(status(record))}</p>",
             "<h2>Results</h2>", html_table(["", "value"], [[k, v] for k, v in numbers(record)])]
    if curves:
        parts += ["<h2>Training curves</h2>", html_figure(curves, "loss, error, learning rate and speed per epoch")]
    if record.rows:
        parts += ["<h2>Per epoch</h2>", html_table(*epoch_table(record.rows))]
    if record.figures:
        parts += ["<h2>The paper's figures</h2>"] + [html_figure(p, caption(p)) for p in record.figures]
    config = record.config_text if record.config_text is not None else "(no config.toml in the run folder)"
    parts += ["<h2>Resolved config (config.toml)</h2>", f"<pre>{e(config)}</pre>", "</body></html>\n"]
    return "\n".join(parts)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class=\"n\">{e(c)}</td>" if i else f"<th>{e(c)}</th>"
                                    for i, c in enumerate(row)) + "</tr>\n" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>"


def html_figure(path: Path, text: str) -> str:
    """The PNG inside the page as a data: URI."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{html.escape(text)}\">"
            f"<figcaption>{html.escape(text)}</figcaption></figure>")


def render_markdown(record: Report, curves: Path | None, out: Path) -> str:
    lines = [f"# alexnet run {record.name}", "", f"*{status(record)}*", "", "## Results", "",
             *md_table(["", "value"], [[k, v] for k, v in numbers(record)])]
    if curves:
        lines += ["", "## Training curves", "", f"![training curves]({relative(curves, out)})"]
    if record.rows:
        lines += ["", "## Per epoch", "", *md_table(*epoch_table(record.rows))]
    if record.figures:
        lines += ["", "## The paper's figures"]
        for path in record.figures:
            lines += ["", f"![{caption(path)}]({relative(path, out)})", "", f"*{caption(path)}*"]
    config = record.config_text if record.config_text is not None else "(no config.toml in the run folder)"
    lines += ["", "## Resolved config (config.toml)", "", "~~~toml", config.rstrip("\n"), "~~~", ""]
    return "\n".join(lines)


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(row) for row in rows)]


def relative(path: Path, start: Path) -> str:
    """``path`` as a link from a file in ``start`` (forward slashes, as markdown wants)."""
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
