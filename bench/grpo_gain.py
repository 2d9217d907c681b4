"""Does GRPO make the quickstart's tiny model better on held-out items, and better than more SFT?

    python -m bench.grpo_gain --seeds 0,1,2 [--grpo_steps 200] [--sft_stop 1500] [--grpo_args "--temperature 1.5"]
    python -m bench.grpo_gain --quick        # the smoke run of tests/test_bench.py (well under a minute)

Per seed, in <workdir>/seed<S> (default runs/grpo-gain; steps 1-2 are reused when already there):
1. the quickstart's pieces (scripts/quickstart.sh steps 1-5): 4,000 synthetic items prepared as
   cot_v1 and direct_v1 with one held-out split of 600, the tiny random Qwen2-Audio, and the base
   trained on swapped-audio direct answers (chance level), merged.
2. the start: the quickstart's CoT SFT (configs/tiny/quickstart.yaml, its 6,000-step schedule)
   stopped at checkpoint-<sft_stop>, well below where that schedule ends (55-86% on seeds 0-4).
3. side by side, one thread each (as the quickstart's stage 2): (a) GRPO from the start's adapter for
   `--grpo_steps` optimizer steps (configs/tiny/grpo_gain.yaml plus `--grpo_args`), and (b) the SFT
   resumed from the start checkpoint (same schedule, its optimizer state) until (a) ends, so both
   had the same wall-clock time on the same loaded box; (b)'s newest complete checkpoint is scored.
4. eval.run on the 600 held-out items (greedy, 64 new tokens, as the quickstart) for start, (a), (b);
   exact McNemar p-values (eval.stats) of (a) vs start, (b) vs start and (a) vs (b), the reward
   curve and the share of zero-variance groups from (a)'s log.
Prints a table and, as its last line, one JSON object with the figures of every seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import emit, parse_args, print_table, synth_dataset, workdir
from common.paths import REPO_ROOT

# The quickstart's budgets (scripts/quickstart.sh) and, for --quick, the smallest that still runs
# every stage: 160 items, no base stage (the tiny model itself is the base), a few steps each.
FULL = {"items": 4000, "base_steps": 600, "sft_schedule": 6000, "sft_stop": 1500, "grpo_steps": 200,
        "eval_limit": None, "sft_save_every": 100, "loader_workers": 2}  # fmt: skip
QUICK = {"items": 160, "base_steps": 0, "sft_schedule": 40, "sft_stop": 8, "grpo_steps": 2,
         "eval_limit": 16, "sft_save_every": 2, "loader_workers": 0}  # fmt: skip
QUICK_GRPO_ARGS = ["--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
                   "--num_generations", "4", "--max_completion_length", "8", "--logging_steps", "1"]  # fmt: skip
EVAL_ARGS = ["--split", "test", "--batch_size", "32", "--max_new_tokens", "64"]
ENV = {
    "OMP_NUM_THREADS": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "TOKENIZERS_PARALLELISM": "false",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (each: new data, init and runs)")
    p.add_argument("--grpo_steps", type=int, default=None, help="(a)'s optimizer steps (default 200)")
    p.add_argument("--sft_stop", type=int, default=None, help="the start: SFT checkpoint step (default 1500)")
    p.add_argument("--grpo_args", default="", help="extra train.py flags for (a), e.g. '--temperature 1.5'")
    p.add_argument("--tag", default=None, help="name of the arms' folder (default: a hash of the recipe)")


# 1-2. the quickstart's pieces and the start ------------------------------------------------------


def run_logged(cmd: list[str], log: Path) -> None:
    """A command of the pipeline with its output in `log`; a failure names the log."""
    with open(log, "w") as f:
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, env={**os.environ, **ENV}, stdout=f, stderr=subprocess.STDOUT
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}; see {log}")


def train_cmd(config: str, *flags: Any) -> list[str]:
    return [sys.executable, "train.py", "--config", config, *map(str, flags)]


def prepare_seed(root: Path, seed: int, budget: dict) -> dict[str, Path]:
    """Data, tiny model and merged base (scripts/quickstart.sh steps 1-5), reused when present."""
    from data_prep.swap_audio import swap_dataset
    from models import get_family
    from models.merge import merge_adapter

    paths = {"cot": root / "data/cot_v1/latest", "base": root / "base-model", "tiny": root / "tiny"}
    if budget["base_steps"] == 0:
        paths["base"] = paths["tiny"]
    if (paths["base"] / "config.json").exists() and (paths["cot"] / "manifest.json").exists():
        return paths
    for template in ("cot_v1", "direct_v1") if budget["base_steps"] else ("cot_v1",):
        synth_dataset(root / "data", budget["items"], seed, "--template", template, "--name",
                      f"synth_{template[:-3]}", out_dir=root / "data" / template)  # fmt: skip
    get_family("qwen2_audio").make_tiny(paths["tiny"], seed=seed, tokenizer="local", window_seconds=5)
    if budget["base_steps"]:
        swapped = swap_dataset(root / "data/direct_v1/latest", root / "data/base-swapped", seed=seed)
        run_logged(train_cmd("configs/tiny/quickstart_base.yaml", "--max_steps", budget["base_steps"],
                             "--model_name_or_path", paths["tiny"], "--dataset_dir", swapped,
                             "--output_dir", root / "base-adapter", "--seed", seed, "--wandb.report_to", "none"),
                   root / "base.log")  # fmt: skip
        merge_adapter(str(paths["tiny"]), str(root / "base-adapter"), str(paths["base"]))
    return paths


def sft_cmd(
    paths: dict[str, Path], out: Path, seed: int, budget: dict, *flags: Any, keep: int | None = 2
) -> list[str]:
    """The quickstart's CoT SFT (its whole schedule), keeping the newest `keep` checkpoints (None: all)."""
    return train_cmd(
        "configs/tiny/quickstart.yaml", "--max_steps", budget["sft_schedule"], "--model_name_or_path", paths["base"],
        "--dataset_dir", paths["cot"], "--output_dir", out, "--seed", seed, "--save_total_limit", "null" if keep is None else keep,
        "--dataloader_num_workers", budget["loader_workers"], "--wandb.report_to", "none", *flags,
    )  # fmt: skip


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """A training process in its own session, so stopping it also stops its loader workers."""
    f = open(log, "w")  # noqa: SIM115 (closed with the process by `stop`)
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env={**os.environ, **ENV}, stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def stop(proc: subprocess.Popen) -> None:
    """End a training process this bench started, and its workers (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    proc.stdout.close() if proc.stdout else None


def with_run_info(checkpoint: Path, run_dir: Path) -> Path:
    """A checkpoint folder eval.run can score: the run's run_info.json (training groups for the
    leakage guard) beside the adapter."""
    shutil.copy(run_dir / "run_info.json", checkpoint / "run_info.json")
    return checkpoint


def saves_every(checkpoint: Path) -> int | None:
    """The save interval a run resumed from `checkpoint` keeps: transformers restores the
    checkpoint's TrainerState, whose `save_steps` then decides when to save, whatever the flags say."""
    state = checkpoint / "trainer_state.json"
    return json.loads(state.read_text())["save_steps"] if state.exists() else None


def sft_start(paths: dict[str, Path], root: Path, seed: int, budget: dict) -> Path:
    """checkpoint-<sft_stop> of the quickstart's CoT SFT: the run is stopped once it is complete.

    It saves every `sft_save_every` steps, the interval (b) inherits when it resumes from it: saving
    only at `sft_stop` left (b) with checkpoints 1,500 steps apart (measured: killed at step 5,880,
    scored at 4,500). It keeps every checkpoint (4 MB each): with `--quick`'s 2-step interval a
    rotating run saved past checkpoint-8 and deleted it between two polls.
    """
    out = root / "sft"
    ckpt = out / f"checkpoint-{budget['sft_stop']}"
    if saves_every(ckpt) != budget["sft_save_every"]:
        shutil.rmtree(out, ignore_errors=True)
        proc = start(
            sft_cmd(paths, out, seed, budget, "--save_steps", budget["sft_save_every"], keep=None),
            root / "sft.log",
        )
        while proc.poll() is None and not (ckpt / "trainer_state.json").exists():
            time.sleep(1)
        stop(proc)
        if not (ckpt / "trainer_state.json").exists():
            raise RuntimeError(f"the SFT run ended before {ckpt.name}; see {root / 'sft.log'}")
    return with_run_info(ckpt, out)


# 3. the two arms, side by side -------------------------------------------------------------------


def run_arms(paths: dict[str, Path], start_ckpt: Path, arms: Path, seed: int, budget: dict,
             grpo_args: list[str]) -> dict:  # fmt: skip
    """(a) GRPO for `grpo_steps` steps and (b) SFT resumed, both started at once; (b) stops when
    (a) ends. Returns the arms' adapter dirs, wall times and the load."""
    if (arms / "arms.json").exists():
        return json.loads((arms / "arms.json").read_text())
    shutil.rmtree(arms, ignore_errors=True)
    arms.mkdir(parents=True)
    grpo = train_cmd(
        "configs/tiny/grpo_gain.yaml", "--model_name_or_path", paths["base"], "--init_adapter", start_ckpt,
        "--dataset_dir", paths["cot"], "--output_dir", arms / "grpo", "--seed", seed,
        "--max_steps", budget["grpo_steps"], *grpo_args,
    )  # fmt: skip
    sft = sft_cmd(paths, arms / "sft", seed, budget, "--save_steps", budget["sft_save_every"],
                  "--resume_from_checkpoint", start_ckpt)  # fmt: skip
    load_before = os.getloadavg()
    began = time.time()
    a, b = start(grpo, arms / "grpo.log"), start(sft, arms / "sft.log")
    while a.poll() is None:
        if b.poll() not in (None, 0):
            stop(a)
            raise RuntimeError(f"(b) SFT failed; see {arms / 'sft.log'}")
        time.sleep(1)
    minutes = (time.time() - began) / 60
    stop(b)
    if a.returncode != 0:
        raise RuntimeError(f"(a) GRPO exited {a.returncode}; see {arms / 'grpo.log'}")
    from train.components import newest_complete_checkpoint

    sft_ckpt = newest_complete_checkpoint(arms / "sft")
    if sft_ckpt is None:
        raise RuntimeError(f"(b) SFT saved no checkpoint in {minutes:.1f} min; see {arms / 'sft.log'}")
    result = {
        "grpo": str(arms / "grpo"),
        "sft": str(with_run_info(Path(sft_ckpt), arms / "sft")),
        "sft_steps": int(Path(sft_ckpt).name.split("-")[1]) - budget["sft_stop"],
        "minutes": minutes,
        "load_avg_1min": [load_before[0], os.getloadavg()[0]],
        "load_avg_15min": os.getloadavg()[2],
    }
    (arms / "arms.json").write_text(json.dumps(result, indent=1))
    return result


# 4. scores ---------------------------------------------------------------------------------------


def evaluate(
    model: Path, adapter: Path, data: Path, out: Path, seed: int, limit: int | None
) -> dict[str, bool]:
    """eval.run on the held-out split (resumes into `out`); {item id: choice_correct}."""
    from common.io import read_jsonl
    from eval.run import EvalConfig, parse_config
    from eval.run import run as eval_run

    argv = ["--model", str(model), "--adapter", str(adapter), "--data", str(data), "--out", str(out),
            "--seed", str(seed), *EVAL_ARGS, *(["--limit", str(limit)] if limit else [])]  # fmt: skip
    eval_run(parse_config(EvalConfig, argv))
    return {p["id"]: bool(p["choice_correct"]) for p in read_jsonl(out / "predictions.jsonl")}


def paired(a: dict[str, bool], b: dict[str, bool]) -> float:
    """Exact two-sided McNemar p-value of two systems on the same items."""
    from eval.stats import mcnemar_exact

    ids = sorted(a)
    return mcnemar_exact([a[i] for i in ids], [b[i] for i in ids])["p_value"]


def accuracy(flags: dict[str, bool]) -> float:
    return 100.0 * sum(flags.values()) / len(flags)


def curve(values: list[float], points: int = 10) -> list[float]:
    """`values` averaged in `points` consecutive windows (a reward curve short enough to print)."""
    if not values:
        return []
    size = max(1, len(values) // points)
    return [round(sum(w) / len(w), 3) for w in (values[i : i + size] for i in range(0, len(values), size))]


def grpo_log(run_dir: Path) -> dict:
    """Reward curve, zero-variance share and dynamic-sampling totals from (a)'s trainer_state.json."""
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "reward" in h]

    def series(key: str) -> list[float]:
        return [float(h[key]) for h in steps if key in h]

    accuracy_reward = series("rewards/accuracy_reward/mean")
    zero = series("zero_variance/sampled_share")
    info = json.loads((run_dir / "run_info.json").read_text())
    return {
        "reward_curve": curve(series("reward")),
        "accuracy_reward_curve": curve(accuracy_reward),
        "zero_variance_share_curve": curve(zero),
        "zero_variance_share_mean": round(sum(zero) / len(zero), 3) if zero else None,
        "trl_frac_reward_zero_std_mean": round(sum(series("frac_reward_zero_std")) / max(1, len(steps)), 3),
        "sampling_totals": {
            k[6:]: v
            for k, v in (info.get("final_metrics") or {}).items()
            if k.startswith("train/") and ("groups" in k or "rounds" in k)
        },  # fmt: skip
    }


def run_seed(work: Path, seed: int, budget: dict, grpo_args: list[str], tag: str) -> dict:
    root = work / f"seed{seed}"
    root.mkdir(parents=True, exist_ok=True)
    began = time.time()
    paths = prepare_seed(root, seed, budget)
    start_ckpt = sft_start(paths, root, seed, budget)
    setup_minutes = (time.time() - began) / 60
    arms = run_arms(paths, start_ckpt, root / "arms" / tag, seed, budget, grpo_args)
    began = time.time()
    limit = budget["eval_limit"]
    flags = {
        "start": evaluate(paths["base"], start_ckpt, paths["cot"], root / "eval-start", seed, limit),
        "grpo": evaluate(paths["base"], Path(arms["grpo"]), paths["cot"], root / "arms" / tag / "eval-grpo", seed, limit),
        "sft": evaluate(paths["base"], Path(arms["sft"]), paths["cot"], root / "arms" / tag / "eval-sft", seed, limit),
    }  # fmt: skip
    acc = {name: accuracy(f) for name, f in flags.items()}
    p_grpo = paired(flags["start"], flags["grpo"])
    return {
        "seed": seed,
        "items": len(flags["start"]),
        "start_acc": acc["start"],
        "grpo_acc": acc["grpo"],
        "sft_acc": acc["sft"],
        "p_grpo_vs_start": p_grpo,
        "p_sft_vs_start": paired(flags["start"], flags["sft"]),
        "p_grpo_vs_sft": paired(flags["sft"], flags["grpo"]),
        "grpo_improves_p01": acc["grpo"] > acc["start"] and p_grpo < 0.01,
        "grpo_steps": budget["grpo_steps"],
        "sft_steps": arms["sft_steps"],
        "arm_minutes": round(arms["minutes"], 2),
        "setup_minutes": round(setup_minutes, 2),
        "eval_minutes": round((time.time() - began) / 60, 2),
        "load_avg_1min": [round(x, 2) for x in arms["load_avg_1min"]],
        "load_avg_15min": round(arms["load_avg_15min"], 2),
        **grpo_log(Path(arms["grpo"])),
    }


def recipe_tag(grpo_args: list[str], budget: dict) -> str:
    text = json.dumps([grpo_args, budget["grpo_steps"], budget["sft_stop"]])
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.split("\n")[0], argv, add_arguments)
    budget = dict(QUICK if args.quick else FULL)
    budget["grpo_steps"] = args.grpo_steps or budget["grpo_steps"]
    budget["sft_stop"] = args.sft_stop or budget["sft_stop"]
    grpo_args = (QUICK_GRPO_ARGS if args.quick else []) + shlex.split(args.grpo_args)
    tag = args.tag or recipe_tag(grpo_args, budget)
    seeds = [int(s) for s in args.seeds.split(",")] if not args.quick else [args.seed]
    default = None if args.quick else REPO_ROOT / "runs" / "grpo-gain"
    results = []
    with workdir(args.workdir or default) as work:
        work = work.resolve()  # eval.run's resume compares paths as written
        for seed in seeds:
            results.append(run_seed(work, seed, budget, grpo_args, tag))
            r = results[-1]
            print(f"seed {seed}: start {r['start_acc']:.1f}% -> GRPO {r['grpo_acc']:.1f}% (p={r['p_grpo_vs_start']:.2g}), "
                  f"SFT {r['sft_acc']:.1f}% (p={r['p_sft_vs_start']:.2g}); GRPO vs SFT p={r['p_grpo_vs_sft']:.2g}; "
                  f"{r['arm_minutes']:.1f} min, load {r['load_avg_15min']}", flush=True)  # fmt: skip
    print_table(
        ["seed", "start", "GRPO", "p vs start", "SFT (same time)", "p vs start", "GRPO vs SFT p", "zero-var share", "min"],
        [[r["seed"], r["start_acc"], r["grpo_acc"], f"{r['p_grpo_vs_start']:.2g}", r["sft_acc"],
          f"{r['p_sft_vs_start']:.2g}", f"{r['p_grpo_vs_sft']:.2g}", r["zero_variance_share_mean"], r["arm_minutes"]]
         for r in results],
    )  # fmt: skip
    emit({
        "bench": "grpo_gain",
        "quick": args.quick,
        "recipe": grpo_args,
        "tag": tag,
        "seeds": results,
        "seeds_improved_p01": sum(r["grpo_improves_p01"] for r in results),
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
