"""Fail (exit 1) unless the quickstart's summary shows what the quickstart claims.

Usage: python -m scripts.check_quickstart runs/quickstart/summary.json

The gates are the README's promises, each about the same held-out items:
- the base follows the answer format (instruction following >= 90%) and is not above random
  guessing (Poisson-binomial p >= 0.01): a "before" that answers, at chance;
- the chain-of-thought LoRA beats the base (exact McNemar p < 0.01) and random guessing
  (Poisson-binomial p < 0.001);
- without the audio (`--audio none`) the CoT LoRA is not above random (p >= 0.01) and is below
  itself with the audio (exact McNemar p < 0.01): what it learned comes from the sound.
Direct vs CoT is reported with its McNemar p-value but not gated: either may win.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MIN_ITEMS = 200
BASE_MIN_IF = 90.0  # percent of items with a parsable option
CHANCE_ALPHA = 0.01  # "not above random": p vs random at least this
MCNEMAR_ALPHA = 0.01
RANDOM_ALPHA = 0.001  # "above random" for the CoT LoRA


def check(summary: dict) -> list[str]:
    """Return the broken promises (empty when every gate holds)."""
    if "systems" not in summary:
        return ["summary has no 'systems': it was written by an older quickstart; rerun `make quickstart`"]
    problems = []
    s = summary["systems"]
    base, cot, blind = s["base"], s["cot"], s["cot_no_audio"]
    if summary["n_test"] < MIN_ITEMS:
        problems.append(f"only {summary['n_test']} held-out items (< {MIN_ITEMS})")
    if not base["instruction_following"] >= BASE_MIN_IF:
        problems.append(
            f"base instruction following {base['instruction_following']:.1f}% is below {BASE_MIN_IF:.0f}%"
        )
    if not base["p_vs_random"] >= CHANCE_ALPHA:
        problems.append(
            f"base choice_acc {base['choice_acc']:.1f}% is above random "
            f"({summary['random']:.1f}%, p={base['p_vs_random']:.3g} < {CHANCE_ALPHA})"
        )
    if not (cot["choice_acc"] > base["choice_acc"] and summary["mcnemar_p"] < MCNEMAR_ALPHA):
        problems.append(
            f"CoT {cot['choice_acc']:.1f}% vs base {base['choice_acc']:.1f}%: not above it at "
            f"McNemar p < {MCNEMAR_ALPHA} (p={summary['mcnemar_p']:.3g})"
        )
    if not summary["post_vs_random_p"] < RANDOM_ALPHA:
        problems.append(f"CoT vs random p={summary['post_vs_random_p']:.3g} is not < {RANDOM_ALPHA}")
    if not blind["p_vs_random"] >= CHANCE_ALPHA:
        problems.append(
            f"CoT without audio {blind['choice_acc']:.1f}% is above random "
            f"(p={blind['p_vs_random']:.3g} < {CHANCE_ALPHA}): it answers from the text"
        )
    if not (blind["choice_acc"] < cot["choice_acc"] and summary["cot_vs_no_audio_p"] < MCNEMAR_ALPHA):
        problems.append(
            f"CoT without audio {blind['choice_acc']:.1f}% vs with audio {cot['choice_acc']:.1f}%: not "
            f"below it at McNemar p < {MCNEMAR_ALPHA} (p={summary['cot_vs_no_audio_p']:.3g})"
        )
    return problems


def verdict_lines(summary: dict, problems: list[str]) -> list[str]:
    """The gate verdict and the (ungated) direct-vs-CoT result, as printable lines."""
    lines = [f"FAIL: {p}" for p in problems]
    if "systems" not in summary:
        return lines
    s = summary["systems"]
    if not problems:
        lines.append(
            f"OK: base {s['base']['choice_acc']:.1f}% (instruction following {s['base']['instruction_following']:.1f}%, "
            f"random {summary['random']:.1f}%, p={summary['pre_vs_random_p']:.2g}) -> CoT {s['cot']['choice_acc']:.1f}% "
            f"(McNemar p={summary['mcnemar_p']:.2g}, vs random p={summary['post_vs_random_p']:.2g}); "
            f"CoT without audio {s['cot_no_audio']['choice_acc']:.1f}% (vs random p={s['cot_no_audio']['p_vs_random']:.2g}, "
            f"vs with audio p={summary['cot_vs_no_audio_p']:.2g}) on {summary['n_test']} held-out items"
        )
    d, c = s["direct"]["choice_acc"], s["cot"]["choice_acc"]
    winner = "CoT" if c > d else "direct" if d > c else "neither"
    lines.append(
        f"direct vs CoT (not gated): direct {d:.1f}%, CoT {c:.1f}%: {winner} "
        + (f"by {abs(c - d):.1f} pp " if winner != "neither" else "")
        + f"(exact McNemar p={summary['direct_vs_cot_p']:.2g})"
    )
    return lines


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "runs/quickstart/summary.json")
    if not path.exists():
        print(f"{path} not found: run `make quickstart` first", file=sys.stderr)
        return 1
    summary = json.loads(path.read_text())
    problems = check(summary)
    for line in verdict_lines(summary, problems):
        print(line, file=sys.stderr if line.startswith("FAIL") else sys.stdout)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
