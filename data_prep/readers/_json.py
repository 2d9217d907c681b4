"""JSON / JSONL loading shared by the JSON-based readers, with line numbers in every error."""

from __future__ import annotations

import json
from pathlib import Path

from data_prep.readers import RawItem
from data_prep.schema import MalformedJSONError, SourceFileError


def read_json_items(path: Path, id_key: str = "id") -> list[RawItem]:
    """Read a JSON list or a JSONL file into RawItems (format sniffed from the first character)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SourceFileError(f"cannot read source file: {e}", where=str(path)) from None
    if text.lstrip().startswith("["):
        return _read_json_list(path, text, id_key)
    return _read_jsonl(path, text, id_key)


def _item_id(obj: object, id_key: str) -> str | None:
    """The id as the readers spell it (`schema.as_str`: numbers become strings, floats too).

    Floats count: two items with id 1.5 (or NaN) would otherwise escape the duplicate check and
    a skipped one would be listed without its id.
    """
    value = obj.get(id_key) if isinstance(obj, dict) else None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        # A lone surrogate (JSON "\\ud800") is escaped, so the skip list can still be written.
        return str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return None


def _read_jsonl(path: Path, text: str, id_key: str) -> list[RawItem]:
    items = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise MalformedJSONError(f"malformed JSON: {e.msg} (column {e.colno})", where=where) from None
        # A non-object line is an item-level problem; to_record reports it through the skip list.
        items.append(RawItem(where=where, item_id=_item_id(obj, id_key), raw=obj))
    return items


def _read_json_list(path: Path, text: str, id_key: str) -> list[RawItem]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise MalformedJSONError(
            f"malformed JSON: {e.msg} (column {e.colno})", where=f"{path}:{e.lineno}"
        ) from None
    if not isinstance(data, list):
        raise MalformedJSONError("expected a JSON list of items", where=str(path))
    return [
        RawItem(where=f"{path}[{i}]", item_id=_item_id(obj, id_key), raw=obj) for i, obj in enumerate(data)
    ]
