"""Experiment tracking: W&B on rank 0 only, offline when it cannot reach the service, never hanging.

The recipe (and `train.grpo`) use three calls:
    start_run(cfg, run_info)          # rank 0: wandb.init with the resolved config and git SHA
    callbacks = tracking_callbacks(cfg)  # tokens/s on every rank, W&B logging on rank 0
    finish_run(cfg, adapter_dir)      # optional adapter artifact, wandb.finish()
HF's own WandbCallback is not used (`report_to="none"` in the trainer): we log namespaced metrics
(`train/loss`, `train/lr`, `eval/loss`, `train/tokens_per_s`) ourselves, which keeps key names and
the rank-0 rule explicit.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from transformers import TrainerCallback

from common.config import to_dict
from common.logging_utils import is_main_process
from common.tracking import wandb_mode
from train.config import TrainConfig

logger = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id.txt"


def resolve_wandb_mode(cfg: TrainConfig) -> str:
    """'online', 'offline' or 'disabled', decided once (common.tracking.wandb_mode: never blocks)."""
    return wandb_mode(cfg.wandb.mode) if cfg.wandb.report_to == "wandb" else "disabled"


def start_run(cfg: TrainConfig, run_info: dict) -> str:
    """Start the W&B run on rank 0 (other ranks and report_to=none: no-op). Returns the mode."""
    mode = resolve_wandb_mode(cfg) if is_main_process() else "disabled"
    if mode == "disabled":
        return mode
    import wandb

    out = Path(cfg.training.output_dir)
    wandb_dir = Path(cfg.wandb.wandb_dir or out)
    wandb_dir.mkdir(parents=True, exist_ok=True)
    # Resuming a run continues the same W&B run: the id is kept beside the checkpoints.
    id_file = out / RUN_ID_FILE
    run_id = id_file.read_text().strip() if cfg.training.resume_from_checkpoint and id_file.exists() else None
    run = wandb.init(
        project=cfg.wandb.project,
        name=cfg.wandb.run_name or out.name,
        tags=list(cfg.wandb.tags),
        config={**to_dict(cfg), "run_info": _small_run_info(run_info)},
        dir=str(wandb_dir),
        mode=mode,
        id=run_id,
        resume="allow" if run_id else None,
    )
    id_file.write_text(run.id)
    logger.info("W&B run %s (%s) in %s", run.id, mode, run.dir)
    return mode


def _small_run_info(run_info: dict) -> dict:
    """run_info without the long id/group lists (those stay in run_info.json)."""
    drop = {"ids", "groups"}
    return {
        k: ({kk: vv for kk, vv in v.items() if kk not in drop} if isinstance(v, dict) else v)
        for k, v in run_info.items()
    }


def namespaced(logs: dict[str, float]) -> dict[str, float]:
    """HF log keys -> our namespaces: loss -> train/loss, learning_rate -> train/lr, eval_loss -> eval/loss."""
    out = {}
    for key, value in logs.items():
        if not isinstance(value, (int, float)):
            continue
        if key.startswith("eval_"):
            out["eval/" + key[len("eval_") :]] = value
        elif key == "learning_rate":
            out["train/lr"] = value
        else:
            out["train/" + key] = value
    return out


class TokensPerSecondCallback(TrainerCallback):
    """Adds `tokens_per_s` (all ranks' non-padding input tokens per wall second) to each train log.

    Uses the trainer's own `num_input_tokens_seen` counter (`include_num_input_tokens_seen=
    "non_padding"`), which is already summed over ranks.
    """

    def __init__(self) -> None:
        self._t0: float | None = None
        self._tokens0 = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0, self._tokens0 = time.perf_counter(), state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or self._t0 is None:
            return
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        if now > self._t0:
            logs["tokens_per_s"] = round((tokens - self._tokens0) / (now - self._t0), 2)
        self._t0, self._tokens0 = now, tokens


class WandbLogCallback(TrainerCallback):
    """Sends namespaced trainer logs to the active W&B run (rank 0 only)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        import wandb

        if logs and state.is_world_process_zero and wandb.run is not None:
            wandb.log({**namespaced(logs), "train/global_step": state.global_step}, step=state.global_step)


def tracking_callbacks(cfg: TrainConfig, wandb_mode: str) -> list[TrainerCallback]:
    """Callbacks for the trainer, in order (tokens/s must be added before W&B reads the logs)."""
    cbs: list[TrainerCallback] = [TokensPerSecondCallback()]
    if wandb_mode != "disabled":
        cbs.append(WandbLogCallback())
    return cbs


def log_metrics(metrics: dict[str, float]) -> None:
    """Log already-namespaced metrics (e.g. `eval/acc/<layer>`) to the active run, if any."""
    if not is_main_process():
        return
    import wandb

    if wandb.run is not None:
        wandb.log(metrics)


def finish_run(cfg: TrainConfig, adapter_dir: str | Path) -> None:
    """Optionally upload the adapter as an artifact, then close the run (rank 0)."""
    if not is_main_process():
        return
    import wandb

    if wandb.run is None:
        return
    if cfg.wandb.log_adapter_artifact:
        art = wandb.Artifact(name=f"adapter-{wandb.run.id}", type="model")
        for name in ("adapter_config.json", "adapter_model.safetensors", "run_config.yaml", "run_info.json"):
            if (Path(adapter_dir) / name).exists():
                art.add_file(str(Path(adapter_dir) / name))
        wandb.run.log_artifact(art)
    logger.info("W&B run files: %s", wandb.run.dir)
    wandb.finish()
