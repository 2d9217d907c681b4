"""Throughput of `data_prep.prepare` on synthetic items, with and without the audio checks.

    python -m bench.prepare [--quick]

2,000 items from `data_prep.synth` (1-5 s, 16 kHz WAV), prepared with configs/data/synth_cot.yaml
into a fresh output folder each time (the dataset hash makes a rerun into the same folder a
no-op). With audio checks every clip is decoded once and checked (missing, undecodable, empty,
NaN, silent, too long); `--no-audio-check` resolves paths only. items/s covers the whole stage:
read, validate, check audio, render, split, write JSONL + the HF copy + card + manifest.
"""

from __future__ import annotations

import time

from bench._common import emit, parse_args, print_table, synth_dataset, workdir

FULL, QUICK = 2000, 200


def timed_prepare(work, n: int, seed: int, *extra: str) -> tuple[float, int]:
    """(seconds, samples written) of one data_prep.prepare run into a fresh folder."""
    import json

    start = time.perf_counter()
    out = synth_dataset(work, n, seed, *extra, out_dir=work / f"prepared-{len(extra)}")
    seconds = time.perf_counter() - start
    return seconds, json.loads((out / "manifest.json").read_text())["counts"]["samples"]


def main(argv: list[str] | None = None) -> dict:
    """Run the bench; prints the table and the JSON line, returns the figures."""
    args = parse_args(__doc__.splitlines()[0], argv)
    n = QUICK if args.quick else FULL
    import datasets  # noqa: F401  (imported before timing: both runs then pay the same)

    with workdir(args.workdir) as work:
        from data_prep.synth import generate

        generate(work / f"synth-{n}-{args.seed}", n=n, seed=args.seed)  # not timed: the input
        t_check, written = timed_prepare(work, n, args.seed)
        t_meta, _ = timed_prepare(work, n, args.seed, "--no-audio-check")
    print(f"{n} synthetic items (1-5 s clips), configs/data/synth_cot.yaml, {written} samples written")
    print_table(
        ["mode", "seconds", "items/s"],
        [("audio checked", t_check, n / t_check), ("metadata only (--no-audio-check)", t_meta, n / t_meta)],
    )
    result = {
        "bench": "prepare",
        "items_per_s": round(n / t_check, 1),
        "items_per_s_no_audio_check": round(n / t_meta, 1),
        "items": n,
        "samples_written": written,
        "quick": args.quick,
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
