"""MMAR metadata (JSONL, or a JSON list): the real benchmark file and the synthetic generator's.

Group = the source video id `id.rsplit('_', 2)[0]` (ids end in `_HH-MM-SS_HH-MM-SS`; YouTube
ids may themselves contain `_`), so clips cut from one video never straddle two splits. A
`group` field, written by data_prep.synth for variants of one generated scene, wins.
"""

from __future__ import annotations

from pathlib import Path

from data_prep.config import SourceConfig
from data_prep.readers import RawItem
from data_prep.readers._json import read_json_items
from data_prep.schema import (
    Record,
    as_str,
    ensure_object,
    label_text,
    metadata_list,
    metadata_text,
    optional_text,
    require,
)

NAME = "mmar"


def read(path: Path, cfg: SourceConfig) -> list[RawItem]:
    """Read every item of an MMAR JSONL / JSON file."""
    return read_json_items(path, id_key="id")


def group_of(item_id: str) -> str:
    """MMAR's leakage unit: the source video id."""
    return item_id.rsplit("_", 2)[0]


def to_record(raw: object, *, where: str, cfg: SourceConfig) -> Record:
    """Map one MMAR item to a Record (fields checked further by validate_record).

    Strict: what rendering or scoring reads (id, audio_path, question, choices, answer, thinking).
    Lenient: metadata (sub-category, language, cue, group; modality/category must be present but
    an odd type reads as "unknown"); odd values become warnings, never a skipped item.
    """
    raw = ensure_object(raw, where=where)
    item_id = as_str(require(raw, "id", where=where, item_id=None), "id", where=where, item_id=None)
    kw = {"where": where, "item_id": item_id}
    warnings: list[str] = []
    group = metadata_text(raw.get("group"), "group", warnings) or group_of(item_id)
    return Record(
        id=item_id,
        audio_path=as_str(require(raw, "audio_path", **kw), "audio_path", **kw),
        question=as_str(require(raw, "question", **kw), "question", **kw),
        choices=require(raw, "choices", **kw),
        answer=as_str(require(raw, "answer", **kw), "answer", **kw),
        modality=label_text(require(raw, "modality", **kw), "modality", warnings),
        category=label_text(require(raw, "category", **kw), "category", warnings),
        sub_category=metadata_text(raw.get("sub-category"), "sub-category", warnings) or "",
        group=group,
        thinking=optional_text(raw.get("thinking"), "thinking", **kw),
        cue=metadata_list(raw.get("cue"), "cue", warnings),
        language=metadata_text(raw.get("language"), "language", warnings),
        source=NAME,
        tags=[],
        original=raw,
        warnings=warnings,
    )
