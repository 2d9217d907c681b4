"""MMAU-style JSON list: `id, audio_id, question, choices, answer, task, category, sub-category,
difficulty`. No `thinking` (the cot template then fails, falls back or skips, as configured).

`task` (sound/music/speech) is the modality. `category` is a string or, on some items, a list
(joined with `|`, the way MMAR joins multiple languages). The group is the audio clip: MMAU asks
several questions about one clip, and those must stay in one split.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.config import SourceConfig
from data_prep.readers import RawItem
from data_prep.readers._json import read_json_items
from data_prep.schema import InvalidFieldError, Record, as_str, ensure_object, optional_text, require

NAME = "mmau"


def read(path: Path, cfg: SourceConfig) -> list[RawItem]:
    """Read every item of an MMAU-style JSON list (JSONL accepted too)."""
    return read_json_items(path, id_key="id")


def _category(value: object, *, where: str, item_id: str) -> str:
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise InvalidFieldError(
                "expected a non-empty list of strings", where=where, item_id=item_id, field="category"
            )
        return "|".join(v.strip() for v in value)
    return as_str(value, "category", where=where, item_id=item_id)


def to_record(raw: object, *, where: str, cfg: SourceConfig) -> Record:
    """Map one MMAU item to a Record."""
    raw = ensure_object(raw, where=where)
    item_id = as_str(require(raw, "id", where=where, item_id=None), "id", where=where, item_id=None)
    kw = {"where": where, "item_id": item_id}
    audio_path = as_str(require(raw, "audio_id", **kw), "audio_id", **kw)
    difficulty = optional_text(raw.get("difficulty"), "difficulty", **kw)
    return Record(
        id=item_id,
        audio_path=audio_path,
        question=as_str(require(raw, "question", **kw), "question", **kw),
        choices=require(raw, "choices", **kw),
        answer=as_str(require(raw, "answer", **kw), "answer", **kw),
        modality=as_str(require(raw, "task", **kw), "task", **kw),
        category=_category(require(raw, "category", **kw), **kw),
        sub_category=optional_text(raw.get("sub-category"), "sub-category", **kw) or "",
        group=audio_path,
        thinking=optional_text(raw.get("thinking"), "thinking", **kw),
        cue=[],
        language=None,
        source=NAME,
        tags=[f"difficulty:{difficulty}"] if difficulty else [],
        original=raw,
    )
