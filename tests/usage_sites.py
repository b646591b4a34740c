"""Every ``raise UsageError`` in src/alexnet, as FILE:LINE (an AST walk, not a text search).

    python tests/usage_sites.py            # one site a line, then the count
    python tests/usage_sites.py --files    # the count per file
    python tests/usage_sites.py --coverage coverage.json   # the sites no test reached, then the counts

test_errors.py runs it. The sites are meant to be reached by test_errors.py (user mistakes on the command line, and the
library's own guards) and test_errors_unusual.py (what no plain command line meets: torchrun with a fake world
of two, a disk that fills, an unreadable file, a GPU index beyond the visible ones). Which sites they reach is
measured with coverage (not a dependency of the project: ``pip install coverage`` into the virtual environment
to measure):

    coverage run --source=src/alexnet -m pytest -p no:xdist tests/test_errors.py tests/test_errors_unusual.py
    coverage json -o coverage.json && python tests/usage_sites.py --coverage coverage.json
"""

from __future__ import annotations

import ast
import json
import sys
from collections import Counter
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "alexnet"


def usage_sites(src: Path = SRC) -> list[tuple[str, int]]:
    """``(path relative to src/, line)`` of every ``raise UsageError(...)``, in file order."""
    sites = []
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and _names_usage_error(node.exc):
                sites.append((str(path.relative_to(src.parent)), node.lineno))
    return sorted(sites)


def _names_usage_error(exc: ast.expr | None) -> bool:
    call = exc.func if isinstance(exc, ast.Call) else exc
    return isinstance(call, ast.Name) and call.id == "UsageError" or \
        isinstance(call, ast.Attribute) and call.attr == "UsageError"


def unreached(sites: list[tuple[str, int]], coverage_json: Path) -> list[tuple[str, int]]:
    """The ``sites`` whose line ``coverage json`` did not record as executed."""
    files = json.loads(Path(coverage_json).read_text())["files"]
    ran = {}
    for name, data in files.items():
        key = name[name.index("alexnet/"):] if "alexnet/" in name else name
        ran[key] = set(data["executed_lines"])
    return [(path, line) for path, line in sites if line not in ran.get(path, set())]


def main(argv: list[str]) -> int:
    sites = usage_sites()
    if "--coverage" in argv:
        missed = unreached(sites, Path(argv[argv.index("--coverage") + 1]))
        print("\n".join(f"{path}:{line}" for path, line in missed))
        print(f"{len(sites)} raise UsageError sites, {len(sites) - len(missed)} reached, {len(missed)} not")
        return 0
    if "--files" in argv:
        for path, count in sorted(Counter(path for path, _ in sites).items()):
            print(f"{count:4d}  {path}")
    else:
        print("\n".join(f"{path}:{line}" for path, line in sites))
    print(f"{len(sites)} raise UsageError sites")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
