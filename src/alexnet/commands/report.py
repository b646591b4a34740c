"""``alexnet report RUN_DIR``: one self-contained HTML page, and a markdown twin, for a run folder."""

from __future__ import annotations

import json
from pathlib import Path

from .common import add_parser as _parser
from .common import out_folder

EXAMPLES = """examples:
  alexnet report runs/demo                 # runs/demo/report.html, report.md, report_curves.png
  alexnet report runs/demo --out /tmp/rep  # the same files into another folder

Run `alexnet figures --checkpoint runs/demo/checkpoints/best.pt` first to include Figures 3 and 4.
"""
def add_parser(commands) -> None:
    p = _parser(commands, "report", "one HTML page (and markdown) for a run folder", EXAMPLES)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a folder written by `alexnet train --out`")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="folder for report.html, report.md and report_curves.png (default RUN_DIR)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..paper.report import write_report

    out_folder("--out", args.out)
    print(json.dumps(write_report(args.run_dir, args.out)))
    return 0
