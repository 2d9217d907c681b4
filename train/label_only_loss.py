"""The LM head and the loss only where they are needed: at label positions (SFT) or the last k (GRPO).

In chain-of-thought SFT on audio most positions carry no label: the system prompt, the question and
the audio placeholders (25 per second: a 30 s clip alone is 750 positions) are all -100. The
models' own forwards still project every position through the 151,680-wide head and keep the
B x T x V logits for the backward pass; on the tiny CPU model that head was ~95% of a step, and on
a 7B GPU run the logits of one 30 s sample are ~600 MB in fp32. Here the backbone runs as usual,
then only the hidden states whose *shifted* label is not -100 go through the head:

    loss = sum of cross-entropy over label positions / (num_items_in_batch or the label count)

which is the same number the full-logits forward gives (a test pins it to 1e-6 relative, fp32).

How it hooks in: `install(model)` replaces the `forward` of the transformers model instance (under
PEFT: `model.get_base_model()`, the way trl's `add_fused_lm_head` does), so the PEFT, DDP and
DeepSpeed wrappers above it keep calling it unchanged. Every family is an
`XForConditionalGeneration` whose backbone is `model.base_model` (transformers' accessor for the
inner `.model`, which returns `last_hidden_state`) and whose head is `get_output_embeddings()`. The
head is *called*, never read: under ZeRO-3 calling the module gathers its partitioned weight.

The patched forward has three modes:
  - `labels=...`          -> `loss` only (no logits are built); `num_items_in_batch` is honoured
                             when the Trainer passes it (the model's `accepts_loss_kwargs` decides,
                             as for the model's own forward: see train/sft.py check_loss_scaling).
  - `logits_to_keep=k`    -> logits of the last k positions only (GRPO's log-prob forwards).
  - neither, or a generation call (a KV cache / use_cache) -> the model's own forward, unchanged.

With `install(model, silent_audio=...)` (the SFT recipe), a `labels=` forward on a batch without audio
(text-only rows) also runs the audio encoder and projector on a silent clip and adds 0 * their output
to the input embeddings, so that every rank of a ZeRO-3 run gathers the same weights
(models/silent_audio.py).
"""

from __future__ import annotations

import contextlib
import functools
import types
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import CausalLMOutputWithPast

from models.inputs import IGNORE_INDEX

if TYPE_CHECKING:
    from models.silent_audio import SilentAudioPass

_MARK = "_label_only_original_forward"


def transformers_model(model: Any) -> Any:
    """The transformers model under DDP/DeepSpeed and PEFT wrappers (the object whose forward is replaced)."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):  # DDP, DeepSpeedEngine
        model = model.module
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def install(model: Any, silent_audio: SilentAudioPass | None = None) -> Any:
    """Replace the forward of `model`'s transformers model with the label-only one; returns `model`.

    `silent_audio`: run the audio path on a silent clip in loss forwards of batches without audio
    (needed under ZeRO-3 when batches may be text-only). Idempotent; `uninstall` restores the model's
    own forward.
    """
    target = transformers_model(model)
    if getattr(target, _MARK, None) is not None:
        return model
    if not callable(getattr(target, "get_output_embeddings", None)) or target.get_output_embeddings() is None:
        raise TypeError(
            f"{type(target).__name__} has no output embeddings (LM head) to apply at label positions"
        )
    if getattr(target, "base_model", target) is target:
        raise TypeError(
            f"{type(target).__name__} exposes no inner backbone (`base_model`) to run without the head"
        )
    original = target.forward
    setattr(target, _MARK, original)
    forward = _make_forward(original, type(target).forward, silent_audio)
    target.forward = types.MethodType(forward, target)
    return model


def uninstall(model: Any) -> Any:
    """Restore the model's own forward (e.g. before computing logits for metrics)."""
    target = transformers_model(model)
    original = getattr(target, _MARK, None)
    if original is not None:
        del target.forward  # the instance attribute; the class's forward shows through again
        delattr(target, _MARK)
    return model


def is_installed(model: Any) -> bool:
    return getattr(transformers_model(model), _MARK, None) is not None


def _make_forward(original: Any, class_forward: Any, silent_audio: SilentAudioPass | None):
    # Keep the class's signature: `generate` validates its model kwargs against it.
    @functools.wraps(class_forward)
    def forward(
        self: Any,
        *args: Any,
        labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        logits_to_keep: int | None = None,
        **kwargs: Any,
    ) -> Any:
        # Generation passes a KV cache (and, to models whose forward takes it, logits_to_keep=1):
        # that is the model's own business, with its cache; only training/scoring calls come here.
        generating = kwargs.get("past_key_values") is not None or bool(kwargs.get("use_cache"))
        if labels is None and (not logits_to_keep or generating):
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            if logits_to_keep:  # generate only sends it when the class's forward takes it
                kwargs["logits_to_keep"] = logits_to_keep
            return original(*args, **kwargs)
        kwargs["use_cache"] = False  # training forwards: no KV cache
        if labels is None:
            hidden = backbone_hidden_states(self, *args, **kwargs)
            logits = self.get_output_embeddings()(hidden[:, -logits_to_keep:])
            return CausalLMOutputWithPast(logits=logits)
        # A batch without audio: the encoder and projector still run (on silence) where they would
        # for audio, so a ZeRO-3 rank gathers what the others gather; 0 * output keeps the loss.
        no_audio = silent_audio is not None and silent_audio.needed(kwargs)
        with silent_audio.after_input_embeddings(self) if no_audio else contextlib.nullcontext():
            hidden = backbone_hidden_states(self, *args, **kwargs)
        loss = label_only_cross_entropy(self, hidden, labels, num_items_in_batch)
        return CausalLMOutputWithPast(loss=loss)

    return forward


def backbone_hidden_states(model: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The last hidden state of the model's inner backbone (audio merged in, no head applied)."""
    outputs = model.base_model(*args, **kwargs)
    if getattr(outputs, "router_logits", None) is not None:
        # MoE backbones: the model's own forward adds router_aux_loss_coef * load-balancing loss.
        raise NotImplementedError(
            f"{type(model).__name__}: the label-only loss does not add the MoE router aux loss; "
            "call with output_router_logits=False or extend train/label_only_loss.py"
        )
    return outputs.last_hidden_state


def label_only_cross_entropy(
    model: Any, hidden: torch.Tensor, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None
) -> torch.Tensor:
    """Summed next-token cross-entropy over the positions whose shifted label is set, normalised.

    Divided by `num_items_in_batch` when the Trainer counted the labels over the whole
    (accumulated, all-rank) batch, else by this batch's label count: the model's own mean.
    The selected rows go through the head in one call: chunks of 64 or 256 rows measured no faster
    on CPU, and save no memory (log_softmax keeps its N x V output for the backward either way).
    """
    if hidden.shape[:2] != labels.shape:
        raise ValueError(
            f"hidden states {tuple(hidden.shape[:2])} and labels {tuple(labels.shape)} differ in shape: the "
            "backbone re-laid out the sequence (unexpanded audio placeholders?); the collator must expand them"
        )
    shift_labels = labels[:, 1:].to(hidden.device)
    mask = shift_labels != IGNORE_INDEX
    rows = hidden[:, :-1][mask]  # (N, hidden): only the positions that predict a label
    logits = model.get_output_embeddings()(rows).float()  # upcast, as transformers' ForCausalLMLoss
    total = F.cross_entropy(logits, shift_labels[mask], reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else mask.sum()
    count = torch.as_tensor(count, device=total.device, dtype=total.dtype)
    return total / count.clamp(min=1)
