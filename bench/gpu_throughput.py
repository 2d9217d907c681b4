"""GPU throughput of the 7B LoRA recipe: training tokens/s, MFU, peak memory, batched generation.

    python -m bench.gpu_throughput            # full size, on a CUDA GPU (under 8 minutes)
    python -m bench.gpu_throughput --quick    # tiny config on CPU: the test that keeps it from rotting

Builds Qwen2-Audio-7B-Instruct from `../shared/models/qwen2_audio_7b_instruct/config.json` with
random bf16 weights, initialised directly on the device (`torch.device` context, no download, no
checkpoint: throughput does not depend on the weights), and applies the recipe of
configs/qwen2_audio_7b/cot_lora.yaml through the recipe's own `add_lora` (r 64 on the LLM linears,
projector trainable, gradient checkpointing, bf16 autocast, micro-batch 2). sdpa attention, and
flash-attention 2 as well when `flash_attn` imports. Synthetic samples, as the collator lays them
out: a prompt, the audio placeholder run of a 10 s or 30 s clip (25 tokens per second; the encoder
always sees the full 30 s window) and a chain-of-thought-length target (`TARGET_TOKENS` labels).

Per clip length and attention implementation, `STEPS` timed optimizer steps (after `WARMUP`) of
  ours         the label-only LM head and loss (train/label_only_loss.py), as the SFT recipe trains
  full_logits  the model's own forward, which builds B x T x V logits (the peers' way)
report training tokens/s (non-padding input tokens, audio placeholders included), peak GPU memory
and model FLOPs utilisation against the GPU's dense bf16 peak (`PEAK_TFLOPS`; null when the device
is not in the table). Model FLOPs per step, the work the label-only step has to do:
  LLM body   4 * N_body * tokens  (frozen weights: forward 2N, activation gradients 2N; LoRA's own
             gradients are negligible) + 12 * layers * seq * hidden per token (attention scores,
             forward + backward, PaLM's convention)
  LM head    4 * vocab * hidden per *label* token
  encoder    forward only (frozen): 2 * N_encoder * 1500 + 4 * layers * 1500^2 * d_model per clip
Gradient-checkpointing recomputation is not counted (model FLOPs, not hardware FLOPs), so MFU is
conservative. Then batched generation (the recipe's eval_at_end batch size, greedy, a fixed number
of new tokens) in new tokens/s, as `eval.run` decodes with an adapter.

Only torch, transformers and peft are needed on this path: the JSON's `forbidden_imports` lists
any of trl, deepspeed, datasets or soundfile that this bench's own code pulled in (those that
torch, transformers or peft import by themselves when installed, e.g. transformers importing
soundfile, are listed apart in `imported_by_libraries`), so it runs on a bare GPU image.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench._common import emit, parse_args, print_table
from common.paths import REPO_ROOT, shared_dir
from models.inputs import IGNORE_INDEX

RECIPE = "configs/qwen2_audio_7b/cot_lora.yaml"
CONFIG_JSON = "models/qwen2_audio_7b_instruct/config.json"  # under ../shared
PROMPT_TOKENS = 96  # system prompt + question + lettered options, around the audio run
TARGET_TOKENS = 320  # a chain of thought of ~250 words plus the <answer> block
ENCODER_POSITIONS = 1500  # the encoder's 30 s window after its stride-2 conv, whatever the clip
# Dense bf16 tensor-core peaks (TFLOPS, no sparsity), matched by substring of the device name.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,  # an unlabelled H100 is taken as the PCIe part: MFU errs high, never low
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
}
FULL = {"clips": (10, 30), "steps": 6, "warmup": 2, "gen_batch": None, "new_tokens": 256}
QUICK = {"clips": (10, 30), "steps": 1, "warmup": 0, "gen_batch": 2, "new_tokens": 4}
FORBIDDEN = ("trl", "deepspeed", "datasets", "soundfile")


@dataclass
class Shapes:
    """What the FLOPs formula needs about the model."""

    body_params: int
    layers: int
    hidden: int
    vocab: int
    encoder_params: int
    encoder_layers: int
    encoder_width: int


def peak_tflops(device_name: str) -> float | None:
    """The device's dense bf16 peak from the table (longest matching key), None when unknown."""
    hits = [k for k in PEAK_TFLOPS if k.lower() in device_name.lower()]
    return PEAK_TFLOPS[max(hits, key=len)] if hits else None


def model_config(quick: bool) -> Any:
    """The 7B config from ../shared (required at full size), or a 2-layer, 64-wide one (--quick)."""
    from transformers import Qwen2AudioConfig

    path = shared_dir() / CONFIG_JSON
    if not quick:
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the full-size bench builds the 7B model from it")
        return Qwen2AudioConfig(**json.loads(path.read_text(encoding="utf-8")))
    from models._qwen import TINY_LLM
    from models._whisper import TINY_ENCODER

    return Qwen2AudioConfig(  # a 1k vocabulary: the smoke run checks the plumbing, not the head
        text_config={"model_type": "qwen2", **TINY_LLM, "vocab_size": 1024},
        audio_config={"model_type": "qwen2_audio_encoder", **TINY_ENCODER, "num_mel_bins": 128},
        audio_token_index=1000,
    )


def build_model(config: Any, attn: str, device: Any, dtype: Any) -> Any:
    """Random weights, initialised on `device` directly (an 8B model in seconds, not from disk)."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2AudioForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation=attn)
    model.accepts_loss_kwargs = False  # as models.qwen2_audio.load_model sets it
    return model


def add_recipe_lora(model: Any) -> tuple[Any, Any]:
    """The recipe's LoRA (train.components.add_lora on cot_lora.yaml's settings); returns (model, cfg)."""
    from models import get_family
    from train import components
    from train.config import load_config

    cfg = load_config(["--config", str(REPO_ROOT / RECIPE), "--report_to", "none", "--deepspeed", "null"])
    model = components.add_lora(model, get_family("qwen2_audio"), cfg.lora)
    if cfg.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, cfg


def shapes(model: Any) -> Shapes:
    from train.label_only_loss import transformers_model

    base = transformers_model(model)
    text, audio = base.config.text_config, base.config.audio_config
    llm = base.model.language_model
    embed = llm.get_input_embeddings().weight.numel()
    return Shapes(
        body_params=sum(p.numel() for n, p in llm.named_parameters() if "lora_" not in n) - embed,
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        vocab=text.vocab_size,
        encoder_params=sum(p.numel() for p in base.model.audio_tower.parameters()),
        encoder_layers=audio.encoder_layers,
        encoder_width=audio.d_model,
    )


def step_flops(s: Shapes, batch: int, seq: int, labels: int) -> float:
    """Model FLOPs of one training step (see the module docstring)."""
    tokens = batch * seq
    body = 4 * s.body_params * tokens + 12 * s.layers * seq * s.hidden * tokens
    head = 4 * s.vocab * s.hidden * labels
    encoder = batch * (
        2 * s.encoder_params * ENCODER_POSITIONS
        + 4 * s.encoder_layers * ENCODER_POSITIONS**2 * s.encoder_width
    )
    return float(body + head + encoder)


def synthetic_batch(config: Any, batch: int, clip_seconds: int, device: Any, with_target: bool) -> dict:
    """input_ids / attention_mask / input_features / feature_attention_mask (/ labels), no padding."""
    import torch

    audio_id = config.audio_token_index
    frames = clip_seconds * 100  # 10 ms hop
    n_audio = ((frames - 1) // 2 + 1 - 2) // 2 + 1  # the processor's expansion: 25 per second
    n_target = TARGET_TOKENS if with_target else 0
    gen = torch.Generator().manual_seed(clip_seconds)
    text = torch.randint(
        0, audio_id, (batch, PROMPT_TOKENS + n_target), generator=gen
    )  # ids below the specials
    half = PROMPT_TOKENS // 2
    audio = torch.full((batch, n_audio), audio_id)
    ids = torch.cat([text[:, :half], audio, text[:, half:]], dim=1)
    out = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "input_features": torch.randn(batch, 128, 3000, generator=gen),
        "feature_attention_mask": (torch.arange(3000) < frames).long().expand(batch, -1).contiguous(),
    }
    if with_target:
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[:, -n_target:] = ids[:, -n_target:]
        out["labels"] = labels
    return {k: v.to(device) for k, v in out.items()}


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_training(model: Any, batch: dict, steps: int, warmup: int, device: Any, dtype: Any) -> dict:
    """Median seconds per optimizer step (forward, backward, AdamW) and the peak GPU memory."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    # lr 0: every step does the full work but leaves the weights as they were, so both systems
    # see the same model and their losses must agree (a check that the timed step is the same step).
    opt = torch.optim.AdamW(params, lr=0.0)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model.train()
    times, loss = [], None
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    del opt
    return {
        "step_s": statistics.median(times),
        "loss": float(loss.detach()),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


def time_generation(model: Any, config: Any, batch_size: int, new_tokens: int, device: Any) -> dict:
    """Greedy batched generation of exactly `new_tokens` per prompt (10 s clips); new tokens/s."""
    import torch

    prompts = synthetic_batch(config, batch_size, 10, device, with_target=False)
    model.eval()
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(**prompts, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
        _sync(device)
        start = time.perf_counter()
        out = model.generate(**prompts, **kwargs)
        _sync(device)
        seconds = time.perf_counter() - start
    generated = (out.shape[1] - prompts["input_ids"].shape[1]) * batch_size
    return {
        "batch": batch_size,
        "new_tokens": new_tokens,
        "seconds": seconds,
        "tokens_per_s": generated / seconds,
    }


def attention_implementations(device: Any) -> list[str]:
    import torch

    impls = ["sdpa"]
    if torch.device(device).type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        impls.append("flash_attention_2")
    return impls


def measure(attn: str, config: Any, size: dict, device: Any, dtype: Any) -> tuple[list, dict]:
    """Training rows for both systems and both clip lengths, and the generation figures, for one
    attention implementation."""
    from train import label_only_loss

    model, cfg = add_recipe_lora(build_model(config, attn, device, dtype))
    s = shapes(model)
    micro = cfg.training.per_device_train_batch_size
    rows = []
    for clip in size["clips"]:
        batch = synthetic_batch(config, micro, clip, device, with_target=True)
        seq, labels = batch["input_ids"].shape[1], int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        for system in ("ours", "full_logits"):
            (label_only_loss.install if system == "ours" else label_only_loss.uninstall)(model)
            t = time_training(model, batch, size["steps"], size["warmup"], device, dtype)
            rows.append({"attn": attn, "clip_s": clip, "system": system, "seq": seq, "micro_batch": micro,
                         "step_s": round(t["step_s"], 4), "tokens_per_s": round(micro * seq / t["step_s"], 1),
                         "model_tflops_per_step": round(step_flops(s, micro, seq, labels) / 1e12, 2),
                         "peak_mem_gib": t["peak_mem_gib"], "loss": round(t["loss"], 4)})  # fmt: skip
        del batch
    label_only_loss.uninstall(model)
    gen_batch = size["gen_batch"] or cfg.eval_at_end.batch_size
    generation = {"attn": attn, **time_generation(model, config, gen_batch, size["new_tokens"], device)}
    del model
    return rows, generation


def _imported(names: tuple[str, ...]) -> set[str]:
    return {m for m in names if m in sys.modules}


def main(argv: list[str] | None = None) -> dict:
    """Run the bench; prints the tables and the JSON line, returns the figures."""
    args = parse_args(__doc__.splitlines()[0], argv)
    size = QUICK if args.quick else FULL
    import peft  # noqa: F401  (the three libraries first: what they import themselves is theirs)
    import torch
    from transformers import Qwen2AudioForConditionalGeneration  # noqa: F401

    by_libraries = _imported(FORBIDDEN)

    if not args.quick and not torch.cuda.is_available():
        raise SystemExit("bench.gpu_throughput needs a CUDA GPU (use --quick for the CPU smoke run)")
    device = "cuda" if torch.cuda.is_available() and not args.quick else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = peak_tflops(name) if device == "cuda" else None
    config = model_config(args.quick)
    started = time.perf_counter()
    rows, generation = [], []
    for attn in attention_implementations(device):
        r, g = measure(attn, config, size, device, dtype)
        rows += r
        generation.append(g)
    for row in rows:
        achieved = row["model_tflops_per_step"] / row["step_s"]
        row["mfu"] = round(achieved / peak, 4) if peak else None
    print(f"Qwen2-Audio-7B{' (tiny config)' if args.quick else ''}, random weights, {device} ({name}), "
          f"{dtype}, LoRA per {RECIPE}, {TARGET_TOKENS} target tokens per sample")  # fmt: skip
    print_table(
        ["attn", "clip s", "system", "seq", "ms/step", "tokens/s", "MFU", "peak GiB", "loss"],
        [(r["attn"], r["clip_s"], r["system"], r["seq"], round(1000 * r["step_s"], 1), r["tokens_per_s"],
          r["mfu"], r["peak_mem_gib"], r["loss"]) for r in rows],
    )  # fmt: skip
    print_table(
        ["attn", "batch", "new tokens", "seconds", "new tokens/s"],
        [(g["attn"], g["batch"], g["new_tokens"], round(g["seconds"], 2), round(g["tokens_per_s"], 1))
         for g in generation],
    )  # fmt: skip
    result = {
        "bench": "gpu_throughput",
        "device": name,
        "peak_bf16_tflops": peak,
        "dtype": str(dtype).removeprefix("torch."),
        "train": rows,
        "generation": generation,
        "seconds": round(time.perf_counter() - started, 1),
        "forbidden_imports": sorted(_imported(FORBIDDEN) - by_libraries),
        "imported_by_libraries": sorted(by_libraries),
        "quick": args.quick,
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
