"""Export a prepared dataset to the layout LLaMA-Factory and ms-swift read.

Each row: `{"messages": [{"role", "content": str}, ...], "audios": [path, ...]}` with one
`<audio>` tag in the user text per audio file. `dataset_info.json` registers every split for
LLaMA-Factory (sharegpt formatting); ms-swift reads the JSONL files directly.

    python -m data_prep.export --dataset data/prepared/latest [--out <dir>]
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common.config import parse_config
from common.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from common.logging_utils import setup_logging

log = logging.getLogger(__name__)
AUDIO_TAG = "<audio>"


def to_llamafactory(sample: dict) -> dict:
    """One sample row -> one `messages` + `audios` row (content blocks flattened to text)."""
    messages, audios = [], []
    for msg in sample["messages"]:
        parts = []
        for block in msg["content"]:
            # Branch on the block's type: after a datasets round trip every block has every key.
            if block["type"] == "audio":
                audios.append(block["path"])
                parts.append(AUDIO_TAG)
            elif block["type"] == "text":
                parts.append(block["text"])
        messages.append({"role": msg["role"], "content": "".join(parts)})
    return {"messages": messages, "audios": audios}


def dataset_info(name: str, splits: list[str]) -> dict:
    """LLaMA-Factory's `dataset_info.json` entries, one per split file."""
    columns = {"messages": "messages", "audios": "audios"}
    tags = {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "system_tag": "system",
    }
    return {
        f"{name}_{split}": {
            "file_name": f"{split}.jsonl",
            "formatting": "sharegpt",
            "columns": columns,
            "tags": tags,
        }
        for split in splits
    }


def export_samples(samples: dict[str, list[dict]], out: Path, name: str) -> Path:
    """Write `<out>/<split>.jsonl` and `<out>/dataset_info.json`; returns `out`."""
    for split, rows in samples.items():
        atomic_write_jsonl(out / f"{split}.jsonl", [to_llamafactory(r) for r in rows])
    atomic_write_json(out / "dataset_info.json", dataset_info(name, list(samples)))
    return out


def export_dataset(dataset_dir: str | Path, out: str | Path | None = None) -> Path:
    """Export an existing prepared dataset directory (default target: `<dataset_dir>/export`)."""
    dataset_dir = Path(dataset_dir).resolve()
    manifest = json.loads((dataset_dir / "manifest.json").read_text(encoding="utf-8"))
    samples = {split: read_jsonl(dataset_dir / f"{split}.jsonl") for split in manifest["splits"]}
    target = Path(out) if out else dataset_dir / "export"
    return export_samples(samples, target, manifest["name"])


@dataclass
class ExportConfig:
    dataset: str = field(default="data/prepared/latest", metadata={"help": "prepared dataset directory"})
    out: str | None = field(default=None, metadata={"help": "target folder (default: <dataset>/export)"})


def main(argv: list[str] | None = None) -> Path:
    """CLI entry point."""
    setup_logging()
    cfg = parse_config(ExportConfig, sys.argv[1:] if argv is None else argv)
    out = export_dataset(cfg.dataset, cfg.out)
    log.info("exported %s to %s (LLaMA-Factory / ms-swift layout)", cfg.dataset, out)
    return out


if __name__ == "__main__":
    main()
