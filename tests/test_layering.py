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
