"""One logging setup for every entry point; only rank 0 speaks at INFO."""

from __future__ import annotations

import logging
import os
import sys


def rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def is_main_process() -> bool:
    return rank() == 0


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr with the rank in each line; non-zero ranks only report warnings."""
    effective = level if is_main_process() else logging.WARNING
    fmt = f"%(asctime)s [rank{rank()}] %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=effective, format=fmt, datefmt="%H:%M:%S", stream=sys.stderr, force=True)
