"""The canonical record every reader produces, and the errors bad input raises.

Every error names where the problem is (file, line or item index, item id, field), so a user
with a 10,000-line file can go straight to the culprit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from common.errors import AudioError, AudioTooLongError, DataError

__all__ = ["AudioError", "AudioTooLongError", "DataError"]  # re-exported: raised by data_prep too

MIN_CHOICES = 2
MAX_CHOICES = 10  # letters A..J; MMAR's largest item has 6 options, MMAU test-mini's 8
EMPTY_CHOICE_TAG = "empty_choice_dropped"
# Warning kinds (counted in the manifest): the item is kept as the benchmark shows it.
DUPLICATE_CHOICE_WARNING = "duplicate_choice_text"  # either letter of the answer's text is correct
EMPTY_CHOICE_WARNING = EMPTY_CHOICE_TAG
METADATA_TYPE_WARNING = "metadata_unexpected_type"  # kept as-is in `original`, not used
UNKNOWN_LABEL = "unknown"
TEXT_MODALITY = "text"  # modality of a text-only item (no audio) that names none


class SourceFileError(DataError):
    """The source file is missing or unreadable."""


class MalformedJSONError(DataError):
    """A line (JSONL) or the whole file (JSON) does not parse."""


class MalformedCSVError(DataError):
    """A CSV file lacks required columns or does not parse."""


class MissingFieldError(DataError):
    """A required field is absent or empty."""


class InvalidFieldError(DataError):
    """A field has the wrong type or an impossible value."""


class AnswerNotInChoicesError(DataError):
    """The answer text is not one of the choices."""


class TooFewChoicesError(DataError):
    """Fewer than two non-blank choices."""


class TooManyChoicesError(DataError):
    """More choices than the templates can letter (A..J)."""


class DuplicateIdError(DataError):
    """Two items share an id."""


class UnknownSourceError(DataError):
    """The configured reader name is not one this package knows."""


class MissingThinkingError(DataError):
    """A chain-of-thought template met an item without `thinking`."""


class SplitLeakError(DataError):
    """A group or id appears in two splits."""


@dataclass
class Record:
    """One multiple-choice audio question, whatever reader it came from."""

    id: str
    # As given by the source, relative to audio_root. None: a text-only item (canonical reader only;
    # the benchmark readers always require a clip).
    audio_path: str | None
    question: str
    choices: list[str]
    answer: str  # text, one of choices
    modality: str
    category: str  # MMAR layer (or the source's closest equivalent)
    sub_category: str = ""
    group: str = ""  # leakage unit: items of one group never straddle two splits
    thinking: str | None = None
    cue: list[str] = field(default_factory=list)
    language: str | None = None
    source: str = ""  # reader name
    tags: list[str] = field(default_factory=list)
    original: dict[str, Any] = field(default_factory=dict)
    # Odd but usable: "<kind>" or "<kind>:<field>"; counted in the manifest, never a skip.
    warnings: list[str] = field(default_factory=list)

    @property
    def text_only(self) -> bool:
        return self.audio_path is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def require(raw: dict, key: str, *, where: str, item_id: str | None) -> Any:
    """Return `raw[key]`, raising MissingFieldError when absent, None or blank."""
    value = raw.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise MissingFieldError("required field is missing or empty", where=where, item_id=item_id, field=key)
    return value


def as_str(value: Any, key: str, *, where: str, item_id: str | None) -> str:
    """Check that a field is a string (numbers are accepted and converted, e.g. CSV ids)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidFieldError(
            f"expected a string, got {type(value).__name__}", where=where, item_id=item_id, field=key
        )
    return str(value)


def as_str_list(value: Any, key: str, *, where: str, item_id: str | None) -> list[str]:
    """A list of strings; a single string becomes a one-element list, None an empty one."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidFieldError("expected a list of strings", where=where, item_id=item_id, field=key)
    return list(value)


def metadata_text(value: Any, key: str, warnings: list[str]) -> str | None:
    """A metadata field that neither rendering nor scoring needs: never a reason to drop an item.

    Strings pass, numbers become strings, a list of strings is joined with `|` (the way MMAR
    joins several languages); anything else is recorded as a warning and read as absent (the
    untouched value stays in the record's `original`).
    """
    if value is None or isinstance(value, bool):
        return None if value is None else str(value)
    if isinstance(value, (str, int, float)):
        text = str(value).strip()
        return text or None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "|".join(v.strip() for v in value if v.strip()) or None
    warnings.append(f"{METADATA_TYPE_WARNING}:{key}")
    return None


def label_text(value: Any, key: str, warnings: list[str]) -> str:
    """A breakdown label (modality, category): present, and "unknown" with a warning if unusable."""
    return metadata_text(value, key, warnings) or UNKNOWN_LABEL


def metadata_list(value: Any, key: str, warnings: list[str]) -> list[str]:
    """A list-of-strings metadata field (e.g. `cue`): a string is one element, odd types a warning."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    warnings.append(f"{METADATA_TYPE_WARNING}:{key}")
    return []


def optional_text(value: Any, key: str, *, where: str, item_id: str | None) -> str | None:
    """An optional free-text field: None or blank becomes None."""
    if value is None:
        return None
    text = as_str(value, key, where=where, item_id=item_id)
    return text if text.strip() else None


def validate_record(rec: Record, *, where: str) -> Record:
    """Normalise and check a record; raise the specific DataError for the first problem.

    Choices and answer are whitespace-stripped (MMAR has answers like 'Connor ' that would
    otherwise render as '<answer>Connor </answer>'); `original` keeps the untouched text.
    """
    for key in ("id", "audio_path", "question", "modality", "category"):
        if key == "audio_path" and rec.text_only:
            continue  # a text-only item: only the canonical reader produces one
        value = getattr(rec, key)
        if not isinstance(value, str) or not value.strip():
            raise MissingFieldError(
                "required field is missing or empty", where=where, item_id=rec.id, field=key
            )
    given = len(rec.choices) if isinstance(rec.choices, list) else 0
    rec.choices = _check_choices(rec.choices, where=where, item_id=rec.id)
    if len(rec.choices) < given:
        rec.tags = sorted(set(rec.tags) | {EMPTY_CHOICE_TAG})
        rec.warnings.append(EMPTY_CHOICE_WARNING)
    if len(set(rec.choices)) != len(rec.choices):
        # Kept as the benchmark shows it (MMAU has `four / nine / fourteen / fourteen`): the
        # official scorers compare text, so either letter of a repeated answer text is correct.
        rec.warnings.append(DUPLICATE_CHOICE_WARNING)
    if not isinstance(rec.answer, str) or not rec.answer.strip():
        raise MissingFieldError(
            "required field is missing or empty", where=where, item_id=rec.id, field="answer"
        )
    rec.answer = rec.answer.strip()
    if rec.answer not in rec.choices:
        raise AnswerNotInChoicesError(
            f"answer {rec.answer!r} is not one of the choices {rec.choices}",
            where=where,
            item_id=rec.id,
            field="answer",
        )
    rec.group = rec.group or rec.id
    rec.warnings = sorted(set(rec.warnings))
    return rec


def _check_choices(choices: Any, *, where: str, item_id: str) -> list[str]:
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise InvalidFieldError("expected a list of strings", where=where, item_id=item_id, field="choices")
    # Blank options are an annotation artefact (4 real MMAR items end with ""): they can never
    # be the answer, so they are dropped and the record is tagged, not the whole item skipped.
    stripped = [c.strip() for c in choices if c.strip()]
    if len(stripped) < MIN_CHOICES:
        raise TooFewChoicesError(
            f"{len(stripped)} choice(s); need at least {MIN_CHOICES}",
            where=where,
            item_id=item_id,
            field="choices",
        )
    if len(stripped) > MAX_CHOICES:
        raise TooManyChoicesError(
            f"{len(stripped)} choices; at most {MAX_CHOICES} (letters A..J) are supported",
            where=where,
            item_id=item_id,
            field="choices",
        )
    return stripped


def check_unique_ids(items: list[tuple[str, str]]) -> None:
    """Raise DuplicateIdError naming both locations of the first repeated id.

    `items` holds (where, id) pairs; a duplicate is a file-level error, never a silent skip,
    because which of the two copies is "right" is the user's call.
    """
    seen: dict[str, str] = {}
    for where, item_id in items:
        if item_id in seen:
            raise DuplicateIdError(
                f"duplicate id (first seen at {seen[item_id]})", where=where, item_id=item_id, field="id"
            )
        seen[item_id] = where


def ensure_object(raw: Any, *, where: str) -> dict:
    """An item must be a JSON object (a stray list or number on a line is an item-level error)."""
    if not isinstance(raw, dict):
        raise InvalidFieldError(f"item is a {type(raw).__name__}, expected an object", where=where)
    return raw
