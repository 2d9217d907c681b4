"""Adapters folded into their base model: a plain checkpoint folder that any loader (ours, vLLM)
reads without PEFT.

`merge_adapter` builds one from a saved adapter (`scripts.merge_adapter`, `eval.run --backend
vllm --adapter`); `save_merged_weights` writes the weights of a PEFT model that is still training
(GRPO's vLLM rollouts reload them after each sync) without touching its weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from models import family_of, get_family

log = logging.getLogger(__name__)


def merge_adapter(
    base: str, adapter: str, out: str | Path, *, dtype: str = "auto", family: str | None = None
) -> Path:
    """Load base + adapter, fold the LoRA deltas into the weights, save model and processor to `out`.

    Fully trained modules saved with the adapter (the projector, the audio encoder when it was
    trained, `modules_to_save`) replace the base ones.
    """
    from peft import PeftModel

    fam = get_family(family or family_of(base))
    model = fam.load_model(base, dtype=dtype)
    model = PeftModel.from_pretrained(model, adapter)
    merged = model.merge_and_unload()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    # The adapter dir carries the processor the run trained with; fall back to the base's.
    has_processor = (Path(adapter) / "preprocessor_config.json").exists() or (
        Path(adapter) / "processor_config.json"
    ).exists()
    fam.load_processor(adapter if has_processor else base).save_pretrained(out_dir)
    log.info("merged %s + %s -> %s", base, adapter, out_dir)
    return out_dir


def merged_state_dict(peft_model: Any) -> dict[str, Any]:
    """The base model's state dict, under its own parameter names, with the active LoRA adapter
    folded in and `modules_to_save` copies in place of the originals; computed out of place.

    Out of place because merging in place and unmerging after (what trl does before a vLLM sync)
    leaves W + dW - dW, which is not W in floating point: every sync would nudge the frozen weights.
    """
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    adapter = peft_model.active_adapter
    mine = f".modules_to_save.{adapter}."
    state = {}
    for key, value in base.state_dict().items():
        # Other adapters' copies are skipped too (trl keeps the starting adapter as "ref" for the KL).
        if ".lora_" in key or ".original_module." in key or (".modules_to_save." in key and mine not in key):
            continue
        state[key.replace(mine, ".").replace(".base_layer.", ".")] = value
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
            continue
        if module.use_dora.get(adapter):
            raise ValueError(
                f"{name}: DoRA adapters are not folded out of place; use plain LoRA with vLLM rollouts"
            )
        key = f"{name}.weight"
        state[key] = (state[key] + module.get_delta_weight(adapter)).to(state[key].dtype)
    return state


def save_merged_weights(peft_model: Any, out_dir: str | Path) -> Path:
    """Write `merged_state_dict(peft_model)` as a checkpoint (safetensors under the checkpoint's
    names, config.json) to `out_dir`; the training model is not changed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # save_pretrained maps the in-memory names to the checkpoint's (transformers 5 renames some).
    peft_model.get_base_model().save_pretrained(
        out, state_dict=merged_state_dict(peft_model), safe_serialization=True
    )
    return out
