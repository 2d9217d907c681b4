"""The layers point one way: common <- models <- {data_prep, train, eval}; eval and data_prep never
import train. Everything model-specific (a family name or model type compared, a special token of a
family's chat format) lives in models/. Checked by parsing every import, including the lazy ones
inside functions; the tokens and names come from the families' own declarations (`CHAT_TOKENS`,
`NAME`, `MODEL_TYPES`), so a new family's are checked without editing this file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from models import get_family, list_families

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


def _declared() -> tuple[set[str], set[str]]:
    """Every family's chat-format tokens (only models/ may spell them) and the strings that name a
    family (its NAME and MODEL_TYPES: comparing against one is a family switch)."""
    tokens: set[str] = set()
    names: set[str] = set()
    for name in list_families():
        family = get_family(name)
        tokens.update(family.CHAT_TOKENS)
        names.update({family.NAME, *family.MODEL_TYPES})
    return tokens, names


CHAT_TOKENS, FAMILY_NAMES = _declared()


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


def _string_literals(tree: ast.AST) -> list[tuple[int, str]]:
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def _compared_family_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) for each comparison with a family's name or model type: `x == "qwen2_audio"`,
    `x in ("qwen2_audio", ...)`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                elements = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
                found += [
                    (node.lineno, e.value)
                    for e in elements
                    if isinstance(e, ast.Constant) and e.value in FAMILY_NAMES
                ]
    return found


def test_the_declarations_are_read():
    assert CHAT_TOKENS and FAMILY_NAMES


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "models"] + ["scripts", "bench"])
def test_no_family_specifics_outside_models(package):
    found = []
    for path in _sources(package):
        rel = path.relative_to(REPO)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for lineno, text in _string_literals(tree):
            found += [f"{rel}:{lineno}: chat token {token}" for token in sorted(CHAT_TOKENS) if token in text]
        for lineno, name in _compared_family_names(tree):
            found.append(f"{rel}:{lineno}: family switch on {name!r}")
    assert not found, "\n".join(found)
