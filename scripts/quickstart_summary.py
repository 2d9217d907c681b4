"""Write runs/quickstart/summary.json from the quickstart's five eval runs, and print the verdict.

Usage: python -m scripts.quickstart_summary --base runs/quickstart/eval-base \
           --direct runs/quickstart/eval-direct --cot runs/quickstart/eval-cot \
           --cot_no_audio runs/quickstart/eval-cot-no-audio --cot_noise runs/quickstart/eval-cot-noise \
           --compare runs/quickstart/compare --adapter runs/quickstart/cot-adapter \
           --out runs/quickstart/summary.json
Every number comes from the five predictions.jsonl files, paired by item id. `pre` is the base,
`post` the chain-of-thought LoRA (the fields the one-adapter quickstart wrote, kept for readers of
older summaries); `systems` holds all five.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.io import atomic_write_json, read_jsonl
from eval.stats import mcnemar_exact, poisson_binomial_pvalue, random_expectation
from scripts.check_quickstart import check, verdict_lines

SYSTEMS = ("base", "direct", "cot", "cot_no_audio", "cot_noise")


def _predictions(run_dir: Path) -> dict[str, dict]:
    path = Path(run_dir) / "predictions.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} not found: is {run_dir} an eval.run output dir?")
    return {row["id"]: row for row in read_jsonl(path)}


def _paired(runs: dict[str, dict[str, dict]]) -> list[str]:
    """The shared ids; every run must cover the same items with the same number of options."""
    first_name, first = next(iter(runs.items()))
    for name, preds in runs.items():
        if set(preds) != set(first):
            raise SystemExit(
                f"{name} and {first_name} cover different items ({len(preds)} vs {len(first)}): "
                "evaluate every system on the same split"
            )
        for i, row in preds.items():
            if len(row["choices"]) != len(first[i]["choices"]):
                raise SystemExit(
                    f"item {i}: {len(row['choices'])} options in {name}, {len(first[i]['choices'])} in {first_name}"
                )
    return sorted(first)


def _system(rows: list[dict], guess_probs: list[float]) -> dict:
    correct = sum(bool(r["choice_correct"]) for r in rows)
    parsed = sum(r.get("pred_index") is not None for r in rows)
    return {
        "choice_acc": 100.0 * correct / len(rows),
        "instruction_following": 100.0 * parsed / len(rows),
        "p_vs_random": poisson_binomial_pvalue(guess_probs, correct),
    }


def summarize(run_dirs: dict[str, Path]) -> dict:
    """Accuracy, instruction following and the paired tests for the five systems in `SYSTEMS`."""
    missing = [s for s in SYSTEMS if s not in run_dirs]
    if missing:
        raise SystemExit(f"missing eval runs for {missing}")
    runs = {name: _predictions(run_dirs[name]) for name in SYSTEMS}
    ids = _paired(runs)
    n_choices = [len(runs["base"][i]["choices"]) for i in ids]
    guess_probs = [1.0 / k for k in n_choices]
    flags = {name: [bool(runs[name][i]["choice_correct"]) for i in ids] for name in SYSTEMS}
    systems = {name: _system([runs[name][i] for i in ids], guess_probs) for name in SYSTEMS}
    return {
        "n_test": len(ids),
        "pre": {"choice_acc": systems["base"]["choice_acc"]},
        "post": {"choice_acc": systems["cot"]["choice_acc"]},
        "random": 100.0 * random_expectation(n_choices),
        "mcnemar_p": mcnemar_exact(flags["base"], flags["cot"])["p_value"],
        "post_vs_random_p": systems["cot"]["p_vs_random"],
        "pre_vs_random_p": systems["base"]["p_vs_random"],
        "systems": systems,
        "cot_vs_no_audio_p": mcnemar_exact(flags["cot_no_audio"], flags["cot"])["p_value"],
        "cot_vs_noise_p": mcnemar_exact(flags["cot_noise"], flags["cot"])["p_value"],
        "direct_vs_cot_p": mcnemar_exact(flags["direct"], flags["cot"])["p_value"],
    }


def _wandb_run_dir(adapter: Path) -> str:
    runs = sorted(adapter.glob("**/wandb/offline-run-*")) + sorted(Path("wandb").glob("offline-run-*"))
    return str(runs[-1]) if runs else "(no W&B offline run found)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in SYSTEMS:
        p.add_argument(f"--{name}", type=Path, required=True, help=f"eval.run dir of the {name} system")
    p.add_argument("--compare", type=Path, required=True, help="eval.compare output dir")
    p.add_argument("--adapter", type=Path, required=True, help="the CoT adapter (for its W&B run)")
    p.add_argument("--out", type=Path, required=True, help="summary.json to write")
    args = p.parse_args(argv)

    summary = summarize({name: getattr(args, name) for name in SYSTEMS})
    atomic_write_json(args.out, summary)
    print("\n" + (args.compare / "comparison.md").read_text(encoding="utf-8"))
    print(f"Held-out items: {summary['n_test']}; random guessing {summary['random']:.1f}%")
    print(f"{'system':<14}{'choice_acc':>11}{'instr. following':>18}{'p vs random':>13}")
    for name, s in summary["systems"].items():
        print(
            f"{name:<14}{s['choice_acc']:>10.1f}%{s['instruction_following']:>17.1f}%{s['p_vs_random']:>13.2g}"
        )
    print()
    problems = check(summary)
    for line in verdict_lines(summary, problems):
        print(line)
    print(f"\nsummary : {args.out}")
    print(f"table   : {args.compare / 'comparison.md'} (+ .csv, .json)")
    print(f"chart   : {args.compare / 'accuracy_by_layer.png'}")
    print(f"adapter : {args.adapter}")
    print(f"W&B run : {_wandb_run_dir(args.adapter)}  (upload later with `wandb sync <dir>`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
