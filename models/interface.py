"""What a family module provides: everything that differs between audio LLM families, by name.

A family is a module, not a class (like torchtune's `torchtune/models/<name>/`): its module-level
names must satisfy `AudioLMFamily`. `check_family(module)` verifies names, types and call signatures;
tests/test_family_conformance.py runs it, and the shared code (`models.inputs`, the recipes, eval)
uses nothing of a family but these members.
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any, Protocol, get_type_hints, runtime_checkable


@runtime_checkable
class AudioLMFamily(Protocol):
    NAME: str  # the module's name: `models.<NAME>`
    MODEL_CLASS: str  # transformers class that load_model builds
    MODEL_TYPES: tuple[str, ...]  # config.json `model_type` values this family loads
    HUB_ID_PATTERN: str  # regex recognising hub ids when no config.json is at hand
    SYSTEM_PROMPT: str  # the model's own default system prompt (data_prep renders it)
    SAMPLING_RATE: int  # Hz the feature extractor expects
    TURN_END_TOKEN: str  # closes an assistant turn: the last trained label, and a generation stop
    AUDIO_PLACEHOLDER: str  # the token the processor repeats once per audio frame
    # The special tokens of its chat format (padding, turn markers, the audio placeholder and the tokens
    # around it, ...): only models/ spells them (tests/test_layering.py reads them from here).
    CHAT_TOKENS: tuple[str, ...]
    AUDIO_FEATURE_KEYS: tuple[str, ...]  # processor outputs the forward takes for audio, one row per clip
    LORA_TARGET: dict  # peft.LoraConfig kwargs (target_modules [, exclude_modules, target_parameters])
    AUDIO_ENCODER: str  # dotted submodule path of the audio encoder (frozen by default)
    PROJECTOR: str  # dotted path of the audio -> LLM projector (trainable by config)
    LLM: str  # dotted path of the language model
    FROZEN: tuple[str, ...]  # regexes (re.search) of parameter names that never train, e.g. MoE routers
    TINY_TOKENIZERS: tuple[str, ...]  # make_tiny's tokenizer sources; the first is the default

    def load_model(
        self,
        name_or_path: str,
        *,
        dtype: Any,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
    ) -> Any: ...

    def load_processor(self, name_or_path: str, *, trust_remote_code: bool = False) -> Any: ...

    def max_audio_seconds(self, processor: Any) -> float: ...

    def num_audio_tokens(self, processor: Any, n_samples: int) -> int: ...

    def render(self, processor: Any, messages: list[dict], *, add_generation_prompt: bool) -> str: ...

    def encode(
        self, processor: Any, texts: list[str], audios: list[Any] | None, *, padding_side: str
    ) -> dict: ...

    def generation_config(self, tokenizer: Any) -> Any: ...

    # A randomly initialised tiny model of the real architecture and its processor, saved to `out_dir`
    # and loaded back; `tokenizer`: one of TINY_TOKENIZERS (None: the first).
    def make_tiny(
        self,
        out_dir: Any,
        *,
        seed: int = 0,
        tokenizer: str | None = None,
        window_seconds: int | None = None,
        head_dim: int | None = None,
    ) -> None: ...

    # Why a vLLM server cannot serve this checkpoint (empty when it can): the family's own limits and
    # the checkpoint's (e.g. an attention head size vLLM's CPU backend lacks). `cpu`: vLLM's CPU build.
    def vllm_problems(self, name_or_path: str, processor: Any, *, cpu: bool) -> list[str]: ...

    # The flagship checkpoint's config (sizes only, no weights): memory and throughput estimates
    # build the real architecture on the meta device from it, without a download.
    def published_config(self) -> Any: ...


def _members() -> tuple[dict[str, Any], dict[str, inspect.Signature]]:
    hints = get_type_hints(AudioLMFamily)
    functions = {
        name: inspect.signature(fn)
        for name, fn in vars(AudioLMFamily).items()
        if inspect.isfunction(fn) and not name.startswith("_")
    }
    return hints, functions


def _type_ok(value: Any, hint: Any) -> bool:
    origin = getattr(hint, "__origin__", None) or hint
    if not isinstance(value, origin):
        return False
    if origin is tuple:
        return all(isinstance(v, str) for v in value)
    return True


def check_family(module: ModuleType) -> list[str]:
    """Problems with a family module (empty when it conforms): missing or mistyped members, or
    functions whose parameters differ from the interface's."""
    problems = []
    hints, functions = _members()
    for name, hint in hints.items():
        if not hasattr(module, name):
            problems.append(f"{module.__name__}: missing {name}")
        elif not _type_ok(getattr(module, name), hint):
            problems.append(f"{module.__name__}.{name}: expected {hint}, got {getattr(module, name)!r}")
    for name, signature in functions.items():
        fn = getattr(module, name, None)
        if not callable(fn):
            problems.append(f"{module.__name__}: missing function {name}")
            continue
        want = [(p.name, p.kind) for p in list(signature.parameters.values())[1:]]  # drop `self`
        got = [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]
        if want != got:
            problems.append(f"{module.__name__}.{name}{inspect.signature(fn)}: expected parameters {want}")
    if getattr(module, "NAME", None) != module.__name__.rsplit(".", 1)[-1]:
        problems.append(f"{module.__name__}: NAME must equal the module name")
    tokens = getattr(module, "CHAT_TOKENS", ())
    for name in ("TURN_END_TOKEN", "AUDIO_PLACEHOLDER"):
        if getattr(module, name, None) not in tokens:
            problems.append(f"{module.__name__}.{name} is not one of its CHAT_TOKENS")
    return problems
