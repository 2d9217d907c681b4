"""Batched vs one-at-a-time generation through eval.run's real code path.

    python -m bench.eval_batching [--quick]

The reference MMAR/MMAU scripts call `generate()` once per item. `eval.run.evaluate` sorts the
prompts by length and generates `batch_size` of them at once with left padding. Both modes below
use that same function on the same tiny Qwen2-Audio and the same synthetic test items; only
`batch_size` differs. They run interleaved, batch by batch (the batch's items one at a time, then
the batch at once), so a change in what else the shared CPU is doing falls on both modes alike; the
wall-clock ratio is the headline and the CPU-time ratio (this process's CPU seconds) is printed
beside it. Torch runs one thread, so CPU time is what the computation costs.

Greedy decoding with correct attention masks must give the same predictions either way, up to
floating-point rounding: a batch pads its prompts, which changes the order of the sums inside the
matmuls. Every item whose prediction differs is explained: the first new token where the two runs
part, the gap between the top two logits of the one-at-a-time run there, and how far the batched
run's logits moved from it at that step (both runs share the prefix, so the logits compare).

The tiny model uses the real Qwen2 tokenizer (151,680 tokens) when ../shared has it, else the 1k
local one; the JSON says which (`tokenizer`, `vocab_size`). The bench also measures prefill time per
item (prompt encoding, audio features, the prefill, one new token) and decode time per new token in
both modes, and the speedup those imply at eval.run's default `max_new_tokens` (a derived figure).
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


def run_interleaved(model, processor, family, rows: list[dict], batch_size: int, max_new_tokens: int) -> dict:
    """Both modes over eval.run's own batches, alternating batch by batch. Returns, per mode ("one",
    "batched"), wall seconds, CPU seconds and the prediction rows in the order of `rows`."""
    from eval.run import EvalConfig, batches, evaluate

    modes = {"one": 1, "batched": batch_size}
    out = {mode: {"wall": 0.0, "cpu": 0.0, "preds": {}} for mode in modes}
    for idx in batches(rows, batch_size):
        batch = [rows[i] for i in idx]
        for mode, size in modes.items():
            cfg = EvalConfig(batch_size=size, max_new_tokens=max_new_tokens)
            wall, cpu = time.perf_counter(), time.process_time()
            preds = evaluate(model, processor, family, batch, cfg, progress=False)
            out[mode]["wall"] += time.perf_counter() - wall
            out[mode]["cpu"] += time.process_time() - cpu
            out[mode]["preds"].update({p["id"]: p for p in preds})
    for mode in modes:
        out[mode]["preds"] = [out[mode]["preds"][r["id"]] for r in rows]
    return out


def greedy_steps(model, processor, family, batch: list[dict], max_new_tokens: int) -> tuple[list, list]:
    """(new token ids per row, logits per step (rows x vocab)) of eval.run's greedy decoding of `batch`."""
    import torch

    from eval.run import greedy_generation_config
    from models.generation import last_position_logits
    from models.inputs import encode_prompts

    inputs = encode_prompts(family, processor, batch)
    gen = greedy_generation_config(model, processor, max_new_tokens)
    with torch.inference_mode(), last_position_logits(model):
        out = model.generate(
            **inputs, generation_config=gen, output_scores=True, return_dict_in_generate=True
        )
    new = out.sequences[:, inputs["input_ids"].shape[1] :].tolist()
    return new, list(out.scores)


def _sig(x: float) -> float:
    return float(f"{x:.3g}")


def explain_difference(model, processor, family, batch: list[dict], row: dict, max_new_tokens: int) -> dict:
    """Where `row`'s answer in `batch` parts from its answer alone: the first new token that differs,
    the two candidates' logits in both runs, and how far the batch moved the logits at that step."""
    alone_ids, alone_scores = greedy_steps(model, processor, family, [row], max_new_tokens)
    batch_ids, batch_scores = greedy_steps(model, processor, family, batch, max_new_tokens)
    i = next(k for k, r in enumerate(batch) if r["id"] == row["id"])
    a, b = alone_ids[0], batch_ids[i]
    step = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if step is None:
        return {"id": row["id"], "first_differing_token": None}
    alone, batched = alone_scores[step][0].double(), batch_scores[step][i].double()
    return {
        "id": row["id"],
        "first_differing_token": step,
        "tokens": {"one": a[step], "batched": b[step]},
        "logits_one_at_a_time": [float(alone[a[step]]), float(alone[b[step]])],
        "logits_batched": [float(batched[a[step]]), float(batched[b[step]])],
        "top2_gap_one_at_a_time": _sig(float(alone[a[step]] - alone[b[step]])),
        "max_logit_shift_batched": _sig(float((batched - alone).abs().max())),
    }


def per_row_costs(model, batch_size: int, reps: int = 20) -> dict[str, dict[str, float]]:
    """CPU ms per row of the work of one greedy step that scales with the vocabulary, at 1 row and at
    `batch_size` rows: the LM head (a matmul), `generate`'s fp32 copy of the last position's logits,
    and the greedy pick (argmax over the vocabulary). Process CPU time, so other jobs on the machine
    do not count."""
    import torch

    head = model.get_output_embeddings()
    hidden = model.config.get_text_config().hidden_size
    steps = {
        "lm_head": lambda h: head(h),
        "logits_copy": lambda logits: logits[:, -1, :].to(copy=True, dtype=torch.float32),
        "greedy_pick": lambda logits: logits[:, -1, :].argmax(dim=-1),
    }
    costs: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for rows in (1, batch_size):
            h = torch.randn(rows, 1, hidden)
            logits = head(h)
            for name, step in steps.items():
                arg = h if name == "lm_head" else logits
                start = time.process_time()
                for _ in range(reps):
                    step(arg)
                ms = 1000 * (time.process_time() - start) / reps / rows
                costs.setdefault(name, {})["one" if rows == 1 else "batched"] = round(ms, 3)
    return costs


def prefill_seconds(model, processor, family, rows: list[dict], batch_size: int) -> dict[str, float]:
    """Wall seconds per item of prompt encoding + audio features + prefill + one new token, in the
    two modes interleaved over `rows`."""
    timed = run_interleaved(model, processor, family, rows, batch_size, 1)
    return {mode: timed[mode]["wall"] / len(rows) for mode in ("one", "batched")}


def measure(model, processor, family, rows: list[dict], batch_size: int, max_new_tokens: int) -> dict:
    """Every figure of the bench: the interleaved runs, the prefill, each differing item explained,
    the per-row cost of a decoding step's vocabulary-wide work."""
    from eval.run import batches

    run_interleaved(model, processor, family, rows[:2], 2, 2)  # warm-up: lazy inits, allocator
    timed = run_interleaved(model, processor, family, rows, batch_size, max_new_tokens)
    pairs = zip(rows, timed["one"]["preds"], timed["batched"]["preds"], strict=True)
    differing = [row for row, a, b in pairs if a != b]
    batch_of = {rows[i]["id"]: [rows[j] for j in idx] for idx in batches(rows, batch_size) for i in idx}
    first = [rows[i] for i in batches(rows, batch_size)[0]]
    return {
        "timed": timed,
        "prefill": prefill_seconds(model, processor, family, first, batch_size),
        "explained": [
            explain_difference(model, processor, family, batch_of[r["id"]], r, max_new_tokens)
            for r in differing
        ],
        "per_row_costs": per_row_costs(model, batch_size),
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the bench; prints the tables and the JSON line, returns the figures."""
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
        measured = measure(model, processor, family, rows, batch_size, size["max_new_tokens"])
    setup = {"tokenizer": tokenizer, "vocab_size": model.config.get_text_config().vocab_size}
    return report(args, size, setup, batch_size, rows, measured)


def report(args, size: dict, setup: dict, batch_size: int, rows: list[dict], measured: dict) -> dict:
    """Print the tables and the JSON line; returns the figures."""
    import torch

    from eval.run import EvalConfig

    timed, explained, costs = measured["timed"], measured["explained"], measured["per_row_costs"]
    prefill_one, prefill_batched = measured["prefill"]["one"], measured["prefill"]["batched"]
    tokenizer, vocab = setup["tokenizer"], setup["vocab_size"]
    one, batched = timed["one"], timed["batched"]
    t_one, t_batch = one["wall"], batched["wall"]
    n_new = sum(p["n_new_tokens"] for p in one["preds"])
    # Per new token, per item: what is left of each run once its prefill time is taken out.
    decode_one = max(t_one - prefill_one * len(rows), 1e-9) / n_new
    decode_batched = max(t_batch - prefill_batched * len(rows), 1e-9) / n_new
    budget = EvalConfig().max_new_tokens
    projected = (prefill_one + budget * decode_one) / (prefill_batched + budget * decode_batched)
    print(
        f"{len(rows)} items, max_new_tokens={size['max_new_tokens']}, tiny Qwen2-Audio, fp32 CPU, "
        f"tokenizer {tokenizer} (vocab {vocab:,}), modes interleaved batch by batch"
    )
    print_table(
        ["mode", "batch_size", "wall s", "cpu s", "items/s", "new tokens/s"],
        [
            ("one at a time", 1, t_one, one["cpu"], len(rows) / t_one, n_new / t_one),
            ("batched", batch_size, t_batch, batched["cpu"], len(rows) / t_batch, n_new / t_batch),
        ],
    )
    print()
    print_table(
        ["mode", "prefill s/item", "decode ms/token/item"],
        [
            ("one at a time", prefill_one, 1000 * decode_one),
            ("batched", prefill_batched, 1000 * decode_batched),
        ],
    )
    print(f"implied speedup at max_new_tokens={budget} (eval.run default): {projected:.2f}x")
    print()
    print("CPU ms per row of a decoding step's work over the vocabulary:")
    print_table(
        ["step", "1 row", f"{batch_size} rows"], [(name, c["one"], c["batched"]) for name, c in costs.items()]
    )
    for e in explained:
        print(f"differs: {e}")
    result = {
        "bench": "eval_batching",
        "speedup": round(t_one / t_batch, 2),
        "speedup_cpu_time": round(one["cpu"] / batched["cpu"], 2),
        "identical_predictions": not explained,
        "items": len(rows),
        "batch_size": batch_size,
        "tokenizer": tokenizer,
        "vocab_size": vocab,
        "max_new_tokens": size["max_new_tokens"],
        "seconds_one_at_a_time": round(t_one, 2),
        "seconds_batched": round(t_batch, 2),
        "cpu_seconds": {"one": round(one["cpu"], 2), "batched": round(batched["cpu"], 2)},
        "differing_items": len(explained),
        "differences": explained,
        "prefill_s_per_item": {"one": round(prefill_one, 4), "batched": round(prefill_batched, 4)},
        "decode_ms_per_token": {
            "one": round(1000 * decode_one, 3),
            "batched": round(1000 * decode_batched, 3),
        },
        "decode_speedup": round(decode_one / decode_batched, 2),
        "vocabulary_work_cpu_ms_per_row": costs,
        "implied_speedup_at_default_max_new_tokens": round(projected, 2),
        "default_max_new_tokens": budget,
        "torch_threads": torch.get_num_threads(),
        "quick": args.quick,
    }
    print(f"speedup {result['speedup']}x (CPU time {result['speedup_cpu_time']}x), identical predictions: "
          f"{result['identical_predictions']}")  # fmt: skip
    emit(result)
    return result


if __name__ == "__main__":
    main()
