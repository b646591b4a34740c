"""The front page and the guides: every relative link resolves, and every `alexnet ...` command line that
README.md shows parses with the real command line parser."""

import re
import shlex
from pathlib import Path

import pytest

from alexnet.cli import parse

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```(\w*)\s*$")


def relative_links(page: Path) -> list[str]:
    """The page's markdown link targets that point into the repository (no scheme, no bare anchor)."""
    targets = LINK.findall(page.read_text(encoding="utf-8"))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    missing = [t for t in relative_links(page) if not (page.parent / t.split("#")[0]).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"


def command_lines(page: Path) -> list[str]:
    """The ``alexnet ...`` lines of the page's shell code blocks, without comments, pipes and redirections."""
    lines, shell = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        fence = FENCE.match(line.strip())
        if fence:
            shell = not shell and fence.group(1) in ("sh", "bash", "shell", "console")
            continue
        if shell and line.strip().startswith("alexnet "):
            command = re.split(r"\s+#", line.strip())[0]
            lines.append(re.split(r"\s+[|>&]", command)[0].strip())
    return lines


def test_readme_shows_commands():
    assert len(command_lines(ROOT / "README.md")) >= 10


@pytest.mark.parametrize("line", command_lines(ROOT / "README.md"))
def test_every_readme_command_line_parses(line, capsys):
    try:
        args = parse(shlex.split(line)[1:])
    except SystemExit as exit_:
        pytest.fail(f"README's `{line}` does not parse (exit {exit_.code}): {capsys.readouterr().err.strip()}")
    assert callable(args.run)


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; details belong in docs/"
