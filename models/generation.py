"""Generation helpers for every family: the LM head at the last position only while generating.

Greedy or sampled decoding reads one row of logits per step, `outputs.logits[:, -1, :]`. Models
whose forward takes `logits_to_keep` get it from `generate` (Audio Flamingo 3 in transformers 5.23),
but Qwen2-Audio and the Qwen2.5-Omni / Qwen3-Omni thinkers project *every* prompt position through
the head in the prefill: B x T x V logits, where T includes the audio placeholders (750 for a 30 s
clip) and V is 151,680: on a GPU, a batch of 16 30 s clips is ~7 GiB of fp32 logits built and
thrown away at once. `last_position_logits(model)` keeps the head's input to the last position for
the duration of a `with` block, so every family's prefill builds B x 1 x V, and the tokens generated
are the same (tests/test_family_conformance.py checks it per family). With left-padded prompts, the
last position is every row's own last token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def last_position_logits(model: Any) -> Iterator[None]:
    """Within the block, the model's LM head projects only the last position of what it is given.

    Only for `generate`: a forward that needs logits at every position (a loss, log-probs of a whole
    sequence) would get one position. The head is found with `get_output_embeddings()`, which PEFT
    forwards to the base model (a `modules_to_save` head is its wrapper module, patched the same way).
    """
    head = model.get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(model).__name__} has no output embeddings (LM head)")
    original = head.forward
    patched_before = "forward" in vars(head)  # another wrapper's instance forward: put it back after

    def last_position_forward(hidden: Any, *args: Any, **kwargs: Any) -> Any:
        return original(hidden[:, -1:], *args, **kwargs)

    head.forward = last_position_forward
    try:
        yield
    finally:
        if patched_before:
            head.forward = original
        else:
            del head.forward  # the instance attribute: the class's forward shows through again
