"""Fail (exit 1) unless the quickstart's summary shows a real, significant improvement.

Usage: python -m scripts.check_quickstart runs/quickstart/summary.json
The thresholds are the quickstart's promise in the README: tuned beats base with exact McNemar
p < 0.01, and beats random guessing with Poisson-binomial p < 0.001.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MCNEMAR_ALPHA = 0.01
RANDOM_ALPHA = 0.001


def check(summary: dict) -> list[str]:
    """Return the broken promises (empty when the quickstart result holds)."""
    problems = []
    pre, post = summary["pre"]["choice_acc"], summary["post"]["choice_acc"]
    if not post > pre:
        problems.append(f"tuned choice_acc {post:.1f}% is not above base {pre:.1f}%")
    if not summary["mcnemar_p"] < MCNEMAR_ALPHA:
        problems.append(f"McNemar p={summary['mcnemar_p']:.3g} is not < {MCNEMAR_ALPHA}")
    if not summary["post_vs_random_p"] < RANDOM_ALPHA:
        problems.append(f"tuned vs random p={summary['post_vs_random_p']:.3g} is not < {RANDOM_ALPHA}")
    if summary["n_test"] < 200:
        problems.append(f"only {summary['n_test']} held-out items (< 200)")
    return problems


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "runs/quickstart/summary.json")
    if not path.exists():
        print(f"{path} not found: run `make quickstart` first", file=sys.stderr)
        return 1
    summary = json.loads(path.read_text())
    problems = check(summary)
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    if not problems:
        print(
            f"OK: choice_acc {summary['pre']['choice_acc']:.1f}% -> {summary['post']['choice_acc']:.1f}% "
            f"on {summary['n_test']} held-out items (random {summary['random']:.1f}%), "
            f"McNemar p={summary['mcnemar_p']:.2g}, vs random p={summary['post_vs_random_p']:.2g}"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
