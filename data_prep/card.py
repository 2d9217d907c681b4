"""The dataset card (`README.md` of a prepared dataset): what it is, counts, and every skip."""

from __future__ import annotations

from collections import Counter


def mix_counts(samples: list[dict]) -> dict[str, int]:
    """Samples per `modality | layer`, sorted by key (JSON-friendly)."""
    counts = Counter(f"{s['modality']} | {s['category']}" for s in samples)
    return dict(sorted(counts.items()))


def _mix_table(splits: dict[str, list[dict]]) -> list[str]:
    names = list(splits)
    per_split = {n: mix_counts(rows) for n, rows in splits.items()}
    keys = sorted({k for c in per_split.values() for k in c})
    lines = [
        "| modality | layer | " + " | ".join(names) + " | total |",
        "|---|---|" + "---|" * (len(names) + 1),
    ]
    for key in keys:
        modality, layer = key.split(" | ", 1)
        row = [per_split[n].get(key, 0) for n in names]
        lines.append(f"| {modality} | {layer} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    totals = [len(splits[n]) for n in names]
    lines.append("| **all** | | " + " | ".join(map(str, totals)) + f" | {sum(totals)} |")
    return lines


def _skip_lines(skipped: list[dict]) -> list[str]:
    if not skipped:
        return ["None: every item of the source is in the dataset."]
    lines = ["| id | where | reason |", "|---|---|---|"]
    for s in skipped:
        reason = s["reason"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {s['id']} | {s['where']} | {reason} |")
    return lines


def _per_split_line(counts: dict) -> str:
    """`3 (train 2, test 1)`; `0` when there are none (or the manifest predates the count)."""
    total = counts.get("text_only", 0)
    per_split = ", ".join(f"{k} {n}" for k, n in counts.get("per_split_text_only", {}).items() if n)
    return f"{total} ({per_split})" if total else "0"


def _contribution_lines(contribution: dict | None) -> list[str]:
    """The audio-contribution split (data_prep.audio_contribution): weak / strong per modality and
    layer, with how many of each subset's items the model answered with the audio."""
    if not contribution:
        return []
    lines = [
        "## Audio contribution",
        "",
        f"This is the **{contribution['subset']}** subset of `{contribution['source']}` "
        f"({contribution['source_hash'][:12]}), split by `{contribution['model']}`"
        + (f" + adapter `{contribution['adapter']}`" if contribution.get("adapter") else "")
        + f". Rule: {contribution['rule']}.",
        "",
        "| split | by | value | weak | weak, right with audio | strong | strong, right with audio |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, counts in contribution["counts"].items():
        weak, strong = counts["weak"], counts["strong"]
        lines.append(f"| {split} | all | | {weak['items']} | {weak['correct_with_audio']} | {strong['items']} | "
                     f"{strong['correct_with_audio']} |")  # fmt: skip
        for field in ("modality", "category"):
            for value in sorted(set(weak[f"by_{field}"]) | set(strong[f"by_{field}"])):
                w = weak[f"by_{field}"].get(value, {"items": 0, "correct_with_audio": 0})
                s = strong[f"by_{field}"].get(value, {"items": 0, "correct_with_audio": 0})
                lines.append(f"| {split} | {field} | {value} | {w['items']} | {w['correct_with_audio']} | "
                             f"{s['items']} | {s['correct_with_audio']} |")  # fmt: skip
    return [*lines, ""]


def render_card(manifest: dict, splits: dict[str, list[dict]]) -> str:
    """Markdown card built only from the manifest and the rows, so it is byte-stable."""
    counts = manifest["counts"]
    audio = manifest["audio"]
    checked = "checked" if audio["checked"] else "NOT checked (metadata-only, --no-audio-check)"
    lines = [
        f"# {manifest['name']} ({manifest['hash'][:12]})",
        "",
        f"- source: `{manifest['source']['reader']}` reader, `{manifest['source']['path']}` "
        f"(sha256 `{manifest['source']['sha256'][:16]}...`)",
        f"- template: `{manifest['template']}`; family: `{manifest['family']}`; "
        f"options shuffled: {manifest['options']['shuffle_options']}; seed: {manifest['options']['seed']}",
        f"- audio: {checked}; {audio['sampling_rate']} Hz; max {audio['max_seconds']} s "
        f"({audio['long_audio_policy']}; {counts['truncated']} clip(s) longer)",
        f"- items read: {counts['read']}; samples written: {counts['samples']}; skipped: {counts['skipped']}; "
        f"direct-answer fallbacks (no thinking): {counts['thinking_fallback']}; "
        f"items with a blank option dropped: {counts['empty_choice_dropped']}",
        f"- text-only items (no audio, so no audio check): {_per_split_line(counts)}",
        f"- kept with warnings (by kind): {counts.get('warnings_by_kind') or 'none'}",
        f"- split mode: {manifest['options']['split']['mode']}; groups never straddle two splits",
        "",
        "## Samples per split x modality x layer",
        "",
        *_mix_table(splits),
        "",
        *_contribution_lines(manifest.get("audio_contribution")),
        "## Skipped items",
        "",
        *_skip_lines(manifest["skipped"]),
        "",
    ]
    return "\n".join(lines)
