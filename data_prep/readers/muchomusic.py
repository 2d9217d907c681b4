"""MuChoMusic CSV: `question_id, question, correct_answer, distractor_{1,2,3}_answer, dataset,
dataset_identifier` plus optional tag columns.

Choices are listed as in the file (correct answer first), so this reader sets ALWAYS_SHUFFLE:
the renderer then shuffles each item's options with a seeded per-item RNG even when
`shuffle_options` is off, and the sample's `permutation` records the displayed order relative to
the CSV columns. The group is the music track (`dataset:dataset_identifier`): several questions
share a track. The audio path comes from an `audio_path` column when there is one, else from
`source.audio_template` formatted with the row.
"""

from __future__ import annotations

import csv
from pathlib import Path

from data_prep.config import SourceConfig
from data_prep.readers import RawItem
from data_prep.schema import (
    InvalidFieldError,
    MalformedCSVError,
    Record,
    SourceFileError,
    ensure_object,
    require,
)

NAME = "muchomusic"
ALWAYS_SHUFFLE = True  # the correct answer is always the first column
REQUIRED_COLUMNS = (
    "question_id",
    "question",
    "correct_answer",
    "distractor_1_answer",
    "distractor_2_answer",
    "distractor_3_answer",
    "dataset",
    "dataset_identifier",
)
DISTRACTORS = REQUIRED_COLUMNS[3:6]
# Columns that become Record fields rather than tags.
_MAPPED = set(REQUIRED_COLUMNS) | {"audio_path", "category"}


def read(path: Path, cfg: SourceConfig) -> list[RawItem]:
    """Read every row; a missing required column is a file-level MalformedCSVError."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise MalformedCSVError(f"missing required column(s) {missing}", where=f"{path}:1")
            items = []
            for row in reader:
                where = f"{path}:{reader.line_num}"
                item_id = (row.get("question_id") or "").strip() or None
                items.append(RawItem(where=where, item_id=item_id, raw=dict(row)))
    except csv.Error as e:
        raise MalformedCSVError(f"malformed CSV: {e}", where=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SourceFileError(f"cannot read source file: {e}", where=str(path)) from None
    return items


def _audio_path(row: dict, template: str, *, where: str, item_id: str) -> str:
    if (row.get("audio_path") or "").strip():
        return row["audio_path"].strip()
    try:
        return template.format(**row)
    except (KeyError, IndexError, ValueError) as e:
        raise InvalidFieldError(
            f"cannot format audio_template {template!r}: {e!r}",
            where=where,
            item_id=item_id,
            field="audio_template",
        ) from None


def to_record(raw: object, *, where: str, cfg: SourceConfig) -> Record:
    """Map one CSV row to a Record with choices [correct, distractor_1, ...] (empty ones dropped)."""
    row = ensure_object(raw, where=where)
    item_id = require(row, "question_id", where=where, item_id=None).strip()
    kw = {"where": where, "item_id": item_id}
    correct = require(row, "correct_answer", **kw)
    distractors = [row[c] for c in DISTRACTORS if (row.get(c) or "").strip()]
    dataset = require(row, "dataset", **kw).strip()
    track = require(row, "dataset_identifier", **kw).strip()
    tags = [f"{k}:{v.strip()}" for k, v in row.items() if k not in _MAPPED and k and (v or "").strip()]
    return Record(
        id=item_id,
        audio_path=_audio_path(row, cfg.audio_template, **kw),
        question=require(row, "question", **kw),
        choices=[correct, *distractors],
        answer=correct,
        modality="music",
        category=(row.get("category") or "").strip() or dataset,
        sub_category="",
        group=f"{dataset}:{track}",
        thinking=None,
        cue=[],
        language=None,
        source=NAME,
        tags=sorted(tags),
        original=row,
    )
