"""MMAR submission export: `python -m eval.export --run runs/eval/x --out submission.jsonl`.

One line per item: the original benchmark record (the sample's `source_record`, untouched) plus
`answer_prediction` (the chosen option's text, "" when no option could be extracted) and
`thinking_prediction` (the model's reasoning: the `<think>` block, else the whole output).
This is the input MMAR's own `evaluation.py` scores.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from common.io import atomic_write_jsonl, read_complete_jsonl

_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.IGNORECASE | re.DOTALL)


class ExportError(ValueError):
    """A run that cannot be exported (no predictions, a row without its source record)."""


def thinking_of(output: str) -> str:
    """The reasoning part of an output: the last `<think>` block, else the whole output."""
    blocks = _THINK.findall(output or "")
    return blocks[-1].strip() if blocks else (output or "").strip()


def submission_row(pred: dict) -> dict:
    """MMAR submission line for one prediction row of eval.run."""
    raw = pred.get("source_record")
    if not raw:
        raise ExportError(f"id {pred.get('id')!r}: no source_record in the prediction row")
    record = json.loads(raw) if isinstance(raw, str) else dict(raw)
    record.setdefault("id", pred["id"])
    record["answer_prediction"] = pred.get("answer_prediction") or ""
    record["thinking_prediction"] = thinking_of(pred.get("output", ""))
    return record


def export_run(run_dir: str | Path, out: str | Path) -> int:
    """Write the submission JSONL for an eval run dir; returns the number of lines."""
    preds_path = Path(run_dir) / "predictions.jsonl"
    if not preds_path.exists():
        raise ExportError(f"{run_dir}: no predictions.jsonl")
    preds = read_complete_jsonl(preds_path)
    if not preds:
        raise ExportError(f"{preds_path}: empty")
    # Keep the benchmark's own order where the records carry it; ids are unique per run.
    rows = [submission_row(p) for p in sorted(preds, key=lambda p: p["id"])]
    atomic_write_jsonl(out, rows)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="eval run dir (holds predictions.jsonl)")
    ap.add_argument("--out", required=True, help="submission JSONL to write")
    args = ap.parse_args(argv)
    try:
        n = export_run(args.run, args.out)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} lines to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
