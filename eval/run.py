"""Generate and score answers on a prepared split:

    python -m eval.run --model <path or hub id> [--adapter <dir>] --data <prepared dataset dir> \
        --split test --out runs/eval/<name> [--batch_size 16 --max_new_tokens 256 --audio none ...]

Prompts are the prepared samples' `messages[:-1]` (the template the training data used), encoded
by `models.inputs.encode_prompts` with left padding; decoding is batched and greedy. Each
prediction is appended to `<out>/predictions.jsonl` as soon as it exists, so rerunning the same
command resumes and skips finished ids. With `--option_orders K` every item is also asked with its
options rotated 1..K-1 places (`predictions_orders.jsonl`, resumable the same way). At the end
`metrics.json` and `run_info.json` are written atomically. `evaluate()` is the in-process entry
point train/ calls after training.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from common.config import ConfigError, parse_config
from common.config import help_field as _f  # short: EvalConfig calls it for every field
from common.io import (
    JsonlAppender,
    atomic_write_json,
    iter_chunks,
    read_complete_jsonl,
    read_jsonl,
    sha256_file,
)
from common.logging_utils import setup_logging
from common.provenance import git_sha, library_versions
from common.vllm_server import VLLMError
from eval import backends
from eval.extract import extract_choice
from eval.metrics import METRICS, available_metrics, compute_metrics, summary_lines
from eval.mmar import answer_prediction_of, mmar_correct
from eval.score import item_from_row

log = logging.getLogger(__name__)

AudioMode = Literal["real", "noise", "silence", "none"]
# Settings that change predictions: a resumed run must match them, or it would mix two runs.
RESUME_KEYS = (
    "model",
    "adapter",
    "split",
    "audio_mode",
    "max_new_tokens",
    "dtype",
    "seed",
    "data_manifest_sha256",
    "backend",
)


@dataclass
class EvalConfig:
    """eval.run settings; a training config can embed this dataclass as a section."""

    model: str = _f("runs/models/tiny-qwen2-audio", "Base model: hub id or local path.")
    adapter: str | None = _f(None, "PEFT adapter dir (a train.py output_dir); null = base model.")
    data: str = _f("data/prepared/latest", "Prepared dataset dir (holds manifest.json and <split>.jsonl).")
    split: str = _f("test", "Split to evaluate.")
    out: str = _f("runs/eval/default", "Run dir for predictions.jsonl, metrics.json, run_info.json.")
    batch_size: int = _f(16, "Prompts per generate() call.")
    max_new_tokens: int = _f(256, "Generation budget per answer (CoT needs hundreds).")
    seed: int = _f(0, "Seed (noise ablation and any sampling).")
    audio: AudioMode = _f(
        "real", "real | noise (same length and RMS) | silence | none (no audio in the prompt)."
    )
    limit: int | None = _f(None, "Evaluate only the first N items of the split.")
    allow_overlap: bool = _f(False, "Score a split whose groups overlap the adapter's training groups.")
    allow_base_mismatch: bool = _f(False, "Skip the adapter's base-model name check (shapes still checked).")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = _f("float32", "Weights dtype.")
    device: str = _f("auto", "auto (cuda if available) | cpu | cuda | cuda:N.")
    family: str | None = _f(None, "Model family under train/families (null = from config.json).")
    attn_implementation: str | None = _f(None, "eager | sdpa | flash_attention_2 (null = default).")
    trust_remote_code: bool = _f(False, "Run model code from the checkpoint; off unless you trust it.")
    option_orders: int = _f(
        1,
        "Also evaluate each item under K cyclic rotations of its options (1 = displayed order only); "
        "metrics.json's option_orders gives mean accuracy, spread and the share right under every order.",
    )
    backend: Literal["hf", "vllm", "openai"] = _f(
        "hf",
        "hf = generate in this process; vllm = a vLLM server started here from .venv-vllm (`make vllm`); "
        "openai = the OpenAI-compatible server at --base_url (vLLM, SGLang).",
    )
    base_url: str | None = _f(None, "--backend openai: the server's API root, e.g. http://host:8000/v1.")
    served_model: str | None = _f(
        None, "--backend openai: the model name on the server (null = its only one)."
    )
    api_key_env: str = _f("OPENAI_API_KEY", "--backend openai: environment variable holding the key, if any.")
    concurrency: int = _f(16, "vllm/openai: requests in flight.")
    request_retries: int = _f(
        3, "vllm/openai: retries of a failed request (429, timeout, 5xx) before it is reported."
    )
    request_timeout_s: float = _f(600.0, "vllm/openai: seconds one request may take.")
    vllm_max_model_len: int = _f(4096, "vllm: the server's context length (prompt, audio tokens and answer).")
    vllm_startup_timeout_s: float = _f(900.0, "vllm: seconds to wait for the server to become healthy.")
    vllm_args: str = _f(
        "",
        "vllm: extra server flags, as --vllm_args='--tensor-parallel-size 2' ('--enforce-eager': no compile).",
    )
    wandb: bool = _f(False, "Log metrics (eval/acc/<layer>) to W&B.")
    wandb_project: str = _f("audio-reasoning-tuner", "W&B project.")


class EvalError(RuntimeError):
    """A refused evaluation (leakage, model/adapter mismatch, inconsistent resume, bad data dir)."""


def _length_key(row: dict, audio_mode: str) -> tuple[float, int]:
    # Audio tokens dominate prompt length (25 per second for Qwen2-Audio), then the text.
    dur = (row.get("audio_duration") or 0.0) if audio_mode != "none" else 0.0
    text = sum(
        len(b.get("text") or "")
        for m in row["messages"][:-1]
        for b in m["content"]
        if b.get("type") == "text"
    )
    return (round(float(dur), 1), text)


def _eos_ids(model: Any) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def greedy_generation_config(model: Any, processor: Any, max_new_tokens: int) -> Any:
    """Greedy decoding from the checkpoint's generation config (its eos ids), sampling knobs off."""
    gen = copy.deepcopy(model.generation_config)
    gen.do_sample, gen.num_beams, gen.max_new_tokens = False, 1, max_new_tokens
    gen.temperature, gen.top_p, gen.top_k = None, None, None
    if gen.pad_token_id is None:
        tok = getattr(processor, "tokenizer", processor)
        gen.pad_token_id = (
            tok.pad_token_id if tok.pad_token_id is not None else next(iter(_eos_ids(model)), 0)
        )
    return gen


def batches(rows: list[dict], batch_size: int, audio_mode: str = "real") -> list[list[int]]:
    """Indices of `rows` in the batches `evaluate` generates: prompts sorted by length (less
    padding), `batch_size` at a time."""
    order = sorted(range(len(rows)), key=lambda i: _length_key(rows[i], audio_mode))
    return list(iter_chunks(order, max(1, batch_size)))


def generate_batch(model: Any, processor: Any, family: Any, rows: list[dict], cfg: Any) -> list[dict]:
    """Greedy answers for one batch: [{"output", "n_prompt_tokens", "n_new_tokens", "truncated"}]."""
    import torch

    from models.generation import last_position_logits
    from models.inputs import encode_prompts

    # The noise of `--audio noise` is seeded per (seed, row id), so batching and resuming keep it.
    inputs = encode_prompts(
        family, processor, rows, audio_mode=getattr(cfg, "audio", "real"), seed=getattr(cfg, "seed", 0)
    )
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
    gen = greedy_generation_config(model, processor, cfg.max_new_tokens)
    with torch.inference_mode(), last_position_logits(model):
        out = model.generate(**inputs, generation_config=gen)
    prompt_len = inputs["input_ids"].shape[1]
    new = out[:, prompt_len:].tolist()
    eos, pad = _eos_ids(model), gen.pad_token_id
    tok = getattr(processor, "tokenizer", processor)
    results = []
    for i, ids in enumerate(new):
        # Tokens up to and including the first eos; what follows is padding of shorter rows.
        stop = next((j for j, t in enumerate(ids) if t in eos), None)
        kept = ids if stop is None else ids[:stop]
        results.append(
            {
                "output": tok.decode(kept, skip_special_tokens=True),
                "n_prompt_tokens": int(inputs["attention_mask"][i].sum()),
                "n_new_tokens": len(kept) + (stop is not None),
                "truncated": stop is None and len([t for t in ids if t != pad]) >= cfg.max_new_tokens,
            }
        )
    return results


def chose_answer(choices: list[str], index: int | None, answer: str) -> bool:
    """choice_acc: the chosen option has the answer's text (with a repeated text, either letter)."""
    return index is not None and choices[index].strip() == answer.strip()


def prediction_row(sample: dict, gen: dict, audio_mode: str) -> dict:
    """One predictions.jsonl line: item metadata, raw output, extraction and both correctness flags.

    `answer_prediction` is the answer as written (the `<answer>` span, else the whole output) and
    `mmar_correct` is MMAR's rule on it; `choice_correct` uses the option read from the output.
    """
    choices = sample["choices"]
    ext = extract_choice(gen["output"], choices)
    answer_prediction = answer_prediction_of(gen["output"])
    return {
        "id": sample["id"],
        "group": sample.get("group"),
        "source": sample.get("source"),
        "modality": sample.get("modality"),
        "category": sample.get("category"),
        "sub_category": sample.get("sub_category"),
        "tags": list(sample.get("tags") or []),
        "template": sample.get("template"),
        "question": sample["question"],
        "choices": choices,
        "answer": sample["answer"],
        "answer_index": sample["answer_index"],
        "answer_letter": sample.get("answer_letter"),
        "output": gen["output"],
        "pred_index": ext.index,
        "pred_letter": ext.letter,
        "method": ext.method,
        "answer_prediction": answer_prediction,
        "choice_correct": chose_answer(choices, ext.index, sample["answer"]),
        "mmar_correct": mmar_correct(sample["answer"], answer_prediction, choices),
        "audio_mode": audio_mode,
        "n_prompt_tokens": gen["n_prompt_tokens"],
        "n_new_tokens": gen["n_new_tokens"],
        "truncated": gen["truncated"],
        "source_record": sample.get("source_record"),
    }


def evaluate(
    model: Any, processor: Any, family: Any, rows: list[dict], cfg: Any,
    *, on_result: Callable[[dict], None] | None = None, progress: bool = True,
) -> list[dict]:  # fmt: skip
    """Generate, extract and score `rows`; returns prediction rows in the order of `rows`.

    `family` is a family module or its name. `cfg` needs `batch_size` and `max_new_tokens`; `audio`
    (default "real") and `seed` (default 0) are optional, so train/'s eval config works as is.
    Batches are formed from length-sorted prompts (less padding); results are keyed by id.
    `on_result` sees every row as soon as it exists (eval.run appends it to predictions.jsonl).
    """
    import torch
    from tqdm.auto import tqdm

    from models import as_family

    fam = as_family(family)
    audio_mode = getattr(cfg, "audio", "real")
    was_training = model.training
    model.eval()
    torch.manual_seed(getattr(cfg, "seed", 0))
    results: dict[str, dict] = {}
    bar = tqdm(total=len(rows), desc="eval", unit="item", disable=not progress)
    try:
        for idx in batches(rows, cfg.batch_size, audio_mode):
            batch = [rows[i] for i in idx]
            for sample, gen in zip(batch, generate_batch(model, processor, fam, batch, cfg)):
                pred = prediction_row(sample, gen, audio_mode)
                results[sample["id"]] = pred
                if on_result is not None:
                    on_result(pred)
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return [results[r["id"]] for r in rows]


def metrics_from_predictions(preds: list[dict], audio_mode: str = "real") -> dict:
    """metrics.json body for prediction rows, with the ablation statement when audio was not real."""
    metrics = compute_metrics([item_from_row(p) for p in preds])
    metrics["audio_mode"] = audio_mode
    metrics["truncated"] = sum(bool(p.get("truncated")) for p in preds)
    if audio_mode != "real":
        key = next(name for name in METRICS if name in metrics)
        o = metrics[key]["overall"]
        above = o["p_vs_random"] < 0.05
        metrics["ablation"] = {
            "audio": audio_mode,
            "above_random": above,
            "note": (
                f"ablation run (audio={audio_mode}): {key} {o['accuracy']:.1f}% vs {o['random_accuracy']:.1f}% "
                f"random, p={o['p_vs_random']:.3g}. "
                + (
                    "Above chance without the audio: the model answers partly from language priors."
                    if above
                    else "Not above chance without the audio."
                )
                + " Compare with the real-audio run (eval.compare) to see how much the audio adds."
            ),
        }
    return metrics


def _options_block(choices: list[str]) -> str:
    # The lettered list data_prep's templates render: "(A) first\n(B) second ...".
    return "\n".join(f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(choices))


def rotate_sample(sample: dict, rotation: int) -> dict:
    """The sample with its options cyclically rotated by `rotation` places (prompt text included).

    Rotation r shows option r first: the answer keeps its text and moves r letters up. Only the
    options block of the user turn changes, so question, audio and instruction stay identical.
    """
    choices = sample["choices"]
    r = rotation % len(choices)
    shown = choices[r:] + choices[:r]
    old, new = _options_block(choices), _options_block(shown)
    out = copy.deepcopy(sample)
    found = False
    for message in out["messages"][:-1]:
        for block in message["content"]:
            if block.get("type") == "text" and old in (block.get("text") or ""):
                block["text"] = block["text"].replace(old, new, 1)
                found = True
    if not found:
        raise EvalError(f"item {sample['id']!r}: the prompt has no '(A) ...' options block to rotate")
    index = (sample["answer_index"] - r) % len(choices)
    out.update(choices=shown, answer_index=index, answer_letter=chr(ord("A") + index), rotation=r)
    out["permutation"] = [(sample.get("permutation") or list(range(len(choices))))[(i + r) % len(choices)]
                          for i in range(len(choices))]  # fmt: skip
    return out


def option_order_stats(orders: list[list[dict]]) -> dict:
    """metrics.json `option_orders`: per order accuracy, its mean and spread, and the share of
    items right under every order, for each score (top level: the first, choice_acc)."""
    scored = [[item_from_row(p) for p in preds] for preds in orders]
    by_metric = {}
    for name in available_metrics(x for order in scored for x in order):
        flags = [[METRICS[name].flag(x) for x in order] for order in scored]
        acc = [100.0 * sum(f) / len(f) for f in flags]
        by_metric[name] = {
            "per_order_accuracy": [round(a, 4) for a in acc],
            "mean_accuracy": round(statistics.fmean(acc), 4),
            "std_accuracy": round(statistics.pstdev(acc), 4),
            "min_accuracy": round(min(acc), 4),
            "max_accuracy": round(max(acc), 4),
            "all_orders_correct": round(100.0 * sum(all(col) for col in zip(*flags)) / len(flags[0]), 4),
        }
    primary = next(iter(by_metric))
    return {"orders": len(orders), "n_items": len(orders[0]), "metric": primary, **by_metric[primary],
            "by_metric": by_metric}  # fmt: skip


def resolve_data(data: str | Path) -> Path:
    """The prepared dataset dir itself (resolving `latest`), or a clear error."""
    path = Path(data)
    if not (path / "manifest.json").exists() and (path / "latest" / "manifest.json").exists():
        path = path / "latest"  # the data_prep out_dir was given
    if not (path / "manifest.json").exists():
        raise EvalError(
            f"{data}: not a prepared dataset dir (no manifest.json); run python -m data_prep.prepare"
        )
    return path.resolve()


def read_split_rows(data_dir: Path, manifest: dict, split: str, limit: int | None) -> list[dict]:
    """The split's samples in file order (first `limit` of them); unknown split is an error."""
    path = data_dir / f"{split}.jsonl"
    if split not in manifest.get("splits", {}) or not path.exists():
        raise EvalError(f"{data_dir}: no split {split!r}; available: {sorted(manifest.get('splits', {}))}")
    rows = read_jsonl(path)
    if not rows:
        raise EvalError(f"{path}: split {split!r} is empty")
    return rows[:limit] if limit is not None else rows


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def train_groups(adapter_run_info: dict) -> set[str] | None:
    """Training-split groups recorded in an adapter's run_info.json (None when not recorded)."""
    candidates = [
        adapter_run_info.get("train_groups"),
        (adapter_run_info.get("data") or {}).get("train_groups"),
        (adapter_run_info.get("dataset") or {}).get("train_groups"),
        ((adapter_run_info.get("splits") or {}).get("train") or {}).get("groups"),
    ]
    found = next((c for c in candidates if c is not None), None)
    return None if found is None else {str(g) for g in found}


def check_leakage(adapter_run_info: dict, rows: list[dict], split: str, allow_overlap: bool) -> dict:
    """Refuse to score items whose groups (source videos) the adapter was trained on."""
    groups = train_groups(adapter_run_info)
    if groups is None:
        log.warning("adapter run_info.json records no training groups: leakage cannot be checked")
        return {"checked": False}
    overlap = sorted({str(r.get("group")) for r in rows} & groups)
    if overlap and not allow_overlap:
        raise EvalError(
            f"split {split!r} shares {len(overlap)} group(s) with the adapter's training split "
            f"(e.g. {overlap[:5]}): scores would be inflated by leakage. Evaluate a held-out split, "
            "or pass --allow_overlap to score anyway (the overlap is recorded in run_info.json)."
        )
    if overlap:
        log.warning("scoring despite %d overlapping group(s) (--allow_overlap)", len(overlap))
    return {"checked": True, "overlap_groups": len(overlap), "allowed": bool(overlap)}


def _same_base(name_a: str, name_b: str) -> bool:
    """Same checkpoint: equal resolved local paths, or equal last path component (hub id vs local copy)."""
    a, b = Path(name_a), Path(name_b)
    if a.exists() and b.exists():
        return a.resolve() == b.resolve()
    return a.name.lower().rstrip("/") == b.name.lower().rstrip("/")


def check_adapter(adapter: Path, model: str, allow_base_mismatch: bool) -> dict:
    """adapter_config.json present, safetensors weights (no pickle), trained on this base model."""
    cfg_path = adapter / "adapter_config.json"
    if not cfg_path.exists():
        raise EvalError(f"{adapter}: not a PEFT adapter dir (no adapter_config.json)")
    if not (adapter / "adapter_model.safetensors").exists():
        raise EvalError(f"{adapter}: no adapter_model.safetensors (pickled .bin adapters are not loaded)")
    adapter_cfg = _read_json(cfg_path)
    base = adapter_cfg.get("base_model_name_or_path")
    if base and not _same_base(base, model) and not allow_base_mismatch:
        raise EvalError(
            f"adapter {adapter} was trained on base model {base!r}, but --model is {model!r}; pass the "
            "adapter's base model (or --allow_base_mismatch if it is the same checkpoint under another name)"
        )
    return adapter_cfg


def load_model_and_adapter(cfg: EvalConfig, family: Any) -> Any:
    """Base model through the family module, then the PEFT adapter; a shape mismatch is an EvalError."""
    import torch

    model = family.load_model(
        cfg.model,
        dtype=cfg.dtype,
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
    )
    if cfg.adapter:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, cfg.adapter, is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as e:
            raise EvalError(
                f"adapter {cfg.adapter} does not fit base model {cfg.model}: {str(e)[:600]}"
            ) from e
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


def build_run_info(
    cfg: EvalConfig, data_dir: Path, manifest: dict, family_name: str, adapter_info: dict
) -> dict:
    """run_info.json: what was evaluated and how (the RESUME_KEYS must match on a rerun)."""
    return {
        "model": cfg.model,
        "adapter": str(Path(cfg.adapter).resolve()) if cfg.adapter else None,
        "family": family_name,
        "data_dir": str(data_dir),
        "data_manifest_hash": manifest.get("hash"),
        "data_manifest_sha256": sha256_file(data_dir / "manifest.json"),
        "template": manifest.get("template"),
        "split": cfg.split,
        "audio_mode": cfg.audio,
        "limit": cfg.limit,
        "max_new_tokens": cfg.max_new_tokens,
        "dtype": cfg.dtype,
        "seed": cfg.seed,
        "backend": cfg.backend,
        "base_url": cfg.base_url,
        "decoding": {
            "do_sample": False,
            "num_beams": 1,
            "max_new_tokens": cfg.max_new_tokens,
            "batch_size": cfg.batch_size,
            "padding_side": "left",
        },  # fmt: skip
        "git_sha": git_sha(),
        "versions": library_versions(),
        "config": asdict(cfg),
        **adapter_info,
    }


def check_resume(out: Path, run_info: dict) -> None:
    """A rerun into an existing run dir must use the same prediction-changing settings."""
    old = _read_json(out / "run_info.json")
    diff = [k for k in RESUME_KEYS if k in old and old[k] != run_info[k]]
    if diff:
        details = ", ".join(f"{k}: {old[k]!r} -> {run_info[k]!r}" for k in diff)
        raise EvalError(f"{out} holds a run with other settings ({details}); use a new --out or delete it")


def load_done(preds_path: Path, rows: list[dict]) -> dict[str, dict]:
    """Finished predictions of an interrupted run (torn last line dropped), keyed by id."""
    wanted = {r["id"] for r in rows}
    done: dict[str, dict] = {}
    for p in read_complete_jsonl(preds_path):
        if p.get("id") not in wanted:
            raise EvalError(
                f"{preds_path} holds id {p.get('id')!r}, which is not among the items of this run "
                "(another split or a smaller --limit); use a new --out"
            )
        done.setdefault(p["id"], p)  # a duplicate can only repeat the same greedy answer
    return done


def rotation_todo(path: Path, rows: list[dict], k: int) -> dict[int, list[dict]]:
    """Rotated samples still to generate, per rotation 1..k-1 (finished ones are in `path`)."""
    done = {(p.get("id"), p.get("rotation")) for p in read_complete_jsonl(path)} if k > 1 else set()
    todo = {r: [rotate_sample(row, r) for row in rows if (row["id"], r) not in done] for r in range(1, k)}
    return {r: batch for r, batch in todo.items() if batch}


def _log_wandb(cfg: EvalConfig, metrics: dict, run_info: dict) -> None:
    import wandb

    from common.tracking import wandb_mode

    mode = wandb_mode()
    run = wandb.init(project=cfg.wandb_project, name=Path(cfg.out).name, job_type="eval",
                     config=run_info, dir=cfg.out, mode=mode)  # fmt: skip
    run.log(wandb_metrics(metrics))
    run.finish()


def wandb_metrics(metrics: dict, prefix: str = "eval") -> dict[str, float]:
    """Flat W&B metrics: `eval/acc/overall`, `eval/acc/<layer>` (choice_acc), `eval/mmar_acc/...`,
    answers per extraction method, option-order robustness and MMAR-Rubrics scores when present."""
    out: dict[str, float] = {}
    for key, spec in METRICS.items():
        if key not in metrics:
            continue
        out[f"{prefix}/{spec.wandb}/overall"] = metrics[key]["overall"]["accuracy"]
        for layer, c in metrics[key].get("category", {}).items():
            out[f"{prefix}/{spec.wandb}/{layer}"] = c["accuracy"]
    out[f"{prefix}/instruction_following"] = metrics["instruction_following"]["rate"]
    for method, n in metrics.get("extraction_methods", {}).items():
        out[f"{prefix}/extraction/{method}"] = n
    orders = metrics.get("option_orders")
    if orders:
        for key in ("mean_accuracy", "std_accuracy", "all_orders_correct"):
            out[f"{prefix}/option_orders/{key}"] = orders[key]
    rubrics = metrics.get("rubrics")
    if rubrics:
        out[f"{prefix}/rubrics/overall"] = rubrics["overall"]["score"]
        for layer, c in rubrics.get("category", {}).items():
            out[f"{prefix}/rubrics/{layer}"] = c["score"]
    return out


def prepare(cfg: EvalConfig) -> tuple[Path, dict, list[dict], str, dict]:
    """Checks that need no model: data dir, split, adapter files, base model, leakage."""
    from models import family_of

    data_dir = resolve_data(cfg.data)
    manifest = _read_json(data_dir / "manifest.json")
    rows = read_split_rows(data_dir, manifest, cfg.split, cfg.limit)
    family_name = cfg.family or family_of(cfg.model)
    if manifest.get("family") and manifest["family"] != family_name:
        log.warning(
            "dataset was prepared for family %s, evaluating a %s model", manifest["family"], family_name
        )
    adapter_info: dict = {"adapter_base_model": None, "leakage": {"checked": False}}
    if cfg.adapter:
        adapter = Path(cfg.adapter)
        adapter_info["adapter_base_model"] = check_adapter(adapter, cfg.model, cfg.allow_base_mismatch).get(
            "base_model_name_or_path"
        )
        adapter_run = _read_json(adapter / "run_info.json")
        adapter_info["leakage"] = check_leakage(adapter_run, rows, cfg.split, cfg.allow_overlap)
        trained_template = adapter_run.get("template") or (adapter_run.get("data") or {}).get("template")
        if trained_template and trained_template != manifest.get("template"):
            log.warning(
                "adapter trained on template %s, evaluating with %s",
                trained_template,
                manifest.get("template"),
            )
    return data_dir, manifest, rows, family_name, adapter_info


@contextlib.contextmanager
def answer_source(cfg: EvalConfig, family: Any, processor: Any, out: Path) -> Iterator[Callable]:
    """`generate(rows, on_result)` for the configured backend: each prediction row goes to
    `on_result` as soon as it exists. The model (hf) or the server (vllm) lives as long as the block."""
    if cfg.backend == "hf":
        model = load_model_and_adapter(cfg, family)
        yield lambda rows, on_result: evaluate(model, processor, family, rows, cfg, on_result=on_result)
        return
    with backends.remote_client(cfg, family, processor, out) as client:

        def generate(rows: list[dict], on_result: Callable[[dict], None]) -> None:
            backends.generate_remote(client, family, processor, rows, cfg,
                                     on_answer=lambda row, gen: on_result(prediction_row(row, gen, cfg.audio)))  # fmt: skip

        yield generate


def run(cfg: EvalConfig) -> dict:
    """The whole eval.run: checks, resume, generation, metrics.json and run_info.json; returns metrics."""
    from models import get_family

    backends.check_backend_settings(cfg)
    data_dir, manifest, rows, family_name, adapter_info = prepare(cfg)
    out = Path(cfg.out)
    run_info = build_run_info(cfg, data_dir, manifest, family_name, adapter_info)
    check_resume(out, run_info)
    preds_path = out / "predictions.jsonl"
    done = load_done(preds_path, rows)
    todo = [r for r in rows if r["id"] not in done]
    started = datetime.now(UTC).isoformat(timespec="seconds")
    atomic_write_json(out / "run_info.json", {**run_info, "status": "running", "started_at": started})
    log.info(
        "%d items in %s/%s, %d already done, %d to generate",
        len(rows),
        data_dir.name,
        cfg.split,
        len(done),
        len(todo),
    )
    orders_path = out / "predictions_orders.jsonl"
    rotated_todo = rotation_todo(orders_path, rows, cfg.option_orders)
    if todo or rotated_todo:
        family = get_family(family_name)
        processor = family.load_processor(cfg.model, trust_remote_code=cfg.trust_remote_code)
        with answer_source(cfg, family, processor, out) as generate:
            with JsonlAppender(preds_path) as sink:
                generate(todo, sink.write)
            for rotation, batch in rotated_todo.items():  # rotation 0 is predictions.jsonl itself
                with JsonlAppender(orders_path) as sink:
                    generate(batch, lambda p, r=rotation: sink.write({**p, "rotation": r}))
    preds = {p["id"]: p for p in read_complete_jsonl(preds_path)}
    ordered = [preds[r["id"]] for r in rows]
    metrics = metrics_from_predictions(ordered, cfg.audio)
    if cfg.option_orders > 1:
        rotated = {(p["id"], p["rotation"]): p for p in read_complete_jsonl(orders_path)}
        orders = [ordered] + [[rotated[(r["id"], k)] for r in rows] for k in range(1, cfg.option_orders)]
        metrics["option_orders"] = option_order_stats(orders)
    metrics.update(split=cfg.split, model=cfg.model, adapter=run_info["adapter"])
    atomic_write_json(out / "metrics.json", metrics)
    finished = datetime.now(UTC).isoformat(timespec="seconds")
    atomic_write_json(
        out / "run_info.json",
        {
            **run_info,
            "status": "complete",
            "started_at": started,
            "finished_at": finished,
            "n_items": len(rows),
        },
    )
    if cfg.wandb:
        _log_wandb(cfg, metrics, run_info)
    return metrics


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse_config(EvalConfig, argv)
        metrics = run(cfg)
    except (EvalError, ConfigError, backends.BackendError, VLLMError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in summary_lines(metrics):
        print(line)
    if "ablation" in metrics:
        print(metrics["ablation"]["note"])
    print(f"wrote {Path(cfg.out) / 'predictions.jsonl'}, metrics.json, run_info.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
