"""Where the repository and the optional reference data (`../shared`) live."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """Reference data beside the checkout (`ART_SHARED_DIR`, default `<repo>/../shared`).

    A user's clone will not have it; callers must cope with a missing folder.
    """
    return Path(os.environ.get("ART_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()


def shared_mmar_meta() -> Path | None:
    p = shared_dir() / "data" / "mmar" / "MMAR-meta.jsonl"
    return p if p.exists() else None
