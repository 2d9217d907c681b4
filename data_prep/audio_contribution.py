"""Split a prepared dataset by how much the audio contributes, as AudioMCQ does (arXiv 2509.21060):

    python -m data_prep.audio_contribution --model M [--adapter A] --data D --out OUT [--splits train]

Model M answers every item of the `--splits` twice with `python -m eval.run`: with its clip and
with the audio removed from the prompt (`--audio none`; `--without silence` replaces the clip by
silence instead, as AudioMCQ did with 30 s of it). An item M answers correctly without the
audio is *weak* audio-contribution (its question or options give it away, or M guessed right); the
others are *strong* (without the audio, M does not get them). Written: `OUT/weak` and `OUT/strong`,
each a prepared dataset (same layout, manifest.json last) whose `--splits` hold only that subset and
whose other splits are copied as they are (a held-out test split stays whole). AudioMCQ trains SFT
on the weak items and GRPO on the strong ones:

    python train.py --config configs/<model>/cot_lora.yaml --dataset_dir OUT/weak
    python train.py --config configs/<model>/grpo_lora.yaml --dataset_dir OUT/strong --init_adapter <SFT run>

Each manifest gains `audio_contribution`: the source dataset and its hash, the model (and adapter),
the rule, and per split the weak / strong counts per modality and per category (layer), each with
how many of them M answered correctly *with* the audio; the dataset card shows the same table.

Why eval.run runs as a subprocess: data_prep sits below eval in the layers (common <- models <-
{data_prep, train, eval}; tests/test_layering.py), and the two eval runs then come with eval.run's
own batching, answer extraction and resume (rerunning the command skips finished items; the runs
live in `--eval_dir`, default `<OUT>-evals`), and its leakage guard: an adapter trained on the
split being classified is refused unless `--allow_overlap` is given.

A model that answers nothing correctly without the audio gives an empty weak subset (said in the
log; its dataset lacks that split, as data_prep never writes an empty split); one that answers
every item without it gives no strong subset, an error naming the model. On few-option questions one greedy run also sorts lucky guesses into weak
(a blind guesser gets half of the 2-option items right): read the counts against the chance level.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from common.io import read_complete_jsonl, read_jsonl, sha256_text
from common.logging_utils import setup_logging
from common.paths import REPO_ROOT
from data_prep.prepare import per_split_counts, write_dataset
from data_prep.splits import split_summary

log = logging.getLogger(__name__)

SUBSETS = ("weak", "strong")


def rule(without: str) -> str:
    return f"weak: answered correctly (choice_acc) with eval.run --audio {without}; strong: the others"


class ContributionError(ValueError):
    """A split that cannot be divided (no strong items, missing predictions, unknown split)."""


def eval_command(model: str, adapter: str | None, data: Path, split: str, out: Path, audio: str,
                 extra: Sequence[str]) -> list[str]:  # fmt: skip
    """The `python -m eval.run` command for one of the two runs."""
    cmd = [sys.executable, "-m", "eval.run", "--model", model, "--data", str(data), "--split", split,
           "--out", str(out), "--audio", audio, *extra]  # fmt: skip
    return cmd + (["--adapter", adapter] if adapter else [])


def run_eval(cmd: list[str]) -> None:
    """Run eval.run with its output on this terminal: its progress bar is the progress of a split's
    classification (hours for a 7B model over a large train split)."""
    log.info("+ %s", shlex.join(cmd))
    proc = subprocess.run(cmd, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise ContributionError(f"eval.run exited {proc.returncode} (its output is above): {shlex.join(cmd)}")


def correct_by_id(run_dir: Path, ids: Sequence[str]) -> dict[str, bool]:
    """{item id: choice_correct} from an eval run's predictions.jsonl; every id must be there."""
    preds = {p["id"]: bool(p["choice_correct"]) for p in read_complete_jsonl(run_dir / "predictions.jsonl")}
    missing = [i for i in ids if i not in preds]
    if missing:
        raise ContributionError(f"{run_dir}: no prediction for {len(missing)} item(s), e.g. {missing[:3]}")
    return {i: preds[i] for i in ids}


def classify(rows: Sequence[dict], with_audio: dict[str, bool], without_audio: dict[str, bool],
             model: str, split: str) -> dict[str, list[dict]]:  # fmt: skip
    """{"weak": rows answered without the audio, "strong": the others}; no strong row is an error."""
    out: dict[str, list[dict]] = {"weak": [], "strong": []}
    for row in rows:
        out["weak" if without_audio[row["id"]] else "strong"].append(row)
    if not out["strong"]:
        raise ContributionError(
            f"model {model!r} answers all {len(rows)} items of split {split!r} correctly without the audio: "
            "no strong audio-contribution items (do the questions give the answers away?)"
        )
    if not out["weak"]:
        log.warning("model %r answers none of the %d items of split %r without the audio: the weak subset "
                    "is empty", model, len(rows), split)  # fmt: skip
    return out


def subset_counts(subsets: dict[str, list[dict]], with_audio: dict[str, bool]) -> dict:
    """Per subset, per modality and per category (layer): items, and those answered with the audio."""
    counts: dict = {}
    for name, rows in subsets.items():
        by: dict = {"modality": defaultdict(lambda: [0, 0]), "category": defaultdict(lambda: [0, 0])}
        for row in rows:
            for field in by:
                cell = by[field][str(row.get(field))]
                cell[0] += 1
                cell[1] += with_audio[row["id"]]
        counts[name] = {
            "items": len(rows),
            "correct_with_audio": sum(with_audio[r["id"]] for r in rows),
            **{
                f"by_{f}": {k: {"items": v[0], "correct_with_audio": v[1]} for k, v in sorted(c.items())}
                for f, c in by.items()
            },  # fmt: skip
        }
    return counts


def subset_manifest(manifest: dict, rows: dict[str, list[dict]], subset: str, contribution: dict) -> dict:
    """The source manifest with `rows`' splits, counts and a new hash; `audio_contribution` added."""
    out = json.loads(json.dumps(manifest))
    out["name"] = f"{manifest['name']}-{subset}-audio"
    out["audio_contribution"] = {**contribution, "subset": subset}
    out["hash"] = sha256_text(json.dumps(out["audio_contribution"], sort_keys=True))
    out["splits"] = {split: split_summary(r) for split, r in rows.items()}
    counts = out["counts"]
    counts.update(per_split_counts(rows))
    counts["samples"] = sum(counts["per_split"].values())
    counts["text_only"] = sum(counts["per_split_text_only"].values())
    return out


def split_dataset(data: Path, out: Path, *, model: str, adapter: str | None = None, splits: Sequence[str] = ("train",),
                  without: str = "none", eval_dir: Path | None = None,
                  eval_args: Sequence[str] = ()) -> dict[str, Path]:  # fmt: skip
    """Run the two evaluations per split and write `out/weak` and `out/strong`; returns their paths."""
    data, out = Path(data).resolve(), Path(out)
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    unknown = sorted(set(splits) - set(manifest["splits"]))
    if unknown:
        raise ContributionError(f"{data}: no split(s) {unknown}; it has {sorted(manifest['splits'])}")
    eval_dir = Path(eval_dir) if eval_dir else out.parent / f"{out.name}-evals"
    rows = {split: list(read_jsonl(data / f"{split}.jsonl")) for split in manifest["splits"]}
    per_subset: dict[str, dict[str, list[dict]]] = {name: dict(rows) for name in SUBSETS}
    counts = {}
    for split in splits:
        ids = [r["id"] for r in rows[split]]
        answers = {}
        for audio in ("real", without):
            run_dir = eval_dir / f"{split}-{audio}"
            run_eval(eval_command(model, adapter, data, split, run_dir, audio, eval_args))
            answers[audio] = correct_by_id(run_dir, ids)
        subsets = classify(rows[split], answers["real"], answers[without], model, split)
        for name in SUBSETS:
            per_subset[name][split] = subsets[name]
        counts[split] = subset_counts(subsets, answers["real"])
        log.info(
            "%s: %d weak, %d strong audio-contribution items",
            split,
            len(subsets["weak"]),
            len(subsets["strong"]),
        )
    contribution = {"source": str(data), "source_hash": manifest["hash"], "model": model, "adapter": adapter,
                    "rule": rule(without), "splits": list(splits), "eval_dir": str(eval_dir), "counts": counts}  # fmt: skip
    written = {}
    for name in SUBSETS:
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        kept = {split: r for split, r in per_subset[name].items() if r}  # as data_prep: no empty split
        write_dataset(target, kept, subset_manifest(manifest, kept, name, contribution))
        written[name] = target
    return written


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """CLI entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="base model (hub id or local path) that answers the items")
    p.add_argument("--adapter", default=None, help="PEFT adapter on top of --model (optional)")
    p.add_argument("--data", type=Path, required=True, help="prepared dataset dir (holds manifest.json)")
    p.add_argument("--out", type=Path, required=True, help="folder for the weak/ and strong/ datasets")
    p.add_argument("--splits", default="train", help="comma-separated splits to divide; others are copied")
    p.add_argument(
        "--without",
        choices=("none", "silence"),
        default="none",
        help="the run without the clip: eval.run --audio none (no audio block) or silence",
    )
    p.add_argument("--eval_dir", type=Path, default=None, help="where the eval runs go (default <out>-evals)")
    p.add_argument("--batch_size", type=int, default=16, help="eval.run --batch_size")
    p.add_argument("--max_new_tokens", type=int, default=256, help="eval.run --max_new_tokens")
    p.add_argument(
        "--allow_overlap", action="store_true", help="eval.run --allow_overlap (adapter trained on it)"
    )
    args = p.parse_args(argv)
    setup_logging()
    eval_args = ["--batch_size", str(args.batch_size), "--max_new_tokens", str(args.max_new_tokens)]
    eval_args += ["--allow_overlap", "true"] if args.allow_overlap else []
    splits = [s for s in args.splits.split(",") if s]
    written = split_dataset(args.data, args.out, model=args.model, adapter=args.adapter, splits=splits,
                            without=args.without, eval_dir=args.eval_dir, eval_args=eval_args)  # fmt: skip
    for name, path in written.items():
        log.info("wrote %s: %s", name, path)
    return written


if __name__ == "__main__":
    try:
        main()
    except ContributionError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
