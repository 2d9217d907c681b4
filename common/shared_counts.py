"""Named integer counters that DataLoader worker processes and their parent add to together.

A loader worker runs its own copy of the collator, so a plain `Counter` on the collator counts in
the copy and the parent never sees it (run_info.json said `{}` with samples dropped in workers).
The table lives in shared memory created by the parent and forked loader workers (the default
start method on Linux) inherit it, so every copy adds to one table, visible to the parent as soon
as a batch is returned. (The collator holds its family module, which cannot be pickled, so
loaders with the spawn start method do not work with it in any case.)
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterable


class SharedCounts:
    """A fixed set of named counters in shared memory; `add` is atomic across processes."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(names)
        self._index = {name: i for i, name in enumerate(self.names)}
        self._values = mp.get_context().Array("q", len(self.names))  # zeroed, with a lock

    def add(self, name: str, n: int = 1) -> None:
        if name not in self._index:
            raise KeyError(f"unknown counter {name!r}; known: {list(self.names)}")
        with self._values.get_lock():
            self._values[self._index[name]] += n

    def get(self, name: str) -> int:
        return int(self._values[self._index[name]])

    def as_dict(self) -> dict[str, int]:
        with self._values.get_lock():
            return {name: int(self._values[i]) for i, name in enumerate(self.names)}
