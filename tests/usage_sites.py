"""Every ``raise UsageError`` in src/alexnet, as FILE:LINE (an AST walk, not a text search).

    python tests/usage_sites.py            # one site a line, then the count
    python tests/usage_sites.py --files    # the count per file

test_errors.py runs it; which sites a test reaches is measured with coverage (see the module's docstring).
"""

from __future__ import annotations

import ast
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


def main(argv: list[str]) -> int:
    sites = usage_sites()
    if "--files" in argv:
        for path, count in sorted(Counter(path for path, _ in sites).items()):
            print(f"{count:4d}  {path}")
    else:
        print("\n".join(f"{path}:{line}" for path, line in sites))
    print(f"{len(sites)} raise UsageError sites")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
