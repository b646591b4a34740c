"""The package's shape: imports point one way (no cycle between modules, each folder uses only those
before it in ``LAYERS``), no function is longer than 60 lines, and every benchmark script has --help."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "alexnet"
# A module of a layer may import modules of its own layer (without a cycle) and of the layers before it.
LAYERS = ("errors", "files", "runtime", "nn", "data", "config", "recipes", "runs", "use", "train", "paper", "bench",
          "commands", "cli", "__init__")
LONGEST_FUNCTION = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported(path: Path) -> set[str]:
    """The alexnet modules ``path`` imports anywhere in it (also inside functions): ``from X import a`` is
    the module ``X.a`` where that is a module, else ``X``; relative imports are resolved."""
    name, found = module_name(path), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("alexnet")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("alexnet"):
                found |= {f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names}
    return found - {name}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imported(p) for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[1] if "." in module else "__init__")


def test_imports_point_one_way_through_the_layers():
    wrong = [f"{m} -> {i}" for m, deps in graph().items() for i in deps if layer(i) > layer(m)]
    assert not wrong, "imports that point up the layers (LAYERS): " + "; ".join(sorted(wrong))


def test_no_import_cycle_between_modules():
    deps, state, cycles = graph(), {}, []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(deps.get(node, ())):
            if state.get(nxt) == "open":  # back on the path being walked: a cycle
                cycles.append(" -> ".join([*trail[trail.index(nxt):], node, nxt] if nxt in trail else [node, nxt]))
            elif nxt not in state:
                visit(nxt, trail + [node])
        state[node] = "done"

    for module in sorted(deps):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_the_layering_test_sees_imports():
    """The checks above read real imports: relative ones resolve to the modules they name."""
    deps = graph()
    assert "alexnet.nn.lrn" in deps["alexnet.nn.model"] and "alexnet.runtime" in deps["alexnet.nn.model"]
    assert "alexnet.use.evaluate" in deps["alexnet.train.loop"]
    assert layer("alexnet.use.evaluate") < layer("alexnet.train.loop") < layer("alexnet.cli")


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"), ROOT / "hubconf.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions over 60 lines: " + "; ".join(long)


HELP_ALL = """
import contextlib, io, os, runpy, sys
for script in sys.argv[1:]:
    sys.argv, out = [script, "--help"], io.StringIO()
    sys.path.insert(0, os.path.dirname(script))  # as `python script` does: its folder's modules import
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")
        code = None
    except SystemExit as exit_:
        code = exit_.code
    print(script, code, "usage:" in out.getvalue())
"""


def test_every_benchmark_script_has_help():
    """Each script's --help, all in one process (one torch import): exit 0 with a usage text."""
    scripts = sorted(str(p) for p in (ROOT / "benchmarks").glob("*.py"))
    out = subprocess.run([sys.executable, "-c", HELP_ALL, *scripts], capture_output=True, text=True, timeout=120)
    seen = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()}
    assert seen == {script: ["0", "True"] for script in scripts}, out.stderr[-2000:]
