"""Share of training step time spent waiting for the next batch, with the trainer's real loader.

    python -m bench.data_stall [--quick]

The run is the tiny CPU recipe (configs/tiny/cpu.yaml: batch 2, its `dataloader_num_workers`) built
from the SFT recipe's own pieces (family loading, LoRA, `load_fitting_split`, `AudioChatCollator`,
`build_trainer`) on a prepared synthetic dataset, in one process (the wait of one rank is what
matters; DeepSpeed is left out so the loop is the HF Trainer's own). The collator decodes the audio
and computes log-mel features in the loader, so that is where a stall would come from.

Measurement: `Trainer.get_batch_samples` is the only place the training loop pulls batches from the
dataloader, so the bench times every call to it. stall_frac = time inside it / wall time, over the
optimizer steps after the first (the first pays one-off costs: worker start-up, lazy inits), up to
the end of the last optimizer step (the final save and teardown are not step time). A run in
which the hooks saw fewer than two steps raises instead of reporting 0.
Rows for other worker counts show what the `dataloader_num_workers` knob changes.
"""

from __future__ import annotations

import time
from pathlib import Path

from transformers import TrainerCallback

from bench._common import emit, parse_args, print_table, synth_dataset, tiny_model, workdir
from common.paths import REPO_ROOT

RECIPE = REPO_ROOT / "configs" / "tiny" / "cpu.yaml"
FULL = {"items": 300, "steps": 40, "workers": (0, 2)}  # 39 measured steps: a steadier share
QUICK = {"items": 60, "steps": 5, "workers": (0,)}


class StallTimer(TrainerCallback):
    """Wraps a trainer's get_batch_samples (keeps (enter, exit) of every call) and stamps step ends.

    The window closes at the last optimizer step's end, so the final checkpoint save, the
    loader's teardown and the end-of-training bookkeeping are not counted as step time.
    """

    def __init__(self, trainer) -> None:
        self.calls: list[tuple[float, float]] = []
        self.step_ends: list[float] = []
        self._inner = trainer.get_batch_samples
        trainer.get_batch_samples = self.timed_get_batch_samples
        trainer.add_callback(self)

    def timed_get_batch_samples(self, *args, **kwargs):
        start = time.perf_counter()
        out = self._inner(*args, **kwargs)
        self.calls.append((start, time.perf_counter()))
        return out

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.perf_counter())

    def stall_frac(self) -> tuple[float, float]:
        """(waiting share, mean step seconds) over every step but the first.

        Raises when the hooks saw fewer than two steps: a silent 0.0 would read as "no stall".
        """
        calls = self.calls[1:]
        if not calls or len(self.step_ends) < 2:
            raise RuntimeError(
                f"data_stall measured nothing: {len(self.calls)} get_batch_samples call(s) and "
                f"{len(self.step_ends)} step end(s) seen; did the Trainer's loop change?"
            )
        end = self.step_ends[-1]
        wall = end - calls[0][0]
        wait = sum(b - a for a, b in calls)
        return wait / wall, wall / (len(self.step_ends) - 1)


def run_config(model_dir: Path, data: Path, out: Path, steps: int, workers: int | None) -> object:
    """configs/tiny/cpu.yaml with the bench's paths; `workers=None` keeps the config's own setting."""
    from train.config import load_config

    argv = [
        "--config", str(RECIPE),
        "--model_name_or_path", str(model_dir), "--dataset_dir", str(data), "--output_dir", str(out),
        "--deepspeed", "null", "--report_to", "none", "--val_split", "null",
        "--max_steps", str(steps), "--save_steps", str(10 * steps), "--logging_steps", str(10 * steps),
    ]  # fmt: skip
    if workers is not None:
        argv += ["--dataloader_num_workers", str(workers)]
    return load_config(argv)


def measure(cfg) -> tuple[float, float]:
    """(stall_frac, seconds per step) of one short training run built from the SFT recipe's pieces."""
    from transformers import set_seed

    from models.inputs import AudioChatCollator
    from train import components, sft

    set_seed(cfg.training.seed)
    family = components.resolve_family(cfg)
    processor = family.load_processor(cfg.model.model_name_or_path)
    model = family.load_model(
        cfg.model.model_name_or_path, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation
    )
    model = components.add_lora(model, family, cfg.lora)
    train_ds, _ = components.load_fitting_split(cfg.data, cfg.data.train_split, family, processor, None)
    collator = AudioChatCollator(family, processor, cfg.data.max_length)
    trainer = sft.build_trainer(cfg, model, family, processor, collator, train_ds, None, [])
    timer = StallTimer(trainer)
    trainer.train()
    return timer.stall_frac()


def main(argv: list[str] | None = None) -> dict:
    """Run the bench; prints the table and the JSON line, returns the figures."""
    args = parse_args(__doc__.splitlines()[0], argv)
    size = QUICK if args.quick else FULL
    import torch

    # 2 ranks on 2 cores get one thread each (train.distributed.setup_env); so does this one rank.
    torch.set_num_threads(1)
    rows, by_workers = [], {}
    with workdir(args.workdir) as work:
        model_dir = tiny_model(work, args.seed, tokenizer="local")
        data = synth_dataset(work, size["items"], args.seed)
        default = run_config(model_dir, data, work / "run", size["steps"], None)
        default_workers = default.training.dataloader_num_workers
        for workers in sorted({default_workers, *size["workers"]}):
            cfg = run_config(model_dir, data, work / f"run-w{workers}", size["steps"], workers)
            frac, step_s = measure(cfg)
            by_workers[workers] = round(frac, 4)
            note = "config default" if workers == default_workers else "override"
            rows.append((workers, note, step_s, frac * step_s, frac))
    print(f"tiny Qwen2-Audio LoRA, {RECIPE.relative_to(REPO_ROOT)}, batch 2, {size['steps']} steps, 1 thread")
    print_table(["dataloader_num_workers", "setting", "s/step", "waiting s/step", "stall_frac"], rows)
    default_row = next(r for r in rows if r[0] == default_workers)
    result = {
        "bench": "data_stall",
        "stall_frac": by_workers[default_workers],
        "dataloader_num_workers": default_workers,
        "stall_frac_by_workers": {str(k): v for k, v in by_workers.items()},
        "seconds_per_step": round(default_row[2], 3),  # of the config's own setting
        "waiting_seconds_per_step": round(default_row[3], 4),
        "steps": size["steps"],
        "quick": args.quick,
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
