"""Merge a LoRA adapter into its base model and save a plain checkpoint (plus the processor).

    python -m scripts.merge_adapter --base runs/models/tiny-qwen2-audio --adapter runs/tiny-cpu --out runs/tiny-merged

The merged folder loads with the family's `from_pretrained` (no PEFT needed) and gives the same
logits as base + adapter. Fully trained modules saved with the adapter (the projector, the audio
encoder when it was trained) replace the base ones.
"""

from __future__ import annotations

import argparse

from common.logging_utils import setup_logging
from models.merge import merge_adapter


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="base model: hub id or local path")
    p.add_argument("--adapter", required=True, help="adapter dir written by train.py")
    p.add_argument("--out", required=True, help="output folder for the merged model")
    p.add_argument("--dtype", default="auto", help="auto (the checkpoint's) | bfloat16 | float32")
    p.add_argument("--family", default=None, help="model family (default: from the base's config.json)")
    args = p.parse_args(argv)
    merge_adapter(args.base, args.adapter, args.out, dtype=args.dtype, family=args.family)


if __name__ == "__main__":
    main()
