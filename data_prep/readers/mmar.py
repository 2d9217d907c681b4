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
from data_prep.schema import Record, as_str, as_str_list, ensure_object, optional_text, require

NAME = "mmar"


def read(path: Path, cfg: SourceConfig) -> list[RawItem]:
    """Read every item of an MMAR JSONL / JSON file."""
    return read_json_items(path, id_key="id")


def group_of(item_id: str) -> str:
    """MMAR's leakage unit: the source video id."""
    return item_id.rsplit("_", 2)[0]


def to_record(raw: object, *, where: str, cfg: SourceConfig) -> Record:
    """Map one MMAR item to a Record (fields checked further by validate_record)."""
    raw = ensure_object(raw, where=where)
    item_id = as_str(require(raw, "id", where=where, item_id=None), "id", where=where, item_id=None)
    kw = {"where": where, "item_id": item_id}
    group = optional_text(raw.get("group"), "group", **kw) or group_of(item_id)
    return Record(
        id=item_id,
        audio_path=as_str(require(raw, "audio_path", **kw), "audio_path", **kw),
        question=as_str(require(raw, "question", **kw), "question", **kw),
        choices=require(raw, "choices", **kw),
        answer=as_str(require(raw, "answer", **kw), "answer", **kw),
        modality=as_str(require(raw, "modality", **kw), "modality", **kw),
        category=as_str(require(raw, "category", **kw), "category", **kw),
        sub_category=optional_text(raw.get("sub-category"), "sub-category", **kw) or "",
        group=group,
        thinking=optional_text(raw.get("thinking"), "thinking", **kw),
        cue=as_str_list(raw.get("cue"), "cue", **kw),
        language=optional_text(raw.get("language"), "language", **kw),
        source=NAME,
        tags=[],
        original=raw,
    )
