"""Seeded, grouped, stratified splits, and the check that refuses leaky ones.

Grouped: every item of a group (MMAR: clips of one source video) lands in one split, always.
Stratified: groups are laid out stratum by stratum (by default the (modality, category) of their
items; `stratify_by` names other sample fields), in a seeded random order inside each stratum, and
dealt one by one to the split furthest below its target share of the items dealt so far. Walking
strata in sequence gives each stratum its share of every split up to one group, and the shortfall
of a tiny stratum carries over to the next instead of always landing in `train`.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict

from common.io import sha256_text
from data_prep.schema import SplitLeakError

SPLIT_NAMES = ("train", "val", "test")


DEFAULT_STRATA = ("modality", "category")


def _stratum_key(item: dict, fields: tuple[str, ...]) -> tuple[str, ...]:
    missing = [f for f in fields if f not in item]
    if missing:
        raise ValueError(f"item {item.get('id')!r}: no field {missing[0]!r} to stratify the split by")
    return tuple(str(item[f]) for f in fields)


def _stratum(items: list[dict], fields: tuple[str, ...]) -> tuple[str, ...]:
    """A group's stratum: its items' most common values of `fields`; ties go to the smallest."""
    counts = Counter(_stratum_key(it, fields) for it in items)
    best = max(counts.values())
    return min(k for k, v in counts.items() if v == best)


def _ordered_groups(items: list[dict], seed: int, fields: tuple[str, ...]) -> list[tuple[str, list[dict]]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for it in items:
        groups[it["group"]].append(it)
    by_stratum: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for name, members in groups.items():
        by_stratum[_stratum(members, fields)].append(name)
    rng = random.Random(seed)
    ordered = []
    for stratum in sorted(by_stratum):
        names = sorted(by_stratum[stratum])
        rng.shuffle(names)
        ordered.extend((n, groups[n]) for n in names)
    return ordered


def assign_splits(
    items: list[dict],
    ratios: dict[str, float],
    *,
    seed: int,
    stratify_by: tuple[str, ...] | list[str] = DEFAULT_STRATA,
) -> dict[str, list[dict]]:
    """Split `items` (dicts with id, group and the `stratify_by` fields) by `ratios` (split -> share).

    Returns split -> items in their input order; splits with ratio 0 stay empty.
    """
    total = sum(ratios.values())
    if total <= 0 or any(r < 0 for r in ratios.values()):
        raise ValueError(f"split ratios must be >= 0 and not all 0, got {ratios}")
    shares = {k: v / total for k, v in ratios.items() if v > 0}
    counts = dict.fromkeys(shares, 0)
    chosen: dict[str, str] = {}
    dealt = 0
    for name, members in _ordered_groups(items, seed, tuple(stratify_by)):
        dealt += len(members)
        # The split furthest below its share once this group is counted; ties: listed order.
        split = max(shares, key=lambda k: shares[k] * dealt - counts[k])
        counts[split] += len(members)
        chosen[name] = split
    out: dict[str, list[dict]] = {k: [] for k in ratios}
    for it in items:
        out[chosen[it["group"]]].append(it)
    return out


def holdout_split(items: list[dict], split: str) -> dict[str, list[dict]]:
    """The whole source as one split (e.g. a benchmark used only for evaluation)."""
    return {split: list(items)}


def check_disjoint(splits: dict[str, list[dict]]) -> None:
    """Raise SplitLeakError if any group or id appears in two splits."""
    for key in ("group", "id"):
        owner: dict[str, str] = {}
        for split, items in splits.items():
            for it in items:
                prev = owner.setdefault(it[key], split)
                if prev != split:
                    raise SplitLeakError(
                        f"{key} {it[key]!r} is in both {prev!r} and {split!r}", item_id=it["id"], field=key
                    )


def split_summary(items: list[dict]) -> dict:
    """Manifest entry of one split: ids (written order), sorted groups, hash and count."""
    ids = [it["id"] for it in items]
    return {
        "ids": ids,
        "groups": sorted({it["group"] for it in items}),
        # Order-free, so the hash names the set of items, whatever order they are written in.
        "hash": sha256_text("\n".join(sorted(ids))),
        "count": len(ids),
    }
