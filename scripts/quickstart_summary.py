"""Write runs/quickstart/summary.json from the base and tuned eval runs, and print the verdict.

Usage: python -m scripts.quickstart_summary --base runs/quickstart/eval-base \
           --tuned runs/quickstart/eval-tuned --compare runs/quickstart/compare \
           --adapter runs/quickstart/adapter --out runs/quickstart/summary.json
Every number comes from the two predictions.jsonl files, paired by item id.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.io import atomic_write_json, read_jsonl
from eval.stats import mcnemar_exact, poisson_binomial_pvalue, random_expectation


def _predictions(run_dir: Path) -> dict[str, dict]:
    return {row["id"]: row for row in read_jsonl(run_dir / "predictions.jsonl")}


def summarize(base_dir: Path, tuned_dir: Path) -> dict:
    """Pair the two runs by id and compute accuracy, McNemar and the test against guessing."""
    base, tuned = _predictions(base_dir), _predictions(tuned_dir)
    if set(base) != set(tuned):
        raise SystemExit(f"base and tuned runs cover different items ({len(base)} vs {len(tuned)})")
    ids = sorted(base)
    pre = [bool(base[i]["choice_correct"]) for i in ids]
    post = [bool(tuned[i]["choice_correct"]) for i in ids]
    guess_probs = [1.0 / len(base[i]["choices"]) for i in ids]
    return {
        "n_test": len(ids),
        "pre": {"choice_acc": 100.0 * sum(pre) / len(ids)},
        "post": {"choice_acc": 100.0 * sum(post) / len(ids)},
        "random": 100.0 * random_expectation([len(base[i]["choices"]) for i in ids]),
        "mcnemar_p": mcnemar_exact(pre, post)["p_value"],
        "post_vs_random_p": poisson_binomial_pvalue(guess_probs, sum(post)),
        "pre_vs_random_p": poisson_binomial_pvalue(guess_probs, sum(pre)),
    }


def _wandb_run_dir(adapter: Path) -> str:
    runs = sorted(adapter.glob("**/wandb/offline-run-*")) + sorted(Path("wandb").glob("offline-run-*"))
    return str(runs[-1]) if runs else "(no W&B offline run found)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, required=True)
    p.add_argument("--tuned", type=Path, required=True)
    p.add_argument("--compare", type=Path, required=True)
    p.add_argument("--adapter", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    summary = summarize(args.base, args.tuned)
    atomic_write_json(args.out, summary)
    table = (args.compare / "comparison.md").read_text(encoding="utf-8")
    print("\n" + table)
    print(
        f"Held-out choice accuracy: base {summary['pre']['choice_acc']:.1f}% -> tuned "
        f"{summary['post']['choice_acc']:.1f}% on {summary['n_test']} items "
        f"(random guessing {summary['random']:.1f}%)\n"
        f"  exact McNemar p = {summary['mcnemar_p']:.3g}; tuned vs random (Poisson-binomial) "
        f"p = {summary['post_vs_random_p']:.3g}\n"
    )
    print(f"summary : {args.out}")
    print(f"table   : {args.compare / 'comparison.md'} (+ .csv, .json)")
    print(f"chart   : {args.compare / 'accuracy_by_layer.png'}")
    print(f"adapter : {args.adapter}")
    print(f"W&B run : {_wandb_run_dir(args.adapter)}  (upload later with `wandb sync <dir>`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
