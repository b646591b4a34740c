"""`alexnet report` on a fake run folder: the files, self-containment, escaping, in-progress runs,
errors, and the page as headless Chromium renders it."""

import base64
import html
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from alexnet.cli import main
from alexnet.paper.report import series
from fixtures import headless, last_json

ROWS = [  # validation every second epoch, as the cifar10 recipe does: null in between
    {"epoch": 1, "train_loss": 2.1, "train_top1_err": 0.78, "images_per_s": 410.0, "val_top1_err": None,
     "val_top5_err": None, "lr": 0.05, "elapsed_s": 30.1},
    {"epoch": 2, "train_loss": 1.6, "train_top1_err": 0.58, "images_per_s": 420.5, "val_top1_err": 0.52,
     "val_top5_err": 0.09, "lr": 0.04, "elapsed_s": 61.0},
    {"epoch": 3, "train_loss": 1.3, "train_top1_err": 0.46, "images_per_s": 415.0, "val_top1_err": None,
     "val_top5_err": None, "lr": 0.02, "elapsed_s": 90.4},
    {"epoch": 4, "train_loss": 1.1, "train_top1_err": 0.37, "images_per_s": 418.2, "val_top1_err": 0.35,
     "val_top5_err": 0.04, "lr": 0.0, "elapsed_s": 121.9},
]
SUMMARY = {"val_top1_err": 0.35, "val_top5_err": 0.04, "best_val_top1_err": 0.35, "examples": 10000, "epochs": 4,
           "train_seconds": 121.9, "images_per_s": 416.1, "device": "cpu (2 threads) <b>&", "torch_version": "2.14.1",
           "git_commit": "bf39e03b", "recipe": "cifar10"}
CONFIG = 'seed = 0\nrecipe = "<script>alert(1)</script>"\n\n[model]\nvariant = "cifar"\n'


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as `alexnet train` and `alexnet figures` leave it."""
    run = tmp_path / "run-<1>"
    (run / "figures").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (run / "summary.json").write_text(json.dumps(SUMMARY))
    (run / "config.toml").write_text(CONFIG)
    y, x = np.mgrid[0:120, 0:200]
    picture = np.stack([x * 255 // 200, y * 255 // 120, (x + y) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(picture).save(run / "figures" / "figure3.png")
    return run


def report(capsys, *argv) -> dict:
    assert main(["report", *map(str, argv)]) == 0
    return last_json(capsys.readouterr().out)


def test_report_is_self_contained_and_escaped(run_dir, capsys):
    printed = report(capsys, run_dir)
    page = (run_dir / "report.html").read_text()
    assert printed["html"] == str(run_dir / "report.html") and printed["markdown"] == str(run_dir / "report.md")
    sources = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)  # curves, figure 3
    assert not re.search(r"https?:|url\(|<link|<script|@import", page, re.IGNORECASE)
    assert html.escape('"<script>alert(1)</script>"') in page and "cpu (2 threads) &lt;b&gt;&amp;" in page
    assert "run-&lt;1&gt;" in page and "Figure 3" in page and "35.00%" in page and "bf39e03b" in page
    for source in sources:  # every embedded image is a real PNG
        with Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as image:
            assert image.format == "PNG" and image.width >= 200
    with Image.open(run_dir / "report_curves.png") as curves:
        assert curves.width >= 800 and curves.height >= 500


def test_markdown_links_the_pngs_beside_it(run_dir, tmp_path, capsys):
    out = tmp_path / "elsewhere"
    printed = report(capsys, run_dir, "--out", out)
    text = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == ["report_curves.png", "../run-<1>/figures/figure3.png"]
    assert all((out / link).is_file() for link in links) and printed["images"][0] == str(out / "report_curves.png")
    assert "| 4 | 1.1000 | 37.00% | 35.00% | 4.00% |" in text and '"<script>alert(1)</script>"' in text


def test_validation_points_only_where_measured():
    assert series(ROWS, "val_top1_err") == ([2, 4], [0.52, 0.35])
    assert series(ROWS, "train_loss") == ([1, 2, 3, 4], [2.1, 1.6, 1.3, 1.1])


def test_a_run_in_progress_gets_a_report(run_dir, capsys):
    (run_dir / "summary.json").unlink()
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 5, "train_lo')  # the line being written as we read
    report(capsys, run_dir)
    page = (run_dir / "report.html").read_text()
    assert "in progress" in page and "35.00%" in page  # the latest validation error


def test_missing_or_broken_files_exit_2_naming_them(run_dir, tmp_path, capsys):
    (run_dir / "metrics.jsonl").rename(run_dir / "metrics.old")
    assert main(["report", str(run_dir)]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    (run_dir / "metrics.old").rename(run_dir / "metrics.jsonl")
    (run_dir / "summary.json").write_text("{not json")
    assert main(["report", str(run_dir)]) == 2
    assert "summary.json" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no such run folder" in capsys.readouterr().err


# Marks <body> once every image has decoded (complete and with a width), for --dump-dom to show.
IMAGES_LOADED = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const ok = images.length > 0 && images.every((i) => i.complete && i.naturalWidth > 0);
  document.body.setAttribute("data-images", ok ? "loaded" : "broken");
  document.body.setAttribute("data-image-count", String(images.length));
});
</script>"""


@pytest.mark.slow
def test_chromium_renders_the_page_with_every_image(run_dir, tmp_path, capsys):
    report(capsys, run_dir)
    page = run_dir / "report.html"
    shot = tmp_path / "shot.png"
    headless(tmp_path, f"--screenshot={shot}", page.as_uri())
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 200 and pixels.std() > 20  # text, tables and curves, not a blank page
    checked = run_dir / "report_checked.html"
    checked.write_text(page.read_text().replace("</body>", IMAGES_LOADED + "</body>"))
    dom = headless(tmp_path, "--virtual-time-budget=5000", "--dump-dom", checked.as_uri()).stdout
    assert 'data-images="loaded"' in dom and 'data-image-count="2"' in dom
