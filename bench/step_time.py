"""Training step time: our SFT recipe's step vs the full-logits step of a plain transformers.Trainer.

    python -m bench.step_time [--quick] [--steps 20] [--repeats 5]

Both systems train the same tiny Qwen2-Audio (`scripts.make_tiny_model --tokenizer qwen2`: hidden
64 with the real 151,680-token vocabulary, from ../shared; the 1k local vocabulary when ../shared is
absent, which the JSON says), on the same prepared synthetic samples in the same order (random
sampler, same seed), batch 2, fp32, eager attention, LoRA r8 on q/k/v/o/gate/up/down + the trainable
projector (configs/tiny/cpu.yaml without DeepSpeed, 0 loader workers), through the same collator:

  ours       the SFT recipe's own functions: load_model_and_processor, add_lora, load_fitting_split, the
             collator, build_trainer (label-only LM head and loss, train/label_only_loss.py)
  reference  `transformers.Trainer` on the model's own forward, which builds B x T x V logits: the
             way LLaMA-Factory and ms-swift train (measured within 6% of them: README, Performance)

Each run is its own subprocess (peak RSS is per process), alternating ours / reference / reference
/ ours ... so that load on a shared CPU hits both alike. A step is the wall time between two
consecutive optimizer-step ends (collate + forward + backward + AdamW); the first
`WARMUP_STEPS` are dropped and the median is taken per run. `ratio` is the median, over the
repeats, of ours / reference within each adjacent pair of runs (on a shared CPU the load drifts
between minutes; a pair sees about the same load); `ratio_of_medians` divides the medians over all
runs. The first-step losses of both systems must agree: the label-only loss is the same number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import (
    emit,
    parse_args,
    print_table,
    real_tokenizer_if_present,
    synth_dataset,
    tiny_model,
    workdir,
)
from common.paths import REPO_ROOT
from models.inputs import IGNORE_INDEX

FULL = {"items": 100, "steps": 20, "repeats": 5}
QUICK = {"items": 12, "steps": 6, "repeats": 1}
WARMUP_STEPS = 2
SYSTEMS = ("ours", "reference")
THREADS = "2"  # OMP_NUM_THREADS of each run, as in the peer measurements the README quotes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=None, help="runs per system (alternating)")
    parser.add_argument("--tokenizer", choices=("auto", "qwen2", "local"), default="auto",
                        help="auto = the real Qwen2 tokenizer when ../shared has it (local in --quick)")  # fmt: skip
    # one measured run (what the parent launches): --worker ours|reference --model DIR --data DIR
    parser.add_argument("--worker", choices=SYSTEMS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)


# -- one measured run (a subprocess) ------------------------------------------------------------


def _config(model: str, data: str, out: str, steps: int, seed: int):
    from train.config import load_config

    overrides = {
        "model_name_or_path": model, "dataset_dir": data, "output_dir": out, "max_steps": steps,
        "deepspeed": "null", "group_by_length": "false", "val_split": "null", "report_to": "none",
        "logging_steps": 1, "save_steps": 100000, "warmup_ratio": 0.0, "seed": seed,
        # Collate in the step, as the README's peer measurements did: loader workers would compete
        # with the step's 2 threads for the same 2 cores, and their RSS is not the process's.
        "dataloader_num_workers": 0,
    }  # fmt: skip
    argv = ["--config", str(REPO_ROOT / "configs/tiny/cpu.yaml")]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    return load_config(argv)


class _CountingCollator:
    """The recipe's collator, counting positions and label positions per batch (for the table).

    The counts live in the class, not the instance: the recipe's resumable loader may hand a copy
    of the collator to the DataLoader, and the copy must count into the same place.
    """

    counts = {"positions": 0, "labelled": 0, "batches": 0}

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, rows):
        batch = self.inner(rows)
        self.counts["positions"] += int(batch["labels"].numel())
        self.counts["labelled"] += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        self.counts["batches"] += 1
        return batch


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    return StepTimer()


def run_worker(system: str, model_dir: str, data_dir: str, steps: int, seed: int) -> dict:
    """Train `steps` steps with one system; returns its timings, losses and peak RSS."""
    import resource

    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    from models.inputs import AudioChatCollator
    from train import components, sft

    out = tempfile.mkdtemp(prefix=f"art-step-{system}-")
    cfg = _config(model_dir, data_dir, out, steps, seed)
    set_seed(seed)
    family, processor, model = components.load_model_and_processor(cfg)
    sft.check_loss_scaling(model)
    model = components.add_lora(model, family, cfg.lora)
    train_ds, _ = components.load_fitting_split(cfg.data, cfg.data.train_split, family, processor, None)
    collator = _CountingCollator(AudioChatCollator(family, processor, cfg.data.max_length))
    timer = _step_timer()
    if system == "ours":
        trainer = sft.build_trainer(cfg, model, family, processor, collator, train_ds, None, [timer])
    else:
        args = TrainingArguments(**components.shared_trainer_kwargs(cfg), remove_unused_columns=False)
        trainer = Trainer(
            model=model, args=args, train_dataset=train_ds, data_collator=collator, callbacks=[timer]
        )
    trainer.train()
    step_s = [b - a for a, b in zip(timer.ends, timer.ends[1:])][WARMUP_STEPS:]
    counts = _CountingCollator.counts
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "system": system,
        "trainer": type(trainer).__name__,
        "ms_per_step": round(1000 * statistics.median(step_s), 1),
        "steps_timed": len(step_s),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "vocab_size": model.config.get_text_config().vocab_size,
        "labelled_positions_per_batch": round(counts["labelled"] / max(counts["batches"], 1), 1),
        "positions_per_batch": round(counts["positions"] / max(counts["batches"], 1), 1),
        "torch_threads": torch.get_num_threads(),
    }


# -- the comparison (parent) --------------------------------------------------------------------


def _launch(system: str, model: Path, data: Path, steps: int, seed: int) -> dict:
    cmd = [sys.executable, "-m", "bench.step_time", "--worker", system, "--model", str(model),
           "--data", str(data), "--steps", str(steps), "--seed", str(seed)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", THREADS)}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{system} run failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _tokenizer(choice: str, quick: bool) -> str:
    if choice != "auto":
        return choice
    if quick:
        return "local"  # the smoke test checks the plumbing, not the ratio
    return real_tokenizer_if_present()


def main(argv: list[str] | None = None) -> dict:
    """Run the bench (or, with --worker, one measured run); prints the table and the JSON line."""
    args = parse_args(__doc__.splitlines()[0], argv, add_arguments)
    size = QUICK if args.quick else FULL
    steps = args.steps or size["steps"]
    if args.worker:
        result = run_worker(args.worker, args.model, args.data, steps, args.seed)
        emit(result)
        return result
    repeats = args.repeats or size["repeats"]
    tokenizer = _tokenizer(args.tokenizer, args.quick)
    runs: list[dict] = []
    with workdir(args.workdir) as work:
        model = tiny_model(work, args.seed, tokenizer=tokenizer)
        data = synth_dataset(work, size["items"], args.seed)
        for r in range(repeats):
            order = SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]
            for system in order:
                print(f"run {r + 1}/{repeats}: {system} ({steps} steps)", file=sys.stderr, flush=True)
                runs.append({"repeat": r + 1, **_launch(system, model, data, steps, args.seed)})
    return report(runs, tokenizer, steps, args.quick)


def report(runs: list[dict], tokenizer: str, steps: int, quick: bool) -> dict:
    """The per-run table, the summary line and the JSON object."""
    by = {s: [r for r in runs if r["system"] == s] for s in SYSTEMS}
    ms = {s: statistics.median(r["ms_per_step"] for r in by[s]) for s in SYSTEMS}
    rss = {s: max(r["peak_rss_mib"] for r in by[s]) for s in SYSTEMS}
    first = {s: by[s][0]["first_loss"] for s in SYSTEMS}
    ours, ref = by["ours"][0], by["reference"][0]
    print(
        f"tiny Qwen2-Audio, tokenizer {tokenizer} (vocab {ours['vocab_size']:,}), "
        f"batch 2, fp32, eager, LoRA r8 + projector ({ours['trainable_params']:,} trainable), {steps} steps, "
        f"{ours['labelled_positions_per_batch']:.0f} of {ours['positions_per_batch']:.0f} positions per batch "
        "carry a label"
    )
    print_table(
        ["run", "system", "trainer", "ms/step (median)", "peak RSS MiB", "first loss", "last loss"],
        [(r["repeat"], r["system"], r["trainer"], r["ms_per_step"], r["peak_rss_mib"], r["first_loss"],
          r["last_loss"]) for r in runs],
    )  # fmt: skip
    pairs = [o["ms_per_step"] / r["ms_per_step"] for o, r in zip(by["ours"], by["reference"])]
    ratio = statistics.median(pairs)
    loss_rel_diff = abs(first["ours"] - first["reference"]) / abs(first["reference"])
    print(
        f"ours {ms['ours']:.1f} ms/step vs reference {ms['reference']:.1f}: ratio {ratio:.3f} (target <= 0.35)"
    )
    result = {
        "bench": "step_time",
        "ms_per_step": ms["ours"],
        "reference_ms_per_step": ms["reference"],
        "ratio": round(ratio, 3),
        "ratio_of_medians": round(ms["ours"] / ms["reference"], 3),
        "pair_ratios": [round(p, 3) for p in pairs],
        "peak_rss_mib": rss["ours"],
        "reference_peak_rss_mib": rss["reference"],
        "first_loss": first["ours"],
        "reference_first_loss": first["reference"],
        "first_loss_rel_diff": loss_rel_diff,
        "tokenizer": tokenizer,
        "vocab_size": ours["vocab_size"],
        "trainable_params": ours["trainable_params"],
        "reference_trainable_params": ref["trainable_params"],
        "labelled_positions_per_batch": ours["labelled_positions_per_batch"],
        "positions_per_batch": ours["positions_per_batch"],
        "steps": steps,
        "repeats": len(by["ours"]),
        "runs_ms_per_step": {s: [r["ms_per_step"] for r in by[s]] for s in SYSTEMS},
        "torch_threads": ours["torch_threads"],
        "quick": quick,
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
