"""Score a predictions file: `python -m eval.score --input preds.jsonl --output metrics.json`.

The input is what MMAR's official `evaluation.py` takes (MMAR metadata fields plus
`answer_prediction`, the answer as the model wrote it), what MMAU's `evaluation.py` takes (a JSON
list of MMAU items plus `model_output`; the breakdown is then task = modality, difficulty and
sub-category), or an `eval.run` predictions.jsonl. `mmar_acc` is the official token rule on the
prediction text (MMAU's rule is the same function); `choice_acc` is "the option read from the
prediction has the answer's text".

Missing predictions: a row without the prediction key (or with null) is wrong and counted in
`no_prediction`; the official scripts skip such a row, shrinking their denominator, while an empty
string is wrong in both (eval.export writes "" for an empty output, so the numbers agree).
`--reference meta.jsonl` adds the reference items missing from the input as "no prediction";
`--reference <eval run dir>` demands exactly the run's items. An input from another benchmark than
the reference (missing ids) is an error naming them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from common.io import atomic_write_json, sha256_file
from common.logging_utils import setup_logging
from eval.extract import extract_choice
from eval.metrics import UNKNOWN, ScoredItem, compute_metrics, summary_lines
from eval.mmar import mmar_correct

log = logging.getLogger(__name__)

MMAR_FIELDS = {
    "id", "audio_path", "question", "choices", "answer", "modality", "category", "sub-category",
    "language", "source", "url", "timestamp", "thinking", "cue", "rubric",
}  # fmt: skip
MMAU_FIELDS = {"audio_id", "dataset", "task", "split", "difficulty", "model_output", "match"}
PREDICTION_FIELDS = {"answer_prediction", "thinking_prediction"}
# Fields eval.run writes to predictions.jsonl (see eval/run.py `prediction_row`).
RUN_FIELDS = {
    "group", "sub_category", "tags", "answer_index", "answer_letter", "output", "pred_index",
    "pred_letter", "method", "choice_correct", "mmar_correct", "audio_mode", "n_prompt_tokens",
    "n_new_tokens", "truncated", "source_record", "template",
}  # fmt: skip
KNOWN_FIELDS = MMAR_FIELDS | MMAU_FIELDS | PREDICTION_FIELDS | RUN_FIELDS


class PredictionsError(ValueError):
    """A predictions file that cannot be scored; the message names the line, id and field."""


def load_rows(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, row) pairs from a JSONL file, or from a JSON list (index + 1 as 'line')."""
    path = Path(path)
    if not path.exists():
        raise PredictionsError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PredictionsError(f"{path}: malformed JSON: {e}") from None
        return [(i + 1, r) for i, r in enumerate(data)]
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise PredictionsError(f"{path}:{lineno}: malformed JSON: {e.msg}") from None
    return rows


def _check_row(row: object, where: str, allow_unknown: bool) -> str:
    """Validate one row's shape; returns its id."""
    if not isinstance(row, dict):
        raise PredictionsError(f"{where}: expected a JSON object, got {type(row).__name__}")
    item_id = row.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise PredictionsError(f"{where}: missing or empty 'id'")
    where = f"{where} (id {item_id!r})"
    unknown = sorted(set(row) - KNOWN_FIELDS)
    if unknown and not allow_unknown:
        raise PredictionsError(
            f"{where}: unknown field(s) {unknown}; expected MMAR fields plus answer_prediction "
            "(pass --allow_unknown_fields to ignore extra fields)"
        )
    choices = row.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise PredictionsError(f"{where}: field 'choices' must be a list of at least 2 strings")
    if not isinstance(row.get("answer"), str):
        raise PredictionsError(f"{where}: missing field 'answer' (the correct option's text)")
    key = prediction_key(row)
    pred = row.get(key)
    if pred is not None and not isinstance(pred, str):
        raise PredictionsError(f"{where}: field {key!r} must be a string or null")
    return item_id


def prediction_key(row: dict) -> str:
    """`answer_prediction` (MMAR, eval.run) or `model_output` (MMAU's evaluation.py input)."""
    return "model_output" if "model_output" in row and "answer_prediction" not in row else "answer_prediction"


def _answer_known(row: dict) -> bool:
    return row["answer"].strip() in [c.strip() for c in row["choices"]]


def _difficulty(row: dict) -> str | None:
    value = row.get("difficulty")
    if isinstance(value, str) and value.strip():
        return value.strip()
    tagged = [t.split(":", 1)[1] for t in row.get("tags") or [] if t.startswith("difficulty:")]
    return tagged[0] if tagged else None


def item_from_row(row: dict) -> ScoredItem:
    """Score one validated row: mmar_acc always recomputed, choice via `pred_index` or extraction.

    choice_acc compares texts, so with a repeated answer text either of its letters is correct.
    """
    pred = row.get(prediction_key(row))
    has_pred = isinstance(pred, str) and bool(pred.strip())
    if isinstance(row.get("output"), str):
        # eval.run rows: "no prediction" means the model produced no text at all; an output with
        # no parsable option is an instruction-following failure, reported separately.
        has_pred = bool(row["output"].strip())
    if "pred_index" in row:  # written by eval.run from the full output
        pred_index, method = row["pred_index"], row.get("method") or "none"
    elif has_pred:
        ext = extract_choice(pred, row["choices"])
        pred_index, method = ext.index, ext.method
    else:
        pred_index, method = None, "none"
    sub = row.get("sub-category", row.get("sub_category"))
    chosen = row["choices"][pred_index] if isinstance(pred_index, int) else None
    return ScoredItem(
        id=row["id"],
        n_choices=len(row["choices"]),
        mmar_correct=mmar_correct(row["answer"], pred, row["choices"]),
        choice_correct=(chosen is not None and chosen.strip() == row["answer"].strip())
        if _answer_known(row)
        else None,
        parsed=pred_index is not None,
        has_prediction=has_pred,
        method=method,
        modality=row.get("modality") or row.get("task") or UNKNOWN,
        difficulty=_difficulty(row),
        category=row.get("category") or UNKNOWN,
        sub_category=sub or UNKNOWN,
        tags=list(row.get("tags") or []),
    )


def score_rows(
    rows: list[tuple[int, dict]], *, source: str = "input", reference: list[tuple[int, dict]] | None = None,
    allow_unknown: bool = False, require_all: bool = False,
) -> list[ScoredItem]:  # fmt: skip
    """Validate and score rows; duplicate ids and ids outside `reference` are errors."""
    seen: dict[str, int] = {}
    by_id: dict[str, dict] = {}
    for lineno, row in rows:
        item_id = _check_row(row, f"{source}:{lineno}", allow_unknown)
        if item_id in seen:
            raise PredictionsError(
                f"{source}:{lineno}: duplicate id {item_id!r} (first on line {seen[item_id]})"
            )
        seen[item_id] = lineno
        by_id[item_id] = row
    if reference is None:
        return [item_from_row(r) for r in by_id.values()]
    ref_ids = []
    for lineno, ref in reference:
        ref_ids.append(_check_row(ref, f"reference:{lineno}", True))
    missing = [i for i in ref_ids if i not in by_id]
    if missing and (require_all or len(missing) == len(ref_ids)):
        raise PredictionsError(
            f"{source}: {len(missing)} of the reference's {len(ref_ids)} id(s) are missing "
            f"(a prediction file of another benchmark or split?): {missing[:10]}"
        )
    extra = sorted(set(by_id) - set(ref_ids))
    if extra:
        raise PredictionsError(f"{source}: {len(extra)} id(s) not in the reference, e.g. {extra[:5]}")
    ref_rows = dict(zip(ref_ids, (r for _, r in reference)))
    # A reference item without a prediction is scored as an empty prediction (wrong, counted).
    return [item_from_row(by_id.get(i, {**ref_rows[i], "answer_prediction": None})) for i in ref_ids]


def score_file(
    input_path: str | Path, reference: str | Path | None = None, allow_unknown: bool = False
) -> dict:
    """metrics.json content for a predictions file (reference: a metadata file or an eval run dir)."""
    rows = load_rows(input_path)
    run_dir = reference is not None and Path(reference).is_dir()
    ref_file = Path(reference) / "predictions.jsonl" if run_dir else reference
    ref = load_rows(ref_file) if reference else None
    items = score_rows(
        rows, source=str(input_path), reference=ref, allow_unknown=allow_unknown, require_all=run_dir
    )
    metrics = compute_metrics(items)
    metrics["input"] = {"path": str(input_path), "sha256": sha256_file(input_path)}
    metrics["prediction_key"] = prediction_key(rows[0][1]) if rows and isinstance(rows[0][1], dict) else None
    if reference:
        metrics["reference"] = {"path": str(ref_file), "sha256": sha256_file(ref_file)}
    return metrics


def mmau_lines(metrics: dict) -> list[str]:
    """MMAU's breakdown of `mmar_acc` (the same rule): task, difficulty, sub-category."""
    table = metrics["mmar_acc"]
    lines = []
    for title, key in (("task", "modality"), ("difficulty", "difficulty"), ("sub-category", "sub-category")):
        lines.append(f"{title}-wise accuracy:")
        for value, c in table.get(key, {}).items():
            lines.append(f"  {value}: {c['accuracy']:.2f}% over {c['total']} samples")
    return lines


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    ap = argparse.ArgumentParser(prog="python -m eval.score", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--input", required=True, help="JSONL (or JSON list) with MMAR fields + answer_prediction"
    )
    ap.add_argument("--output", required=True, help="where to write metrics.json")
    ap.add_argument(
        "--reference",
        help="MMAR-meta.jsonl (items missing from --input count as wrong) or an eval run dir "
        "(--input must hold exactly its items)",
    )
    ap.add_argument("--allow_unknown_fields", action="store_true", help="ignore fields we do not know")
    args = ap.parse_args(argv)
    try:
        metrics = score_file(args.input, args.reference, args.allow_unknown_fields)
    except PredictionsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    atomic_write_json(args.output, metrics)
    lines = summary_lines(metrics)
    if metrics.get("prediction_key") == "model_output":
        lines += mmau_lines(metrics)
    for line in lines:
        print(line)
    log.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
