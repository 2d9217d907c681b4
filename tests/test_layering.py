"""The layers point one way: common <- models <- {data_prep, train, eval}; eval and data_prep never
import train. Everything model-specific (a family name compared, a special-token literal) lives in
models/. Checked by parsing every import, including the lazy ones inside functions."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "models", "data_prep", "train", "eval")
# What each package may import from this repository (besides itself).
ALLOWED = {
    "common": set(),
    "models": {"common"},
    "data_prep": {"common", "models"},
    "eval": {"common", "models", "data_prep"},
    "train": {"common", "models", "data_prep", "eval"},
}
# Special tokens of the families' chat formats: only models/ may spell them.
TOKEN_LITERAL = re.compile(r"<\|[A-Za-z_]+\|>|<sound>")
FAMILY_SWITCH = re.compile(r"""(family|NAME|family_name)\s*(==|!=|in)\s*\(?["'](qwen|audio_flamingo)""")


def _sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package):
    bad = {
        str(path.relative_to(REPO)): sorted(imported - ALLOWED[package] - {package})
        for path in _sources(package)
        if (imported := _imported_packages(path)) - ALLOWED[package] - {package}
    }
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}: {bad}"


def _string_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "models"] + ["scripts", "bench"])
def test_no_family_specifics_outside_models(package):
    found = []
    for path in _sources(package):
        rel = path.relative_to(REPO)
        for lineno, text in _string_literals(path):
            if TOKEN_LITERAL.search(text):
                found.append(f"{rel}:{lineno}: token literal {TOKEN_LITERAL.search(text).group()}")
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FAMILY_SWITCH.search(line):
                found.append(f"{rel}:{lineno}: family switch: {line.strip()}")
    assert not found, "\n".join(found)
