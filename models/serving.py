"""Generation through an OpenAI-compatible server (a vLLM server we start, or a vLLM or SGLang server
the user runs), with each prompt's audio in its request. Used by `eval.run --backend vllm|openai`
and by GRPO's vLLM rollouts.

A request is the prepared sample's prompt conversation (`models.inputs.prompt_messages`) with each
audio block replaced by an `input_audio` part that holds the exact waveform the local path feeds the
processor (`models.inputs.prompt_audio`: the clip cut to the window, or its noise or silence) as a
32-bit float WAV, so no sample is rounded on the way. The server renders the checkpoint's own chat
template, the one `family.render` uses, and vLLM returns the prompt's token ids, so every reply can
be checked against the local encoding (`check_prompt_ids`: same ids, same number of audio tokens).
Answers are decoded from the returned token ids with our tokenizer, exactly as the local path
decodes them; a server that returns no ids (SGLang) gives its text as it is.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from common.openai_retry import with_retries
from models.inputs import prompt_messages


class ServingError(RuntimeError):
    """A request the server could not answer, or an answer that does not match our prompt."""


def wav_base64(wave: np.ndarray, sampling_rate: int) -> str:
    """A mono float32 WAV of `wave`, base64-encoded (float samples: nothing is quantised)."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(wave, dtype=np.float32), sampling_rate, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def request_messages(
    family: ModuleType, row: dict, waves: list[np.ndarray], *, audio_mode: str = "real"
) -> list[dict]:
    """OpenAI chat messages for a prepared row's prompt, with `waves` (its `prompt_audio`, one per
    audio block) inline as `input_audio` parts."""
    waves = iter(waves)
    messages = []
    for message in prompt_messages(row, audio_mode):
        content = message["content"]
        if isinstance(content, str):
            messages.append({"role": message["role"], "content": content})
            continue
        parts = []
        for block in content:
            if block.get("type") == "audio":
                data = wav_base64(next(waves), family.SAMPLING_RATE)
                parts.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
            else:
                parts.append({"type": "text", "text": block.get("text") or ""})
        messages.append({"role": message["role"], "content": parts})
    return messages


@dataclass
class Sampling:
    """Decoding settings of one request (greedy by default)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    logprobs: bool = False  # the sampled tokens' log-probs (GRPO's importance-sampling correction)
    logit_bias: dict[int, float] | None = None  # e.g. -100 on a placeholder that must not be sampled


@dataclass
class Completion:
    """One server answer; `token_ids`, `prompt_token_ids` and `logprobs` are None when the server
    does not return them."""

    text: str
    token_ids: list[int] | None
    prompt_token_ids: list[int] | None
    n_prompt_tokens: int
    n_completion_tokens: int
    finish_reason: str
    logprobs: list[float] | None = None


class ServerClient:
    """Chat completions against one OpenAI-compatible server, with bounded retries.

    `before_retry` runs before each retry (the owner of a local server raises there when the
    process died, with its log, instead of retrying a dead socket).
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str = "EMPTY",
        timeout_s: float = 600.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        before_retry: Any = None,
    ):
        from openai import OpenAI

        self.base_url = base_url
        self.max_retries, self.backoff_s, self.before_retry = max_retries, backoff_s, before_retry
        # Its own retries off: ours count the attempts and know about a dead local server.
        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
        self.model = self.check_model(model)

    def _retrying(self, call: Any, label: str) -> Any:
        return with_retries(
            call,
            label=label,
            max_retries=self.max_retries,
            backoff=self.backoff_s,
            before_retry=self.before_retry,
        )

    def check_model(self, name: str | None) -> str:
        """The served model called `name` (or the only one served when None); also proves the
        server answers, after the bounded retries."""
        listed = self._retrying(lambda: list(self.client.models.list()), f"{self.base_url}/models")
        served = [m.id for m in listed]
        if name is None and len(served) == 1:
            return served[0]
        if name is not None and name in served:
            return name
        raise ServingError(f"{self.base_url} serves {served}: name the one to use (--served_model)")

    def complete(self, messages: list[dict], sampling: Sampling, *, label: str) -> Completion:
        """One chat completion; retried on 429, timeouts, refused connections and 5xx."""
        extra: dict[str, Any] = {"return_token_ids": True, "skip_special_tokens": True}
        if sampling.stop_token_ids:
            extra["stop_token_ids"] = list(sampling.stop_token_ids)
        kwargs: dict[str, Any] = dict(
            model=self.model, messages=messages, max_tokens=sampling.max_tokens,
            temperature=sampling.temperature, top_p=sampling.top_p, n=1, extra_body=extra,
        )  # fmt: skip
        if sampling.seed is not None:
            kwargs["seed"] = sampling.seed
        if sampling.logprobs:
            kwargs.update(logprobs=True, top_logprobs=0)
        if sampling.logit_bias:
            kwargs["logit_bias"] = {str(k): v for k, v in sampling.logit_bias.items()}
        reply = self._retrying(lambda: self.client.chat.completions.create(**kwargs), label)
        return _completion(reply)


def _completion(reply: Any) -> Completion:
    choice = reply.choices[0]
    extra = choice.model_extra or {}
    reply_extra = reply.model_extra or {}
    logprobs = None
    if choice.logprobs is not None and choice.logprobs.content is not None:
        logprobs = [entry.logprob for entry in choice.logprobs.content]
    prompt_ids = reply_extra.get("prompt_token_ids")
    return Completion(
        text=choice.message.content or "",
        token_ids=extra.get("token_ids"),
        prompt_token_ids=prompt_ids,
        n_prompt_tokens=reply.usage.prompt_tokens if reply.usage else len(prompt_ids or []),
        n_completion_tokens=reply.usage.completion_tokens
        if reply.usage
        else len(extra.get("token_ids") or []),
        finish_reason=choice.finish_reason or "",
        logprobs=logprobs,
    )


def prompt_token_ids(
    family: ModuleType, processor: Any, row: dict, waves: list[np.ndarray], *, audio_mode: str = "real"
) -> list[int]:
    """The token ids the family's processor gives this prompt, without running its feature
    extractor: the rendered text tokenized, each audio placeholder repeated `num_audio_tokens` times
    (the expansion rule `models.inputs.check_expansion` holds every family to)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    text = family.render(processor, prompt_messages(row, audio_mode), add_generation_prompt=True)
    audio_id = tokenizer.convert_tokens_to_ids(family.AUDIO_PLACEHOLDER)
    counts = iter(family.num_audio_tokens(processor, len(w)) for w in waves)
    ids: list[int] = []
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        ids.extend([token] * next(counts) if token == audio_id else [token])
    return ids


def split_at_stop(token_ids: list[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    """(the tokens before the first stop token, whether there was one)."""
    stop = next((i for i, t in enumerate(token_ids) if t in stop_ids), None)
    return (token_ids, False) if stop is None else (token_ids[:stop], True)


def check_prompt_ids(completion: Completion, expected: list[int], *, item: str) -> None:
    """The server must have seen our prompt: the same token ids, audio tokens included."""
    got = completion.prompt_token_ids
    if got is not None and got != expected:
        raise ServingError(
            f"item {item!r}: the server's prompt has {len(got)} tokens, ours {len(expected)}: it rendered "
            "another chat template or expanded the audio differently, so its answer is not to our prompt"
        )


def vllm_refusal(family: ModuleType, name_or_path: str, processor: Any, *, cpu: bool) -> str | None:
    """Why vLLM cannot serve this checkpoint, as an error message naming the family; None if it can."""
    problems = family.vllm_problems(name_or_path, processor, cpu=cpu)
    if not problems:
        return None
    return f"family {family.NAME!r} ({name_or_path}) cannot be served by vLLM here: " + "; ".join(problems)
