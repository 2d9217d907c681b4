"""Merge a LoRA adapter into its base model and save a plain checkpoint (plus the processor).

    python -m scripts.merge_adapter --base runs/models/tiny-qwen2-audio --adapter runs/tiny-cpu --out runs/tiny-merged

The merged folder loads with the family's `from_pretrained` (no PEFT needed) and gives the same
logits as base + adapter. Fully trained modules saved with the adapter (the projector, the audio
encoder when it was trained) replace the base ones.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from common.logging_utils import setup_logging
from models import family_of, get_family

logger = logging.getLogger(__name__)


def merge(base: str, adapter: str, out: str, *, dtype: str = "auto", family: str | None = None) -> Path:
    """Load base + adapter, fold the LoRA deltas into the weights, save model and processor to `out`."""
    from peft import PeftModel

    fam = get_family(family or family_of(base))
    model = fam.load_model(base, dtype=dtype)
    model = PeftModel.from_pretrained(model, adapter)
    merged = model.merge_and_unload()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    # The adapter dir carries the processor the run trained with; fall back to the base's.
    has_processor = (Path(adapter) / "preprocessor_config.json").exists() or (
        Path(adapter) / "processor_config.json"
    ).exists()
    fam.load_processor(adapter if has_processor else base).save_pretrained(out_dir)
    logger.info("merged %s + %s -> %s", base, adapter, out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="base model: hub id or local path")
    p.add_argument("--adapter", required=True, help="adapter dir written by train.py")
    p.add_argument("--out", required=True, help="output folder for the merged model")
    p.add_argument("--dtype", default="auto", help="auto (the checkpoint's) | bfloat16 | float32")
    p.add_argument("--family", default=None, help="model family (default: from the base's config.json)")
    args = p.parse_args(argv)
    merge(args.base, args.adapter, args.out, dtype=args.dtype, family=args.family)


if __name__ == "__main__":
    main()
