"""The layering of the product card: crypto/ and dp/ import nothing from protocol/ or
secure_fed/; protocol/ imports crypto/ and nothing else of the project (nor cryptography
directly: primitives live in crypto/)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "crypto": {"protocol", "secure_fed", "dp"},
    "dp": {"protocol", "secure_fed"},
    "protocol": {"secure_fed", "dp", "cryptography"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_respects_layering(package: str) -> None:
    files = sorted((ROOT / package).glob("*.py"))
    assert files
    for f in files:
        bad = _imports(f) & FORBIDDEN[package]
        assert not bad, f"{f.relative_to(ROOT)} imports {sorted(bad)}"


def test_no_numpy_or_torch_rng_in_crypto_and_protocol() -> None:
    for package in ("crypto", "protocol"):
        for f in (ROOT / package).glob("*.py"):
            text = f.read_text()
            for pattern in ("np.random", "numpy.random", "torch.rand", "random.seed", "import random\n"):
                assert pattern not in text, f"{f.relative_to(ROOT)} uses {pattern!r}"


# -- the rooms of secure_fed/ and the import graph ----------------------------------------------
PACKAGES = ("crypto", "dp", "protocol", "secure_fed")
ROOMS_FORBIDDEN = {
    # room -> rooms of secure_fed it must not import (a round flows fl -> aggregation/privacy
    # -> run -> executor; report, audit and cli sit on top)
    "aggregation": {"fl", "privacy", "run", "executor", "audit", "report", "cli"},
    "privacy": {"fl", "run", "executor", "audit", "report", "cli"},
    "fl": {"run", "executor", "audit", "report", "cli"},
    "executor": {"run", "audit", "report", "cli"},
    "run": {"audit", "report", "cli"},
    "report": {"audit", "cli"},
    "audit": {"cli"},
}
ROOT_MODULES = {"config", "errors", "device"}  # import nothing of the rooms


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _project_modules() -> dict[str, Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")] + [ROOT / "run_secure.py"]
    return {_module_name(p): p for p in files}


def _imported_modules(name: str, path: Path, modules: set[str]) -> set[str]:
    """Every project module ``name`` imports (any import statement, at any depth: under
    ``if TYPE_CHECKING`` and inside functions too), resolved to modules that exist."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in modules:  # `import a.b.c` runs a, a.b and a.b.c
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _project_modules()
    return {n: _imported_modules(n, p, set(mods)) for n, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_helpers_see_cycles_and_package_imports() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    graph = _graph()
    assert "secure_fed.run.trainer" in graph["secure_fed.cli.train"]  # a lazy import counts
    assert "secure_fed.run.rundir" in graph["secure_fed.report.load"]


def test_no_import_cycle_anywhere() -> None:
    cycles = _cycles(_graph())
    assert not cycles, f"import cycles (modules importing each other, directly or not): {cycles}"


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "secure_fed" else None


@pytest.mark.parametrize("room", sorted(ROOMS_FORBIDDEN))
def test_rooms_import_only_downwards(room: str) -> None:
    graph = _graph()
    mods = [m for m in graph if _room(m) == room]
    assert mods, f"no modules in secure_fed/{room}/"
    for m in mods:
        bad = sorted(d for d in graph[m] if _room(d) in ROOMS_FORBIDDEN[room])
        assert not bad, f"{m} (room {room}/) imports {bad}"


def test_root_modules_import_no_room_and_executor_never_the_trainer() -> None:
    graph = _graph()
    for name in ROOT_MODULES:
        bad = sorted(d for d in graph[f"secure_fed.{name}"] if _room(d) not in (None, *ROOT_MODULES))
        assert not bad, f"secure_fed.{name} imports {bad}"
    for m in (m for m in graph if _room(m) == "executor"):
        assert "secure_fed.run.trainer" not in graph[m], f"{m} imports the trainer"


def test_no_module_above_600_lines() -> None:
    files = [p for d in (*PACKAGES, "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 50
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"modules above 600 lines (split them): {long}"


def test_the_cli_imports_its_subcommands_plainly() -> None:
    files = sorted((ROOT / "secure_fed" / "cli").glob("*.py"))
    assert len(files) >= 7
    for f in files:
        assert "importlib" not in f.read_text(), f"{f.relative_to(ROOT)} uses importlib"
