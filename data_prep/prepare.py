"""Prepare a dataset: read a source, validate, check audio, render chat samples, split, write.

    python -m data_prep.prepare --config configs/data/synth_cot.yaml [--key value ...]

The output directory `<out_dir>/<name>-<hash12>/` is keyed by the source file's sha256, the
resolved options, the template and the system prompt: the same inputs give the same directory
(and a rerun is a no-op), any change gives a new one, never a stale reuse. Output bytes depend
only on those inputs (no timestamps), so two runs with the same seed are byte-identical.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from common.config import ConfigError, parse_config, to_dict
from common.io import (
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    dumps_json,
    sha256_file,
    sha256_text,
)
from common.logging_utils import setup_logging
from data_prep.audio import check_audio, resolve_audio_path
from data_prep.card import mix_counts, render_card
from data_prep.config import DataConfig
from data_prep.readers import Skip, get_reader, load_records
from data_prep.schema import EMPTY_CHOICE_TAG, AudioError, DataError, Record, SourceFileError
from data_prep.splits import assign_splits, check_disjoint, holdout_split, split_summary
from data_prep.templates import Template, get_template, render_sample

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


def resolve_system_prompt(cfg: DataConfig) -> str:
    """The config's `system_prompt`, else the model family's SYSTEM_PROMPT."""
    from models import get_family  # family modules import torch lazily: this stays cheap

    if cfg.system_prompt is not None:
        return cfg.system_prompt
    try:
        return get_family(cfg.family).SYSTEM_PROMPT
    except ValueError as e:  # unknown family: the message lists the known ones
        raise ConfigError(f"family: {e}") from None


def resolve_paths(cfg: DataConfig) -> DataConfig:
    """Absolute source path and audio root (default: the source file's folder)."""
    source = Path(cfg.source.path).expanduser().resolve()
    root = Path(cfg.audio_root).expanduser().resolve() if cfg.audio_root else source.parent
    return dataclasses.replace(
        cfg, source=dataclasses.replace(cfg.source, path=str(source)), audio_root=str(root)
    )


def hashed_options(cfg: DataConfig) -> dict:
    """The resolved options that shape the output (out_dir only says where it goes)."""
    opts = to_dict(cfg)
    opts.pop("out_dir")
    return opts


def dataset_key(cfg: DataConfig, source_sha256: str, template: Template, system_prompt: str) -> str:
    """sha256 over everything that determines the dataset's bytes."""
    material = {
        "format_version": FORMAT_VERSION,
        "source_sha256": source_sha256,
        "options": hashed_options(cfg),
        "template": dataclasses.asdict(template),
        "system_prompt": system_prompt,
    }
    return sha256_text(dumps_json(material))


def point_latest(out_root: Path, target: Path) -> None:
    """Atomically repoint `<out_root>/latest` at `target` (a relative link, so the folder can move)."""
    tmp = out_root / f".latest.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.name)
    os.replace(tmp, out_root / "latest")


def check_all_audio(
    records: list[Record], cfg: DataConfig, skips: list[Skip]
) -> tuple[list[Record], dict[str, tuple[str, float | None]]]:
    """Resolve (and unless --no-audio-check, decode and check) each record's audio.

    Returns the records that passed and id -> (absolute path, duration or None); failures
    become skips (errors under strict). Path escapes are refused even in metadata-only mode.
    Text-only records have nothing to check: they pass with (None, None) and are counted.
    """
    kept, info = [], {}
    check = not cfg.no_audio_check
    text_only = 0
    for rec in tqdm(records, desc="checking audio" if check else "resolving audio paths", disable=None):
        if rec.text_only:
            text_only += 1
            kept.append(rec)
            info[rec.id] = (None, None)
            continue
        try:
            path = resolve_audio_path(cfg.audio_root, rec.audio_path)
            duration = None
            if check:
                duration = check_audio(
                    path, max_seconds=cfg.audio.max_seconds, long_audio_policy=cfg.audio.long_audio_policy
                )
        except AudioError as e:
            if cfg.strict:
                raise type(e)(e.message, where=e.where, item_id=rec.id, field="audio_path") from None
            skips.append(Skip(id=rec.id, where=e.where or rec.audio_path, reason=e.reason))
            continue
        kept.append(rec)
        info[rec.id] = (str(path), duration)
    if text_only:
        log.info("%d text-only item(s): no audio to check (counted as text_only in the manifest)", text_only)
    return kept, info


def render_all(
    records: list[Record],
    cfg: DataConfig,
    template: Template,
    system_prompt: str,
    audio: dict[str, tuple[str, float | None]],
    skips: list[Skip],
) -> list[dict]:
    """Render every record with the template; `missing_thinking: skip` items become skips."""
    samples = []
    always_shuffle = getattr(get_reader(cfg.source.reader), "ALWAYS_SHUFFLE", False)
    for rec in records:
        path, duration = audio[rec.id]
        try:
            sample = render_sample(
                rec,
                template=template,
                system_prompt=system_prompt,
                audio_path=path,
                audio_duration=duration,
                seed=cfg.seed,
                shuffle=cfg.shuffle_options or always_shuffle,
                fold_cue=cfg.fold_cue,
                missing_thinking=cfg.missing_thinking,
            )
        except DataError as e:
            if cfg.missing_thinking == "fail" or cfg.strict:
                raise type(e)(e.message, where=cfg.source.path, item_id=rec.id, field=e.field) from None
            skips.append(Skip(id=rec.id, where=cfg.source.path, reason=e.reason))
            continue
        samples.append(sample)
    return samples


def make_splits(samples: list[dict], cfg: DataConfig) -> dict[str, list[dict]]:
    """Split by ratios (grouped, stratified) or put everything in the holdout split; then verify."""
    if cfg.split.mode == "holdout":
        splits = holdout_split(samples, cfg.split.holdout_split)
    else:
        ratios = {"train": cfg.split.train, "val": cfg.split.val, "test": cfg.split.test}
        splits = assign_splits(samples, ratios, seed=cfg.seed, stratify_by=cfg.split.stratify_by)
    splits = {k: v for k, v in splits.items() if v}  # an empty split is not written
    check_disjoint(splits)
    return splits


def per_split_counts(splits: dict[str, list[dict]]) -> dict[str, dict]:
    """The manifest's per-split counts, which follow from each split's rows alone (a dataset
    derived by filtering rows, as data_prep.audio_contribution writes, recomputes them)."""
    return {
        "per_split": {k: len(v) for k, v in splits.items()},
        "per_split_text_only": {k: sum(s["audio_path"] is None for s in v) for k, v in splits.items()},
        "per_split_mix": {k: mix_counts(v) for k, v in splits.items()},
    }


def build_manifest(
    cfg: DataConfig,
    key: str,
    source_sha256: str,
    system_prompt: str,
    splits: dict[str, list[dict]],
    stats: dict,
) -> dict:
    """manifest.json in the layout of docs/ARCHITECTURE.md."""
    skipped = [s.to_dict() for s in stats["skips"]]
    samples = [s for rows in splits.values() for s in rows]
    kept = {s["id"] for s in samples}
    warnings = [w for w in stats["warnings"] if w["id"] in kept]
    counts = {
        "read": stats["read"],
        "samples": len(samples),
        "skipped": len(skipped),
        "skipped_by_reason": dict(sorted(Counter(s["reason"].split(":", 1)[0] for s in skipped).items())),
        "truncated": stats["truncated"],
        "thinking_fallback": sum(s["template"] != cfg.template for s in samples),
        "empty_choice_dropped": sum(EMPTY_CHOICE_TAG in s["tags"] for s in samples),
        "warnings_by_kind": dict(sorted(Counter(w["kind"] for w in warnings).items())),
        "text_only": sum(s["audio_path"] is None for s in samples),
        **per_split_counts(splits),
    }
    return {
        "format_version": FORMAT_VERSION,
        "name": cfg.name,
        "hash": key,
        "family": cfg.family,
        "template": cfg.template,
        "system_prompt": system_prompt,
        "source": {"reader": cfg.source.reader, "path": cfg.source.path, "sha256": source_sha256},
        "options": hashed_options(cfg),
        "audio": {
            "sampling_rate": cfg.audio.sampling_rate,
            "max_seconds": cfg.audio.max_seconds,
            "long_audio_policy": cfg.audio.long_audio_policy,
            "checked": not cfg.no_audio_check,
            "root": cfg.audio_root,
        },
        "splits": {k: split_summary(v) for k, v in splits.items()},
        "counts": counts,
        "skipped": skipped,
        "warnings": warnings,
    }


def sample_features():
    """Explicit HF features, so all-None columns (thinking, audio_duration) keep their type."""
    from datasets import Features, List, Value

    s = Value("string")
    block = {"type": s, "text": s, "path": s}
    return Features(
        {
            **{k: s for k in ("id", "group", "source", "modality", "category", "sub_category")},
            "tags": List(s),
            "question": s,
            "choices": List(s),
            "answer": s,
            "answer_index": Value("int64"),
            "answer_letter": s,
            "permutation": List(Value("int64")),
            **{k: s for k in ("thinking", "template", "target", "audio_path")},
            "audio_duration": Value("float64"),
            "messages": List({"role": s, "content": List(block)}),
            "source_record": s,
        }
    )


def _share_readable(folder: Path) -> None:
    """Atomic writes create 0600 temp files; a dataset is meant to be read by other users/jobs."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        path.chmod((0o755 if path.is_dir() else 0o644) & ~umask)
    folder.chmod(0o755 & ~umask)


def write_dataset(
    target: Path, splits: dict[str, list[dict]], manifest: dict, *, export: str | None = None, name: str = ""
) -> None:
    """Write everything into a temp folder, then rename it into place (all or nothing).

    `export="llamafactory"` also writes the LLaMA-Factory / ms-swift layout under `export/`, named `name`.
    """
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # one bar per split file is noise; the audio check has the real one
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    features = sample_features()
    for split, rows in splits.items():
        atomic_write_jsonl(tmp / f"{split}.jsonl", rows)
        Dataset.from_list(rows, features=features).save_to_disk(str(tmp / "hf" / split))
    if export == "llamafactory":
        from data_prep.export import export_samples

        export_samples(splits, tmp / "export", name)
    atomic_write_text(tmp / "README.md", render_card(manifest, splits))
    atomic_write_json(tmp / "manifest.json", manifest)  # last: its presence marks a complete dir
    _share_readable(tmp)
    if target.exists():  # a concurrent run with the same inputs finished first: same bytes
        shutil.rmtree(tmp)
        return
    os.rename(tmp, target)


def prepare(cfg: DataConfig) -> Path:
    """Run the whole stage for a parsed config; returns the prepared dataset directory."""
    cfg = resolve_paths(cfg)
    template = get_template(cfg.template)
    get_reader(cfg.source.reader)  # unknown reader: fail before any work
    source = Path(cfg.source.path)
    if not source.is_file():
        raise SourceFileError("source file not found", where=str(source), field="source.path")
    if not cfg.no_audio_check and not Path(cfg.audio_root).is_dir():
        raise SourceFileError(
            "audio root not found; pass --no-audio-check for metadata-only preparation",
            where=cfg.audio_root,
            field="audio_root",
        )
    system_prompt = resolve_system_prompt(cfg)
    source_sha256 = sha256_file(source)
    key = dataset_key(cfg, source_sha256, template, system_prompt)
    out_root = Path(cfg.out_dir).expanduser().resolve()
    target = out_root / f"{cfg.name}-{key[:12]}"
    if (target / "manifest.json").is_file():
        log.info("no-op: %s is already prepared from the same inputs and options", target)
        point_latest(out_root, target)
        return target
    splits, stats = build_samples(cfg, template, system_prompt)
    manifest = build_manifest(cfg, key, source_sha256, system_prompt, splits, stats)
    write_dataset(target, splits, manifest, export=cfg.export, name=cfg.name)
    point_latest(out_root, target)
    log.info("wrote %s: %s; skipped %d", target, manifest["counts"]["per_split"], len(stats["skips"]))
    if not manifest["counts"]["samples"]:
        reasons = manifest["counts"]["skipped_by_reason"]
        log.warning("no samples left: every item was skipped (%s); see %s", reasons, target / "README.md")
    return target


def build_samples(
    cfg: DataConfig, template: Template, system_prompt: str
) -> tuple[dict[str, list[dict]], dict]:
    """Read -> check audio -> render -> split; returns the splits and the counts for the manifest."""
    records, skips = load_records(cfg.source, strict=cfg.strict)
    read = len(records) + len(skips)
    # Odd items that are kept as the benchmark shows them, e.g. a repeated option text.
    warnings = [{"id": r.id, "kind": w} for r in records for w in r.warnings]
    records, audio = check_all_audio(records, cfg, skips)
    samples = render_all(records, cfg, template, system_prompt, audio, skips)
    truncated = sum(1 for s in samples if (s["audio_duration"] or 0.0) > cfg.audio.max_seconds)
    splits = make_splits(samples, cfg)
    return splits, {"read": read, "skips": skips, "truncated": truncated, "warnings": warnings}


def run(argv: list[str]) -> Path:
    """Parse `--config x.yaml [--key value ...]` and prepare; returns the dataset directory."""
    return prepare(parse_config(DataConfig, argv))


def main() -> None:
    """CLI entry point: errors in the input print one clear line instead of a traceback."""
    setup_logging()
    try:
        print(run(sys.argv[1:]))
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
