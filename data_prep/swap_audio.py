"""Give every sample of some splits the audio of another scene asked the same question.

    python -m data_prep.swap_audio --data data/prepared/latest --out data/prepared-swapped [--seed 0]

Writes a prepared dataset (same layout, manifest.json last) whose `--splits` (default: train)
carry mismatched audio: within each pool of samples with the same question text, a seeded random
cycle hands each sample the clip of the next one, so every sample hears a real clip of its own task
but from a different scene (a different `group`), and `audio_duration` follows the clip. The text
(question, options, target) is unchanged; the other splits are copied as they are (val too by
default: it only gives the validation loss, and a 100-item val split can ask a wording only once,
leaving no other clip to swap in, which is refused rather than patched).

What it is for: training on it teaches the answer format and the question types while the audio
says nothing about the answer, which gives the quickstart an honest "before" model (it follows
the instructions at chance level). The manifest records the source dataset, the seed and each
swapped sample's donor.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.io import read_jsonl, sha256_text
from common.logging_utils import setup_logging
from data_prep.prepare import write_dataset

log = logging.getLogger(__name__)


class SwapError(ValueError):
    """A dataset whose audio cannot be swapped (a pool of one, a sample with no or several clips)."""


def _audio_block(sample: dict) -> dict:
    """The sample's only audio block (mutable, inside `sample["messages"]`)."""
    blocks = [b for m in sample["messages"] if not isinstance(m["content"], str) for b in m["content"]]
    audio = [b for b in blocks if b.get("type") == "audio"]
    if len(audio) != 1:
        raise SwapError(
            f"{sample['id']}: messages hold {len(audio)} audio blocks; swapping needs exactly one"
        )
    return audio[0]


def donors(samples: Sequence[dict], seed: int, key: str = "question") -> dict[str, str]:
    """{sample id: donor id}: within each pool sharing `key`, a seeded random cycle of length >= 2.

    A pool never holds two samples of one group (a scene asked twice is asked in two wordings), so
    a cycle over the pool always gives a donor from another scene; that is checked anyway.
    """
    pools: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        pools[s[key]].append(s)
    out = {}
    for value, pool in sorted(pools.items()):
        if len(pool) < 2:
            raise SwapError(f"{key}={value!r}: only sample {pool[0]['id']} asks it; no other clip to swap in")
        rng = np.random.default_rng([seed, int(sha256_text(value)[:8], 16)])
        order = [pool[i] for i in rng.permutation(len(pool))]
        for s, donor in zip(order, order[1:] + order[:1]):
            if s["group"] == donor["group"]:
                raise SwapError(f"{s['id']} and {donor['id']} share group {s['group']!r} and {key}={value!r}")
            out[s["id"]] = donor["id"]
    return out


def swap_split(samples: list[dict], seed: int, key: str = "question") -> tuple[list[dict], dict[str, str]]:
    """Copies of `samples` with each one's audio (path, duration) taken from its donor."""
    by_id = {s["id"]: s for s in samples}
    mapping = donors(samples, seed, key)
    out = []
    for s in samples:
        donor = by_id[mapping[s["id"]]]
        new = copy.deepcopy(s)
        _audio_block(new)["path"] = _audio_block(donor)["path"]
        new["audio_path"], new["audio_duration"] = donor["audio_path"], donor["audio_duration"]
        out.append(new)
    return out, mapping


def swap_dataset(data: Path, out: Path, *, seed: int = 0, splits: Sequence[str] = ("train",)) -> Path:
    """Write the swapped copy of prepared dataset `data` to `out` (replaced if it exists)."""
    data, out = Path(data).resolve(), Path(out)
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    unknown = sorted(set(splits) - set(manifest["splits"]))
    if unknown:
        raise SwapError(f"{data}: no split(s) {unknown}; it has {sorted(manifest['splits'])}")
    rows, swapped = {}, {}
    for split in manifest["splits"]:
        rows[split] = list(read_jsonl(data / f"{split}.jsonl"))
        if split in splits:
            rows[split], swapped[split] = swap_split(rows[split], seed)
            log.info("%s: %d samples now carry another scene's audio", split, len(swapped[split]))
    manifest["audio_swap"] = {
        "source": str(data),
        "source_hash": manifest["hash"],
        "seed": seed,
        "key": "question",
        "splits": list(splits),
        "donors": swapped,
    }
    manifest["hash"] = sha256_text(json.dumps(manifest["audio_swap"], sort_keys=True))
    manifest["name"] = f"{manifest['name']}-swapped-audio"
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_dataset(out, rows, manifest)
    return out


def main(argv: Sequence[str] | None = None) -> Path:
    """CLI entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="prepared dataset dir (holds manifest.json)")
    p.add_argument("--out", type=Path, required=True, help="output dir for the swapped dataset")
    p.add_argument("--seed", type=int, default=0, help="seed of the donor cycles")
    p.add_argument("--splits", default="train", help="comma-separated splits to swap; others are copied")
    args = p.parse_args(argv)
    setup_logging()
    splits = [s for s in args.splits.split(",") if s]
    out = swap_dataset(args.data, args.out, seed=args.seed, splits=splits)
    log.info("wrote %s", out)
    return out


if __name__ == "__main__":
    main()
