"""MMAU's published JSON list: `id, audio_id, question, choices, answer, dataset, task, split,
category, sub-category, difficulty`. No `thinking` (the cot template then fails, falls back or
skips, as configured).

Strict: what rendering or scoring reads (id, audio_id, question, choices, answer). `task`
(sound/music/speech) is the modality. Metadata (`category`, `sub-category`, `difficulty`,
`dataset`) is carried as it is: a list is joined with `|`, an odd type is a warning, never a
skip; `difficulty` and `dataset` also become tags (`difficulty:easy`), so metrics.json breaks
accuracy down by them. Every item is kept: duplicate option texts (`four / nine / fourteen /
fourteen`) and up to 10 options. The group is the audio clip: MMAU asks several questions about
one clip, and those must stay in one split.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.config import SourceConfig
from data_prep.readers import RawItem
from data_prep.readers._json import read_json_items
from data_prep.schema import Record, as_str, ensure_object, label_text, metadata_text, optional_text, require

NAME = "mmau"


def read(path: Path, cfg: SourceConfig) -> list[RawItem]:
    """Read every item of an MMAU-style JSON list (JSONL accepted too)."""
    return read_json_items(path, id_key="id")


def to_record(raw: object, *, where: str, cfg: SourceConfig) -> Record:
    """Map one MMAU item to a Record."""
    raw = ensure_object(raw, where=where)
    item_id = as_str(require(raw, "id", where=where, item_id=None), "id", where=where, item_id=None)
    kw = {"where": where, "item_id": item_id}
    warnings: list[str] = []
    audio_path = as_str(require(raw, "audio_id", **kw), "audio_id", **kw)
    tags = []
    for key in ("difficulty", "dataset"):
        value = metadata_text(raw.get(key), key, warnings)
        if value:
            tags.append(f"{key}:{value}")
    return Record(
        id=item_id,
        audio_path=audio_path,
        question=as_str(require(raw, "question", **kw), "question", **kw),
        choices=require(raw, "choices", **kw),
        answer=as_str(require(raw, "answer", **kw), "answer", **kw),
        modality=label_text(require(raw, "task", **kw), "task", warnings),
        category=label_text(raw.get("category"), "category", warnings),
        sub_category=metadata_text(raw.get("sub-category"), "sub-category", warnings) or "",
        group=audio_path,
        thinking=optional_text(raw.get("thinking"), "thinking", **kw),
        cue=[],
        language=None,
        source=NAME,
        tags=sorted(tags),
        original=raw,
        warnings=warnings,
    )
