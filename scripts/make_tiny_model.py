"""Build a randomly initialised tiny model of a real architecture, plus its processor.

    python -m scripts.make_tiny_model --family qwen2_audio --out runs/models/tiny-qwen2-audio [--seed 0]
    python -m scripts.make_tiny_model --family qwen2_5_omni --out runs/models/tiny-qwen2.5-omni
    python -m scripts.make_tiny_model --family qwen2_audio --out /tmp/tiny --window_seconds 4
    python -m scripts.make_tiny_model --family qwen2_audio --out /tmp/served --window_seconds 30 --head_dim 32

The folder is written with `save_pretrained` and loaded back through the family's `load_model` /
`load_processor`, the code path a real checkpoint takes. `--tokenizer` is one of the family's
TINY_TOKENIZERS (default: its first). Every family here takes `auto` (the real Qwen2 vocabulary when
`../shared/tokenizers/qwen2/` exists, else `local`), `qwen2` and `local` (a small byte-level BPE
trained on the spot: a 150x smaller LM head, and the same model on every machine); see models/_qwen.py.
vLLM serves a tiny model only with `--head_dim 32` (its CPU attention has no 16-wide heads) and, for
Qwen2-Audio, `--window_seconds 30` (its Qwen2-Audio takes 30 s windows only).
"""

from __future__ import annotations

import argparse
import logging

from common.logging_utils import setup_logging
from models import get_family, list_families

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", required=True, choices=list_families(), help="model family module name")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random initialisation")
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="the tiny model's tokenizer source, one of the family's TINY_TOKENIZERS (default: its first): "
        + "; ".join(f"{name}: {', '.join(get_family(name).TINY_TOKENIZERS)}" for name in list_families()),
    )
    parser.add_argument(
        "--window_seconds",
        type=int,
        default=None,
        help="longest clip the model hears (default: the family's tiny window); shorter is cheaper on CPU",
    )
    parser.add_argument(
        "--head_dim",
        type=int,
        default=None,
        help="width of the LLM's attention heads (default 16; vLLM's CPU attention needs 32 or more)",
    )
    args = parser.parse_args(argv)
    family = get_family(args.family)
    if args.tokenizer is not None and args.tokenizer not in family.TINY_TOKENIZERS:
        parser.error(f"--tokenizer {args.tokenizer}: {args.family} takes {', '.join(family.TINY_TOKENIZERS)}")
    setup_logging()
    family.make_tiny(
        args.out,
        seed=args.seed,
        tokenizer=args.tokenizer,
        window_seconds=args.window_seconds,
        head_dim=args.head_dim,
    )
    logger.info("tiny %s model written to %s", args.family, args.out)


if __name__ == "__main__":
    main()
