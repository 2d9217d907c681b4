"""One reader per source format, all mapping into `data_prep.schema.Record`.

A reader module defines `NAME`, `read(path, cfg) -> list[RawItem]` (file-level problems raise)
and `to_record(raw, *, where, cfg) -> Record` (item-level problems raise a DataError that the
caller turns into a counted skip, or an error under `strict`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from data_prep.config import SourceConfig
from data_prep.schema import (
    DataError,
    InvalidFieldError,
    Record,
    SourceFileError,
    UnknownSourceError,
    check_unique_ids,
    validate_record,
)

READERS = ("mmar", "mmau", "muchomusic", "canonical")


@dataclass
class RawItem:
    """One untouched source item and where it was found (`file:line` or `file[index]`)."""

    where: str
    item_id: str | None
    raw: dict


@dataclass
class Skip:
    """An item left out of the dataset, with the reason shown in the manifest and the card."""

    id: str | None
    where: str
    reason: str

    def to_dict(self) -> dict:
        return {"id": self.id, "where": self.where, "reason": self.reason}


def get_reader(name: str) -> ModuleType:
    """Import `data_prep.readers.<name>`; an unknown name is an UnknownSourceError."""
    if name not in READERS:
        raise UnknownSourceError(
            f"unknown source reader {name!r}; known readers: {list(READERS)}", field="source.reader"
        )
    return importlib.import_module(f"data_prep.readers.{name}")


def load_records(cfg: SourceConfig, *, strict: bool = False) -> tuple[list[Record], list[Skip]]:
    """Read and validate every item of the source; bad items become Skips (errors when strict).

    Duplicate ids are checked on the raw items first, so a duplicate is reported even when one
    copy would have been skipped for another reason.
    """
    reader = get_reader(cfg.reader)
    path = Path(cfg.path)
    if not path.is_file():
        raise SourceFileError("source file not found", where=str(path), field="source.path")
    items = reader.read(path, cfg)
    check_unique_ids([(it.where, it.item_id) for it in items if it.item_id is not None])
    records: list[Record] = []
    skips: list[Skip] = []
    for it in items:
        try:
            check_encodable(it.raw, where=it.where, item_id=it.item_id)
            rec = validate_record(reader.to_record(it.raw, where=it.where, cfg=cfg), where=it.where)
        except DataError as e:
            if strict:
                raise
            skips.append(Skip(id=it.item_id, where=it.where, reason=e.reason))
            continue
        records.append(rec)
    return records, skips


def check_encodable(value: object, *, where: str, item_id: str | None, field: str = "") -> None:
    """Refuse text that cannot be written back as UTF-8, naming the field that holds it.

    JSON may spell a lone surrogate (`"\\ud800"`); Python reads it into a str that every later
    write (samples JSONL, Arrow, the card) fails on, which aborted the whole run mid-write.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidFieldError(
                f"text is not valid Unicode ({e.reason} at character {e.start})",
                where=where,
                item_id=item_id,
                field=field or None,
            ) from None
    elif isinstance(value, dict):
        for key, inner in value.items():
            check_encodable(str(key), where=where, item_id=item_id, field=field or "<key>")
            check_encodable(
                inner, where=where, item_id=item_id, field=f"{field}.{key}" if field else str(key)
            )
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            check_encodable(inner, where=where, item_id=item_id, field=f"{field}[{i}]")
