"""What a training run leaves on disk and does after training, for both recipes: run_info.json (what was
trained on what: eval's leakage guard reads it), run_config.yaml, the adapter and trainer state with a
cross-rank weight check, and the optional eval of the saved adapter.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from common.config import to_yaml
from common.io import atomic_write_json, atomic_write_text, sha256_file
from common.logging_utils import is_main_process
from common.provenance import git_sha, library_versions
from models.inputs import ANSWERS_TRUNCATED
from train.config import TrainConfig

logger = logging.getLogger(__name__)


def last_eval(trainer: Any) -> dict | None:
    """The eval logged at the final step, if the schedule already ran one (no second pass)."""
    for entry in reversed(trainer.state.log_history):
        if "eval_loss" in entry:
            return entry if entry.get("step") == trainer.state.global_step else None
    return None


def build_run_info(
    cfg: TrainConfig, family: ModuleType, manifest: dict, train_ds: Any, skipped: list[dict]
) -> dict:
    """What was trained on what: read by eval.run's leakage guard (train_groups) and by people."""
    dataset_dir = Path(cfg.data.dataset_dir)
    split = manifest.get("splits", {}).get(cfg.data.train_split, {})
    ids, groups = list(train_ds["id"]), sorted({str(g) for g in train_ds["group"]})
    return {
        "format_version": 1,
        "status": "running",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "method": cfg.training.method,
        "base_model": cfg.model.model_name_or_path,
        "family": family.NAME,
        "dataset": {
            "dir": str(dataset_dir.resolve()),
            "name": manifest.get("name"),
            "hash": manifest.get("hash"),
            "manifest_sha256": sha256_file(dataset_dir / "manifest.json"),
        },
        # Every group of the split, not only the rows used: the guard must be conservative.
        "train_groups": sorted(set(groups) | {str(g) for g in split.get("groups", [])}),
        "splits": {
            "train": {
                "name": cfg.data.train_split,
                "hash": split.get("hash"),
                "count": len(ids),
                "ids": ids,
                "groups": groups,
                "skipped": skipped,
            },
        },
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "versions": library_versions(),
    }


def write_run_files(out: Path, cfg: TrainConfig, run_info: dict) -> None:
    """run_config.yaml + run_info.json at the start, so even a crashed run says what it was."""
    if not is_main_process():
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "run_config.yaml", to_yaml(cfg))
    atomic_write_json(out / "run_info.json", run_info)


def trainable_digest(model: Any) -> str:
    """sha256 over the trainable parameters (gathered under ZeRO-3), the same on every healthy rank."""
    import contextlib

    import torch

    params = sorted((n, p) for n, p in model.named_parameters() if p.requires_grad)
    gather: Any = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for _, p in params):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None)
    h = hashlib.sha256()
    with gather, torch.no_grad():
        for name, p in params:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def all_ranks(value: str) -> list[str]:
    """Gather a string from every rank (a one-element list without torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def sum_over_ranks(counts: dict[str, int]) -> dict[str, int]:
    """Per-rank counters summed over every rank (a collective: every rank must call it)."""
    total: Counter = Counter()
    for part in all_ranks(counts):
        total.update(part)
    return {k: int(v) for k, v in total.items()}  # keys with 0 stay: update() keeps them


def data_counts(split_skipped: dict[str, list[dict]], collator: Any = None) -> dict[str, Any]:
    """Every sample the recipe or the collator left out or shortened, for run_info.json and W&B.

    `split_skipped`: split -> load_fitting_split's drops (the same on every rank: each loads the whole
    split). The collator's counts are per rank (its loader workers already add into them), so
    they are summed over ranks here: a collective when a collator is given.
    """
    counts: dict[str, Any] = {
        f"{split}_split_dropped": dict(sorted(Counter(s["reason"] for s in skipped).items()))
        for split, skipped in split_skipped.items()
    }
    if collator is not None:
        summed = sum_over_ranks(collator.counts.as_dict())
        truncated = summed.pop(ANSWERS_TRUNCATED)
        counts["collator_dropped"] = {k: v for k, v in sorted(summed.items()) if v}
        counts["answers_truncated"] = truncated
    return counts


def count_metrics(counts: dict[str, Any]) -> dict[str, float]:
    """`data/<name>` (and `data/<name>/<reason>`) W&B metrics from `data_counts`; zeros included."""
    metrics: dict[str, float] = {}
    for name, value in counts.items():
        if isinstance(value, dict):
            metrics[f"data/{name}"] = sum(value.values())
            metrics.update({f"data/{name}/{reason}": n for reason, n in value.items()})
        else:
            metrics[f"data/{name}"] = value
    return metrics


def save_run(trainer: Any, cfg: TrainConfig, run_info: dict, final: dict, **extra_info: Any) -> None:
    """Adapter + processor (all ranks enter: ZeRO-3 gathers), then run files on rank 0.

    `extra_info` goes into run_info.json (the SFT collator's drop counts, GRPO's reward weights).
    """
    import torch.distributed as dist

    out = Path(cfg.training.output_dir)
    trainer.save_model(str(out))  # PEFT format: adapter_config.json + adapter_model.safetensors
    digests = all_ranks(trainable_digest(trainer.model))
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks disagree on the trained weights: {digests}")
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(out))
        trainer.save_state()  # trainer_state.json (log history: losses or rewards, global step)
        run_info.update(
            status="complete",
            finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
            global_step=trainer.state.global_step,
            final_metrics=final,
            adapter_digests=digests,
            **extra_info,
        )
        atomic_write_json(out / "run_info.json", run_info)
        atomic_write_text(out / "run_config.yaml", to_yaml(cfg))
        logger.info(
            "saved adapter to %s (trainable sha256 %s on %d rank(s))", out, digests[0][:12], len(digests)
        )
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # nobody leaves before the adapter is on disk


def free_trainer(trainer: Any) -> None:
    """Release the training model and optimizer (eval at end loads a fresh copy)."""
    import gc

    import torch

    trainer.accelerator.free_memory()
    trainer.model = trainer.model_wrapped = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def eval_at_end(cfg: TrainConfig, family: ModuleType, out: Path) -> dict[str, float]:
    """eval.run on the saved adapter (base + adapter reloaded from disk); returns W&B metrics."""
    from eval.run import EvalConfig, run, wandb_metrics

    e = cfg.eval_at_end
    eval_cfg = EvalConfig(
        model=cfg.model.model_name_or_path,
        adapter=str(out),
        data=cfg.data.dataset_dir,
        split=e.split,
        out=str(out / "eval" / e.split),
        batch_size=e.batch_size,
        max_new_tokens=e.max_new_tokens,
        limit=e.limit,
        seed=cfg.training.seed,
        dtype=cfg.model.dtype,
        family=family.NAME,
        attn_implementation=cfg.model.attn_implementation,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    metrics = run(eval_cfg)
    logger.info("eval at end (%s): written to %s", e.split, eval_cfg.out)
    return wandb_metrics(metrics, prefix="eval")
