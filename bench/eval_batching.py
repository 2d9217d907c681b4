"""Batched vs one-at-a-time generation through eval.run's real code path.

    python -m bench.eval_batching [--quick]

The reference MMAR/MMAU scripts call `generate()` once per item. `eval.run.evaluate` sorts the
prompts by length and generates `batch_size` of them at once with left padding. Both runs below
use that same function on the same tiny Qwen2-Audio and the same synthetic test items (one process,
side by side, so the ratio is meaningful even on a busy CPU); only `batch_size` differs. Greedy
decoding with correct attention masks must give the same predictions either way.

The tiny model uses the real Qwen2 tokenizer (151,680 tokens) when ../shared has it, else the 1k
local one; the JSON says which (`tokenizer`, `vocab_size`). Why the CPU ratio understates a GPU's:
with the real vocabulary the tiny model's LM head (151,680 x 64) is ~99% of its per-token FLOPs, and
Qwen2-Audio computes logits for every prompt position in the prefill. That prefill work is the same per item at any batch size, and decoding is
compute-bound on a CPU, so batching only removes per-step overhead. On a GPU a 7B model's decode is
memory-bound and dominates CoT eval (hundreds of new tokens), which batching amortises. The bench
therefore also measures prefill time per item and decode time per new token in both modes and
reports the speedup those imply at eval.run's default `max_new_tokens` (a derived figure).
Torch runs one thread so that the ratio does not depend on what else the shared CPU is doing.
"""

from __future__ import annotations

import time

from bench._common import (
    emit,
    parse_args,
    print_table,
    real_tokenizer_if_present,
    synth_dataset,
    tiny_model,
    workdir,
)

FULL = {"items": 200, "max_new_tokens": 128}  # a short CoT budget; real CoT runs use hundreds
QUICK = {"items": 24, "max_new_tokens": 8}


def timed_eval(model, processor, family, rows: list[dict], batch_size: int, max_new_tokens: int):
    """(seconds, prediction rows) of eval.run.evaluate at this batch size."""
    from eval.run import EvalConfig, evaluate

    cfg = EvalConfig(batch_size=batch_size, max_new_tokens=max_new_tokens)
    start = time.perf_counter()
    preds = evaluate(model, processor, family, rows, cfg, progress=False)
    return time.perf_counter() - start, preds


def prefill_seconds(model, processor, family, rows: list[dict], batch_size: int) -> float:
    """Seconds per item of prompt encoding + prefill + one new token (max_new_tokens=1)."""
    seconds, _ = timed_eval(model, processor, family, rows, batch_size, 1)
    return seconds / len(rows)


def main(argv: list[str] | None = None) -> dict:
    """Run the bench; prints the table and the JSON line, returns the figures."""
    args = parse_args(__doc__.splitlines()[0], argv)
    size = QUICK if args.quick else FULL
    import torch

    from common.io import read_jsonl
    from eval.run import EvalConfig
    from models import get_family

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    batch_size = EvalConfig().batch_size  # eval.run's default, what a user gets
    with workdir(args.workdir) as work:
        tokenizer = real_tokenizer_if_present()
        model_dir = tiny_model(work, args.seed, tokenizer=tokenizer)
        # holdout: every item lands in the test split, so `items` synthetic items = `items` test items
        data = synth_dataset(work, size["items"], args.seed, "--split.mode", "holdout")
        rows = read_jsonl(data / "test.jsonl")[: size["items"]]
        family = get_family("qwen2_audio")
        processor = family.load_processor(str(model_dir))
        model = family.load_model(str(model_dir), dtype="float32", attn_implementation="eager")
        vocab = model.config.get_text_config().vocab_size
        timed_eval(model, processor, family, rows[:2], 2, 2)  # warm-up: lazy inits, allocator
        t_one, one = timed_eval(model, processor, family, rows, 1, size["max_new_tokens"])
        t_batch, batched = timed_eval(model, processor, family, rows, batch_size, size["max_new_tokens"])
        probe = rows[: min(len(rows), batch_size)]
        prefill_one = prefill_seconds(model, processor, family, probe, 1)
        prefill_batched = prefill_seconds(model, processor, family, probe, batch_size)
    identical = one == batched  # every field: output, extraction, correctness, token counts
    n_new = sum(p["n_new_tokens"] for p in one)
    # Per new token, per item: what is left of each run once its prefill time is taken out.
    decode_one = max(t_one - prefill_one * len(rows), 1e-9) / n_new
    decode_batched = max(t_batch - prefill_batched * len(rows), 1e-9) / n_new
    budget = EvalConfig().max_new_tokens
    projected = (prefill_one + budget * decode_one) / (prefill_batched + budget * decode_batched)
    table = [
        ("one at a time", 1, t_one, len(rows) / t_one, n_new / t_one),
        ("batched", batch_size, t_batch, len(rows) / t_batch, n_new / t_batch),
    ]
    print(
        f"{len(rows)} items, max_new_tokens={size['max_new_tokens']}, tiny Qwen2-Audio, fp32 CPU, "
        f"tokenizer {tokenizer} (vocab {vocab:,})"
    )
    print_table(["mode", "batch_size", "seconds", "items/s", "new tokens/s"], table)
    print()
    print_table(
        ["mode", "prefill s/item", "decode ms/token/item"],
        [
            ("one at a time", prefill_one, 1000 * decode_one),
            ("batched", prefill_batched, 1000 * decode_batched),
        ],
    )
    print(f"implied speedup at max_new_tokens={budget} (eval.run default): {projected:.2f}x")
    result = {
        "bench": "eval_batching",
        "speedup": round(t_one / t_batch, 2),
        "identical_predictions": identical,
        "items": len(rows),
        "batch_size": batch_size,
        "tokenizer": tokenizer,
        "vocab_size": vocab,
        "max_new_tokens": size["max_new_tokens"],
        "seconds_one_at_a_time": round(t_one, 2),
        "seconds_batched": round(t_batch, 2),
        "differing_items": sum(a != b for a, b in zip(one, batched)),
        "prefill_s_per_item": {"one": round(prefill_one, 4), "batched": round(prefill_batched, 4)},
        "decode_ms_per_token": {
            "one": round(1000 * decode_one, 3),
            "batched": round(1000 * decode_batched, 3),
        },
        "decode_speedup": round(decode_one / decode_batched, 2),
        "implied_speedup_at_default_max_new_tokens": round(projected, 2),
        "default_max_new_tokens": budget,
        "torch_threads": torch.get_num_threads(),
        "quick": args.quick,
    }
    print(f"speedup {result['speedup']}x, identical predictions: {identical}")
    emit(result)
    return result


if __name__ == "__main__":
    main()
