"""Per-GPU memory of each LoRA SFT recipe (configs/*/cot_lora*.yaml), from DeepSpeed's own ZeRO estimators.

    python -m bench.memory_estimate

Parameter counts come from the real architectures, built on the `meta` device (no weights) from
each family's `published_config()` (e.g. Qwen2-Audio-7B-Instruct's config.json, the Qwen2.5-Omni-7B
thinker's published sizes). LoRA parameters are counted by PEFT itself on the meta model, with each
recipe's target (null = the family's LORA_TARGET, e.g. attention + the fused experts of Qwen3-Omni
through `target_parameters`); the projector is trainable when the recipe says so.

DeepSpeed's `estimate_zero{2,3}_model_states_mem_needs` (what the `..._all_cold` printers call)
assume every parameter trains (16-bit weights + grads, fp32 master + Adam moments). Under LoRA only
the trainable parameters have gradients and optimizer states, so we feed the estimator the
trainable count and add the frozen base weights ourselves: replicated 2 bytes/param under ZeRO-2,
partitioned 2/N bytes under ZeRO-3, on the CPU with ZeRO-3 param offload.
Activations are a rough extra column (gradient checkpointing, samples of `max_length` tokens):
one saved hidden state per layer, one layer recomputed, and the logits in bf16 + fp32 for the loss.
The SFT recipe applies the LM head at label positions only (train/label_only_loss.py), so its
logits cover the assistant turn (`LABEL_TOKENS` per sample assumed, a long chain of thought), not
every position; the full-logits figure (what a trainer calling the model's own forward holds) is
printed beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from common.config import load_yaml
from common.paths import REPO_ROOT

GIB = 1024**3
NUM_GPUS = 8
FULL_FT_REFERENCE = "configs/qwen2_audio_7b/cot_lora.yaml"  # the "for scale" line
LABEL_TOKENS = 512  # assistant-turn (label) tokens per sample: a long chain of thought plus the answer
CLIP_30S_POSITIONS = 1000  # a 30 s clip's 750 audio tokens + prompt + answer: one sample's positions


def recipes() -> list[str]:
    """Every full-size SFT recipe (`configs/<model>/cot_lora*.yaml`): a new family's row appears
    when its configs are added."""
    found = sorted(REPO_ROOT.glob("configs/*/cot_lora*.yaml"))
    return [str(p.relative_to(REPO_ROOT)) for p in found if p.parent.name != "tiny"]


@dataclass
class Counts:
    total: int
    lora: int
    projector: int
    largest_layer: int
    layers: int
    hidden: int
    vocab: int


def _meta_model(family_name: str):
    """The family's published architecture on the meta device (no memory, no download)."""
    import torch
    import transformers

    from models import get_family

    family = get_family(family_name)
    config = family.published_config()
    with torch.device("meta"):
        return getattr(transformers, family.MODEL_CLASS)(config), config.get_text_config()


def count_params(family: str, target: dict, r: int, projector_path: str) -> Counts:
    """Total, LoRA and projector parameter counts. LoRA is PEFT's own adapter built on the meta
    model: r * (in + out) per matched Linear, per expert on fused expert tensors."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, text_cfg = _meta_model(family)
    total = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    projector = sum(p.numel() for p in model.get_submodule(projector_path).parameters())
    with torch.device("meta"):
        peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, **target))
    lora = sum(p.numel() for n, p in peft_model.named_parameters() if ".lora_" in n)
    return Counts(
        total, lora, projector, largest, text_cfg.num_hidden_layers, text_cfg.hidden_size, text_cfg.vocab_size
    )


def _zero_stage(ds_json: str) -> tuple[int, bool]:
    ds = json.loads((REPO_ROOT / ds_json).read_text())
    zero = ds.get("zero_optimization", {})
    return int(zero.get("stage", 0)), "offload_param" in zero


def per_gpu_bytes(c: Counts, trainable: int, stage: int, offload: bool, n: int = NUM_GPUS) -> int:
    """Model states per GPU: DeepSpeed's estimate for the trainable params + the frozen bf16 base."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    frozen = c.total - trainable
    if stage == 2:
        _, gpu = estimate_zero2_model_states_mem_needs(trainable, n, 1, cpu_offload=False)
        return gpu + 2 * frozen
    _, gpu, _ = estimate_zero3_model_states_mem_needs(
        trainable, c.largest_layer, n, 1, cpu_offload=offload, cpu_offload_params=offload
    )
    return gpu + (0 if offload else 2 * frozen // n)


def activation_bytes(c: Counts, seq: int, batch: int, logit_positions: int) -> int:
    """Rough activations with gradient checkpointing (bf16); the logits of `logit_positions` per
    sample (all `seq` for a full-logits forward) dominate at long sequences."""
    saved = c.layers * batch * seq * c.hidden * 2
    one_layer = batch * seq * c.hidden * 34 * 2  # Korthikanti et al.'s ~34*s*h per layer, flash attn
    logits = batch * logit_positions * c.vocab * (2 + 4 + 4)  # bf16 logits, fp32 upcast, fp32 grad
    return saved + one_layer + logits


def estimate(recipe: str) -> dict:
    """One table row for a recipe YAML."""
    from models import family_of, get_family

    cfg = load_yaml(REPO_ROOT / recipe)
    # The recipe's family, else the one its checkpoint id names (each family's HUB_ID_PATTERN).
    family = get_family(cfg["model"].get("family") or family_of(cfg["model"]["model_name_or_path"]))
    lora = cfg.get("lora", {})
    r = int(lora.get("r", 16))
    target = (
        {"target_modules": lora["target_regex"]} if lora.get("target_regex") else dict(family.LORA_TARGET)
    )
    c = count_params(family.NAME, target, r, family.PROJECTOR)
    trainable = c.lora + (c.projector if lora.get("train_projector", True) else 0)
    stage, offload = _zero_stage(cfg["training"]["deepspeed"])
    states = per_gpu_bytes(c, trainable, stage, offload)
    seq = int(cfg["data"].get("max_length", 2048))
    batch = int(cfg["training"].get("per_device_train_batch_size", 1))
    acts = activation_bytes(c, seq, batch, min(LABEL_TOKENS, seq))
    full_acts = activation_bytes(c, seq, batch, seq)
    return {
        "recipe": recipe,
        "zero": stage,
        "offload": offload,
        "gpus": NUM_GPUS,
        "params_b": round(c.total / 1e9, 3),
        "trainable_m": round(trainable / 1e6, 1),
        "model_states_gib": round(states / GIB, 1),
        "activations_gib": round(acts / GIB, 1),
        "total_gib": round((states + acts) / GIB, 1),
        "full_logits_activations_gib": round(full_acts / GIB, 1),
        "full_logits_total_gib": round((states + full_acts) / GIB, 1),
        "label_tokens": min(LABEL_TOKENS, seq),
        "vocab": c.vocab,
        "seq": seq,
        "micro_batch": batch,
    }


def full_finetune_reference(total: int, n: int = NUM_GPUS) -> dict:
    """What the same model would need fully fine-tuned (DeepSpeed's numbers as they are)."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    _, gpu = estimate_zero2_model_states_mem_needs(total, n, 1, cpu_offload=False)
    return {"full_ft_zero2_gib": round(gpu / GIB, 1)}


def main() -> None:
    rows = [estimate(r) for r in recipes()]
    header = (
        "| recipe | ZeRO | params | trainable | model states/GPU | activations/GPU (rough) | total/GPU "
        "| with full logits |"
    )
    print(header)
    print("|" + "---|" * 8)
    for row in rows:
        zero = f"{row['zero']}{' + offload' if row['offload'] else ''}"
        print(
            f"| {row['recipe']} | {zero} | {row['params_b']} B | {row['trainable_m']} M | "
            f"{row['model_states_gib']} GiB | {row['activations_gib']} GiB (seq {row['seq']}, "
            f"mb {row['micro_batch']}) | {row['total_gib']} GiB | {row['full_logits_total_gib']} GiB |"
        )
    vocab = max(row["vocab"] for row in rows)  # the widest head of the recipes above
    sample_gb = CLIP_30S_POSITIONS * vocab * 4 / 1e9
    print(
        f"\nActivations count the logits at label positions only ({LABEL_TOKENS} per sample), as the SFT "
        "recipe computes them (train/label_only_loss.py); 'with full logits' is the same total for a "
        f"forward that builds logits at every position. One 30 s sample (~{CLIP_30S_POSITIONS:,} "
        f"positions) x {vocab:,} vocabulary x 4 bytes = {sample_gb:.2f} GB of fp32 logits that the "
        "label-only path never builds (it keeps only its label rows)."
    )
    reference = next(row for row in rows if row["recipe"] == FULL_FT_REFERENCE)
    ref = full_finetune_reference(int(reference["params_b"] * 1e9))
    print(
        f"\nFor scale: full fine-tuning of Qwen2-Audio-7B under ZeRO-2 on {NUM_GPUS} GPUs needs "
        f"{ref['full_ft_zero2_gib']} GiB/GPU of model states alone (DeepSpeed estimator)."
    )
    print(
        json.dumps(
            {
                "bench": "memory_estimate",
                "gpus": NUM_GPUS,
                "rows": rows,
                "full_logits_30s_sample_gb": round(sample_gb, 2),
                **ref,
            }
        )
    )


if __name__ == "__main__":
    main()
