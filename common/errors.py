"""Errors for bad input that every stage raises: each names the file, item and field at fault.

They live in `common` because audio decoding (`common.audio`) is shared by data_prep, the model-input
code in `models/` and eval, and its failures are data errors like any other.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. `where` is `file:line` or `file[index]`; all parts are optional."""

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        item_id: str | None = None,
        field: str | None = None,
    ):
        self.message = message
        self.where = where
        self.item_id = item_id
        self.field = field
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.where:
            parts.append(self.where)
        if self.item_id is not None:
            parts.append(f"item {self.item_id!r}")
        if self.field:
            parts.append(f"field {self.field!r}")
        prefix = ": ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message

    @property
    def reason(self) -> str:
        """A short, location-free reason for skip lists: `ErrorName: field 'x': message`."""
        where_field = f"field {self.field!r}: " if self.field else ""
        return f"{type(self).__name__}: {where_field}{self.message}"


class AudioError(DataError):
    """An audio file is missing, unreadable, empty, non-finite, silent or outside the root."""


class AudioTooLongError(AudioError):
    """A clip is longer than the model's window and the policy is `skip`."""
