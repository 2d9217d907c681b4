"""The audio encoder and projector run on a silent clip when a batch has no audio (text-only rows).

Why: DeepSpeed ZeRO-3 partitions every parameter across the ranks and gathers a module's weights
collectively when the module runs, so every rank must run the same modules in the same order. A rank
whose micro-batch is text-only skips the encoder and the projector: its next all-gather (the LLM's)
meets the other ranks' all-gathers of encoder weights. Measured on 2 CPU ranks (gloo, the tiny
Qwen2-Audio, one rank's micro-batch text-only): gloo refuses the mismatched sizes ("Received data
size doesn't match expected size", 24576 vs 64 bytes) and aborts that rank at the first step, the
other fails on its lost connection. NCCL does not compare sizes, so on GPUs the ranks wait in
mismatched collectives until the collective timeout: the hang users reported. ZeRO-2 fails too,
in the backward: the text-only rank has no projector gradient to all-reduce, so it reached the
optimizer's grad-norm all-reduce while the other rank all-reduced a projector gradient of 64
values (TORCH_DISTRIBUTED_DEBUG=DETAIL names both collectives).

The fix is the standard one, placed where both passes of a step stay identical: on a batch without
audio, run the encoder and projector on a silent clip where a batch with audio runs them (right
after the input embeddings: every family's forward embeds the tokens first, then encodes the
audio), and add 0 * their output to the input embeddings. Every rank then gathers the same weights
in the same order, forward and backward, and reduces a gradient (zero) for every trainable
parameter; the loss and the update are unchanged (x + 0.0 == x). Adding 0 * output to the *loss*
instead (the usual advice) fixed the forward but not the backward, measured: with the projector
trainable, an audio batch's LLM input requires a gradient (the projected audio is scattered into
it), a text-only batch's does not, so the audio rank's backward gathered layer 0's
`v_proj.base_layer` (for the input gradient) and the text-only rank's skipped it, and gloo aborted
again ("2080 vs 512" bytes).

Generic over the families, through the interface only: the silent clip's features come from the
family's own processor (`encode` of one audio block: real shapes, the keys AUDIO_FEATURE_KEYS), and
the audio path runs through the model's `get_audio_features(**features)` where it has one
(Qwen2.5-Omni, Qwen3-Omni, Audio Flamingo 3: the method their forward calls), else AUDIO_ENCODER
then PROJECTOR (Qwen2-Audio's forward calls the two modules itself).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

SILENT_SECONDS = 1.0  # long enough for every family's encoder (Qwen2-Audio pads to its window anyway)


@dataclass
class SilentAudioPass:
    """The family's features of a silent clip, and how to run them through a model's audio path."""

    family: ModuleType
    features: dict[str, Any]  # AUDIO_FEATURE_KEYS -> tensors of one clip, on the CPU

    @classmethod
    def for_processor(cls, family: ModuleType, processor: Any) -> SilentAudioPass:
        """Features of `SILENT_SECONDS` of silence, made by the family's processor as for a real clip."""
        messages = [{"role": "user", "content": [{"type": "audio", "path": ""}]}]
        text = family.render(processor, messages, add_generation_prompt=False)
        silence = np.zeros(int(SILENT_SECONDS * family.SAMPLING_RATE), dtype=np.float32)
        encoded = family.encode(processor, [text], [silence], padding_side="right")
        missing = [k for k in family.AUDIO_FEATURE_KEYS if k not in encoded]
        if missing:
            raise ValueError(f"{family.NAME}: the processor gave no {missing} for a silent clip")
        return cls(family, {k: encoded[k] for k in family.AUDIO_FEATURE_KEYS})

    def needed(self, inputs: Mapping[str, Any]) -> bool:
        """True when a forward's inputs carry no audio features (every row of the batch is text-only)."""
        return all(inputs.get(k) is None for k in self.family.AUDIO_FEATURE_KEYS)

    @contextmanager
    def after_input_embeddings(self, model: Any) -> Iterator[None]:
        """Inside the block, the model's first input-embedding call is followed by the silent pass,
        and its output (times zero) is added to the embeddings. Raises after the block if the model
        never embedded its input ids (the pass would have had no place in the forward)."""
        ran: list[bool] = []

        def follow(module: Any, args: Any, output: Any) -> Any:
            if ran:  # the first call only: some forwards embed again, e.g. to find placeholders
                return None
            ran.append(True)
            return output + (self.output_sum(model, output.device) * 0.0).to(output.dtype)

        handle = model.get_input_embeddings().register_forward_hook(follow)
        try:
            yield
        finally:
            handle.remove()
        if not ran:
            raise RuntimeError(
                f"{type(model).__name__} never called its input embeddings: the silent audio pass had "
                "no place in the forward (see models/silent_audio.py)"
            )

    def output_sum(self, model: Any, device: Any) -> Any:
        """Sum of what the model's audio path (encoder, projector) gives for the silent clip."""
        features = {k: v.to(device) for k, v in self.features.items()}
        get_audio_features = getattr(model, "get_audio_features", None)
        if callable(get_audio_features):
            return _float_sum(get_audio_features(**features))
        encoder = model.get_submodule(self.family.AUDIO_ENCODER)
        hidden = encoder(features[self.family.AUDIO_FEATURE_KEYS[0]]).last_hidden_state
        if not self.family.PROJECTOR.startswith(f"{self.family.AUDIO_ENCODER}."):  # not run by the encoder
            hidden = model.get_submodule(self.family.PROJECTOR)(hidden)
        return hidden.float().sum()


def _float_sum(output: Any) -> Any:
    """Sum of every floating-point tensor in a model output (a tensor, a tuple or a ModelOutput)."""
    import torch

    if isinstance(output, torch.Tensor):
        parts = [output]
    else:
        values = output.to_tuple() if hasattr(output, "to_tuple") else tuple(output)
        parts = [t for t in values if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not parts:
        raise TypeError(f"the audio path returned no floating-point tensor ({type(output).__name__})")
    return sum(t.float().sum() for t in parts)
