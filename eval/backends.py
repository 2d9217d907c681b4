"""Where `eval.run`'s answers come from when they do not come from `generate` in this process.

    --backend hf       the model in this process, batched `generate` (the default and the reference)
    --backend vllm     a vLLM server eval.run starts on the checkpoint and stops at the end, from the
                       vLLM venv (`make vllm`); an adapter is first merged into a temporary checkpoint
    --backend openai   an OpenAI-compatible server you already run (--base_url: vLLM or SGLang on a
                       GPU node, serving the same checkpoint as --model)

The remote backends send every prompt with its audio (`models.serving`: the waveforms the hf backend
would feed the processor), greedy, `--concurrency` requests in flight, and check each answer's
prompt token ids against our own encoding when the server returns them (vLLM does). Answers are
decoded from the returned token ids with our tokenizer, as the hf backend decodes them. A request
that keeps failing is retried (`--request_retries`) and then reported by id; the items that finished
are already in predictions.jsonl, so rerunning the command resumes. A local server that dies ends
the run at once with the tail of its log.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from types import ModuleType
from typing import Any

from common.openai_retry import RetriesExhausted
from common.vllm_server import VLLMError, VLLMServer, is_cpu_build, vllm_python
from models.serving import (
    Sampling,
    ServerClient,
    ServingError,
    check_prompt_ids,
    prompt_token_ids,
    request_messages,
    split_at_stop,
    vllm_refusal,
)

log = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm", "openai")
SERVED_NAME = "eval-model"


class BackendError(RuntimeError):
    """A remote backend that cannot be used or whose requests failed; names the items at fault."""


def check_backend_settings(cfg: Any) -> None:
    """Settings that contradict each other fail before any model or server starts."""
    if cfg.backend not in BACKENDS:
        raise BackendError(f"--backend {cfg.backend!r}: use one of {', '.join(BACKENDS)}")
    if cfg.backend == "openai" and not cfg.base_url:
        raise BackendError(
            "--backend openai needs --base_url (the server's OpenAI API, e.g. http://host:8000/v1)"
        )
    if cfg.backend != "openai" and cfg.base_url:
        raise BackendError(f"--base_url is for --backend openai, not --backend {cfg.backend}")
    if cfg.backend == "openai" and cfg.adapter:
        raise BackendError(
            "--backend openai scores what the server serves: merge the adapter (python -m "
            "scripts.merge_adapter) and serve the merged checkpoint, or use --backend vllm --adapter"
        )
    if cfg.concurrency < 1:
        raise BackendError(f"--concurrency must be >= 1, got {cfg.concurrency}")


@contextlib.contextmanager
def served_checkpoint(cfg: Any, out: Path) -> Iterator[str]:
    """The checkpoint the vLLM server loads: --model itself, or --model with --adapter merged into
    a temporary folder under `out` (deleted afterwards: a 7B model is ~16 GB in bf16)."""
    if not cfg.adapter:
        yield cfg.model
        return
    from models.merge import merge_adapter

    folder = Path(tempfile.mkdtemp(prefix=".merged-", dir=out))
    try:
        log.info("merging %s into %s for vLLM (%s)", cfg.adapter, cfg.model, folder)
        yield str(merge_adapter(cfg.model, cfg.adapter, folder, dtype=cfg.dtype, family=cfg.family))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def remote_client(cfg: Any, family: ModuleType, processor: Any, out: Path) -> Iterator[ServerClient]:
    """A client of the server the backend names: one started here (vllm), or --base_url (openai)."""
    import os

    if cfg.backend == "openai":
        api_key = os.environ.get(cfg.api_key_env) or "EMPTY"
        try:
            client = ServerClient(cfg.base_url, model=cfg.served_model, api_key=api_key,
                                  timeout_s=cfg.request_timeout_s, max_retries=cfg.request_retries)  # fmt: skip
        except RetriesExhausted as e:
            raise BackendError(f"--base_url {cfg.base_url} did not answer: {e}") from e
        except ServingError as e:
            raise BackendError(str(e)) from e
        yield client
        return
    refusal = vllm_refusal(family, cfg.model, processor, cpu=is_cpu_build(vllm_python()))
    if refusal:
        raise BackendError(f"{refusal} (--backend vllm)")
    with served_checkpoint(cfg, out) as checkpoint:
        server = VLLMServer(
            checkpoint, log_path=out / "vllm-server.log", dtype=cfg.dtype, max_model_len=cfg.vllm_max_model_len,
            served_model_name=SERVED_NAME, seed=cfg.seed, startup_timeout_s=cfg.vllm_startup_timeout_s,
            extra_args=shlex.split(cfg.vllm_args),
        )  # fmt: skip
        with server:
            yield ServerClient(server.base_url, model=SERVED_NAME, timeout_s=cfg.request_timeout_s,
                               max_retries=cfg.request_retries, before_retry=server.check_alive)  # fmt: skip


def stop_token_ids(model: str, family: ModuleType, processor: Any) -> set[int]:
    """The ids generation stops at: the checkpoint's generation_config.json, as the hf backend's
    `model.generation_config`, else the family's default."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(model).eos_token_id
    except OSError:  # no generation_config.json (or a hub id not in the cache)
        eos = family.generation_config(getattr(processor, "tokenizer", processor)).eos_token_id
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def answer(
    client: ServerClient, family: ModuleType, processor: Any, row: dict, cfg: Any, stops: set[int]
) -> dict:
    """One item through the server: the same fields as the hf backend's `generate_batch` rows."""
    from models.inputs import prompt_audio

    audio_mode = getattr(cfg, "audio", "real")
    waves = prompt_audio(family, processor, row, audio_mode=audio_mode, seed=cfg.seed)
    messages = request_messages(family, row, waves, audio_mode=audio_mode)
    sampling = Sampling(max_tokens=cfg.max_new_tokens, seed=cfg.seed, stop_token_ids=tuple(sorted(stops)))
    done = client.complete(messages, sampling, label=f"item {row['id']}")
    check_prompt_ids(
        done, prompt_token_ids(family, processor, row, waves, audio_mode=audio_mode), item=row["id"]
    )
    if done.token_ids is None:  # a server that returns text only (SGLang)
        return {"output": done.text, "n_prompt_tokens": done.n_prompt_tokens,
                "n_new_tokens": done.n_completion_tokens, "truncated": done.finish_reason == "length"}  # fmt: skip
    kept, stopped = split_at_stop(done.token_ids, stops)
    tokenizer = getattr(processor, "tokenizer", processor)
    return {
        "output": tokenizer.decode(kept, skip_special_tokens=True),
        "n_prompt_tokens": done.n_prompt_tokens,
        "n_new_tokens": len(kept) + (stopped or done.finish_reason == "stop"),
        "truncated": done.finish_reason == "length",
    }


def generate_remote(
    client: ServerClient,
    family: ModuleType,
    processor: Any,
    rows: list[dict],
    cfg: Any,
    *,
    on_answer: Callable[[dict, dict], None],
    progress: bool = True,
) -> None:
    """Answer `rows` with `cfg.concurrency` requests in flight; `on_answer(row, gen)` sees each
    answer as it arrives (in completion order). Items whose requests failed after the retries are
    reported together at the end; a server that died, or one whose prompt differs from ours, ends it
    at once."""
    from tqdm.auto import tqdm

    stops = stop_token_ids(cfg.model, family, processor)
    failed: dict[str, str] = {}
    lock = threading.Lock()
    bar = tqdm(total=len(rows), desc=f"eval ({cfg.backend})", unit="item", disable=not progress)

    def one(row: dict) -> None:
        try:
            gen = answer(client, family, processor, row, cfg, stops)
        except (VLLMError, ServingError):  # a dead server, or one that renders another prompt: all items
            raise
        except Exception as e:  # retries exhausted, a 4xx (e.g. longer than the context): this item only
            with lock:
                failed[row["id"]] = f"{type(e).__name__}: {e}"
            log.warning("item %s failed: %s", row["id"], e)
        else:
            with lock:
                on_answer(row, gen)
        bar.update(1)

    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        futures = [pool.submit(one, row) for row in rows]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        dead = next((f.exception() for f in done if f.exception() is not None), None)
        if dead is not None:
            for future in futures:
                future.cancel()
    bar.close()
    if dead is not None:
        raise BackendError(f"{dead}\nThe items answered before are kept; rerun the same command to resume.")
    if failed:
        listed = "; ".join(f"{k}: {v[:200]}" for k, v in list(failed.items())[:10])
        raise BackendError(
            f"{len(failed)} of {len(rows)} item(s) failed after {cfg.request_retries} retries ({listed}"
            f"{' ...' if len(failed) > 10 else ''}). The others are kept; rerun the same command to retry these."
        )
