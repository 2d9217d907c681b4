"""The project's own canonical JSONL: one `Record` per line (for users' custom data).

Required: id, audio_path, question, choices, answer, modality, category. Optional: sub_category,
group (default: the id), thinking, cue, language, tags. `original` defaults to the line itself.

Text-only items: `audio_path` null or left out (a blank string is an error). They render without
an audio block, skip the audio checks and are counted (`text_only` in the manifest); their
modality defaults to "text". Mixing some in helps audio reasoning (Omni-R1). Only this reader
makes them: the benchmark readers (MMAR, MMAU, MuChoMusic) always require a clip.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.config import SourceConfig
from data_prep.readers import RawItem
from data_prep.readers._json import read_json_items
from data_prep.schema import (
    TEXT_MODALITY,
    InvalidFieldError,
    Record,
    as_str,
    as_str_list,
    ensure_object,
    optional_text,
    require,
)

NAME = "canonical"
_FIELDS = set(Record.__dataclass_fields__)


def read(path: Path, cfg: SourceConfig) -> list[RawItem]:
    """Read every line of a canonical JSONL file (a JSON list is accepted too)."""
    return read_json_items(path, id_key="id")


def to_record(raw: object, *, where: str, cfg: SourceConfig) -> Record:
    """Map one canonical item to a Record; unknown keys are an error (they are likely typos)."""
    raw = ensure_object(raw, where=where)
    item_id = as_str(require(raw, "id", where=where, item_id=None), "id", where=where, item_id=None)
    kw = {"where": where, "item_id": item_id}
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise InvalidFieldError(f"unknown field(s); known: {sorted(_FIELDS)}", field=",".join(unknown), **kw)
    original = raw.get("original")
    if original is not None and not isinstance(original, dict):
        raise InvalidFieldError("expected an object", field="original", **kw)
    audio_path = _audio_path(raw, **kw)
    if audio_path is None:  # text-only: no clip, so no modality to require
        modality = optional_text(raw.get("modality"), "modality", **kw) or TEXT_MODALITY
    else:
        modality = as_str(require(raw, "modality", **kw), "modality", **kw)
    return Record(
        id=item_id,
        audio_path=audio_path,
        question=as_str(require(raw, "question", **kw), "question", **kw),
        choices=require(raw, "choices", **kw),
        answer=as_str(require(raw, "answer", **kw), "answer", **kw),
        modality=modality,
        category=as_str(require(raw, "category", **kw), "category", **kw),
        sub_category=optional_text(raw.get("sub_category"), "sub_category", **kw) or "",
        group=optional_text(raw.get("group"), "group", **kw) or item_id,
        thinking=optional_text(raw.get("thinking"), "thinking", **kw),
        cue=as_str_list(raw.get("cue"), "cue", **kw),
        language=optional_text(raw.get("language"), "language", **kw),
        source=NAME,
        tags=as_str_list(raw.get("tags"), "tags", **kw),
        original=original if original is not None else raw,
    )


def _audio_path(raw: dict, *, where: str, item_id: str) -> str | None:
    """The clip's path, or None for a text-only item (`audio_path` null or absent).

    A blank string is refused rather than read as text-only: it is more likely a lost path than a
    decision to train without audio.
    """
    value = raw.get("audio_path")
    if value is None:
        return None
    path = as_str(value, "audio_path", where=where, item_id=item_id)
    if not path.strip():
        raise InvalidFieldError(
            "empty; give the clip's path, or null (or leave the field out) for a text-only item",
            where=where,
            item_id=item_id,
            field="audio_path",
        )
    return path
