"""What produced a file: the code's git SHA and the library versions, recorded in run_info.json."""

from __future__ import annotations

import importlib.metadata as md
import subprocess

from common.paths import REPO_ROOT

TRACKED_PACKAGES = ("torch", "transformers", "peft", "trl", "deepspeed", "datasets")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def git_sha() -> str | None:
    """HEAD of the repository checkout (with `-dirty` when tracked files changed), None outside git."""
    try:
        sha = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries whose behaviour changes results."""
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out
