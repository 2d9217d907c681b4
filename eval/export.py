"""Export a run for the official scorers:
`python -m eval.export --run runs/eval/x --out submission.jsonl [--format mmar|mmau]`.

`--format mmar` (default): one JSONL line per item, the original benchmark record (the sample's
`source_record`, untouched) plus `answer_prediction` (the final answer as the model wrote it:
the `<answer>` span, else the whole output; "" for an empty output) and `thinking_prediction`
(the `<think>` block, else the whole output). MMAR's `evaluation.py` scores `answer_prediction`
and `evaluation_rubrics.py` judges `thinking_prediction`.

`--format mmau`: a JSON list of the original MMAU records plus `model_output` (the same answer
text), the input of MMAU's `evaluation.py`; `python -m eval.score --input <it>` reads it back.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from common.io import atomic_write_json, atomic_write_jsonl, read_complete_jsonl
from eval.mmar import answer_prediction_of

_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.IGNORECASE | re.DOTALL)


class ExportError(ValueError):
    """A run that cannot be exported (no predictions, a row without its source record)."""


def thinking_of(output: str) -> str:
    """The reasoning part of an output: the last `<think>` block, else the whole output."""
    blocks = _THINK.findall(output or "")
    return blocks[-1].strip() if blocks else (output or "").strip()


FORMATS = ("mmar", "mmau")


def _source_record(pred: dict) -> dict:
    raw = pred.get("source_record")
    if not raw:
        raise ExportError(f"id {pred.get('id')!r}: no source_record in the prediction row")
    record = json.loads(raw) if isinstance(raw, str) else dict(raw)
    record.setdefault("id", pred["id"])
    return record


def submission_row(pred: dict) -> dict:
    """MMAR submission line for one prediction row of eval.run."""
    record = _source_record(pred)
    # Recomputed from the output, so runs written before the verbatim rule export the same way.
    record["answer_prediction"] = answer_prediction_of(pred.get("output"))
    record["thinking_prediction"] = thinking_of(pred.get("output", ""))
    return record


def mmau_row(pred: dict) -> dict:
    """MMAU evaluation.py input line: the original MMAU item plus `model_output`."""
    record = _source_record(pred)
    record["model_output"] = answer_prediction_of(pred.get("output"))
    return record


def export_run(run_dir: str | Path, out: str | Path, fmt: str = "mmar") -> int:
    """Write the submission file for an eval run dir; returns the number of items."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; known: {list(FORMATS)}")
    preds_path = Path(run_dir) / "predictions.jsonl"
    if not preds_path.exists():
        raise ExportError(f"{run_dir}: no predictions.jsonl")
    preds = read_complete_jsonl(preds_path)
    if not preds:
        raise ExportError(f"{preds_path}: empty")
    # Keep the benchmark's own order where the records carry it; ids are unique per run.
    preds = sorted(preds, key=lambda p: p["id"])
    if fmt == "mmau":
        rows = [mmau_row(p) for p in preds]
        atomic_write_json(out, rows)  # MMAU's evaluation.py json.load()s a list
    else:
        rows = [submission_row(p) for p in preds]
        atomic_write_jsonl(out, rows)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="eval run dir (holds predictions.jsonl)")
    ap.add_argument("--out", required=True, help="file to write (JSONL for mmar, a JSON list for mmau)")
    ap.add_argument("--format", default="mmar", choices=FORMATS, help="whose evaluation.py reads it")
    args = ap.parse_args(argv)
    try:
        n = export_run(args.run, args.out, args.format)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} lines to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
