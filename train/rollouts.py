"""GRPO rollouts sampled by a vLLM server, each request with its prompt's audio (`grpo.use_vllm`).

trl 1.16's own vLLM path sends prompt token ids only (the audio is lost) and needs trl's
`vllm-serve` inside our venv; vLLM pins other torch and transformers versions. So the recipe starts
a stock vLLM OpenAI server from `.venv-vllm` (`make vllm`) on rank 0, and:
- sync: every `grpo.vllm_sync_every` optimizer steps (and before the first rollout) rank 0 writes
  the policy's weights with the LoRA folded in (`models.merge.save_merged_weights`, out of place)
  and the server reloads them in place (vLLM's `reload_weights`; the tiny and 7B recipes train
  the projector and `modules_to_save`, which vLLM's runtime LoRA cannot load, so weights it is);
- generate: every completion is one chat request carrying its prompt's audio (`models.serving`),
  sampled with the run's temperature and top_p, seeded per (seed, step, rank, row), returning the
  token ids and the sampled tokens' log-probs after temperature (`--logprobs-mode
  processed_logprobs`), which trl's importance-sampling correction compares with the trainer's;
- check: the server's prompt token ids must equal the trainer's (audio tokens included), per row.
Each completion records the policy version (the optimizer step of the last sync) it came from.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import shutil
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

from common.vllm_server import VLLMServer, is_cpu_build, vllm_python
from models.inputs import prompt_audio
from models.merge import save_merged_weights
from models.serving import (
    Sampling,
    ServerClient,
    check_prompt_ids,
    request_messages,
    split_at_stop,
    vllm_refusal,
)

log = logging.getLogger(__name__)

SERVED_NAME = "policy"


class VLLMRollouts:
    """Rollouts from a vLLM server; `server` is None on ranks other than 0 (they send requests to
    rank 0's server at `base_url`)."""

    def __init__(self, family: ModuleType, processor: Any, *, base_url: str, server: VLLMServer | None,
                 weights_dir: Path, sync_every: int, seed: int, request_retries: int = 3):  # fmt: skip
        self.family, self.processor = family, processor
        self.server = server
        self.weights_dir = weights_dir
        self.sync_every = sync_every
        self.seed = seed
        before_retry = server.check_alive if server is not None else None
        self.client = ServerClient(
            base_url, model=SERVED_NAME, max_retries=request_retries, before_retry=before_retry
        )
        self.version: int | None = None  # optimizer step whose weights the server holds

    def sync_due(self, step: int) -> bool:
        return self.version is None or step - self.version >= self.sync_every

    def sync(self, peft_model: Any, step: int, *, is_main: bool, barrier: Any) -> None:
        """Load the policy's current weights into the server (rank 0), then every rank goes on."""
        if is_main:
            save_merged_weights(peft_model, self.weights_dir)
            self.server.reload_weights(self.weights_dir)
            log.info("vLLM now samples from the policy of step %d", step)
        barrier()
        self.version = step

    def generate(
        self, rows: list[dict], prompt_ids: list[list[int]], *, max_tokens: int, temperature: float, top_p: float,
        stop_ids: list[int], suppress_ids: list[int], step: int, rank: int,
    ) -> tuple[list[list[int]], list[list[float]]]:  # fmt: skip
        """Completion ids (through the first stop token, as trl's own generation keeps them) and
        their sampled log-probs, one per row; the rows' prompts are sent with their audio."""
        messages: dict[str, list[dict]] = {}  # trl repeats each prompt num_generations times
        for row in rows:
            if row["id"] not in messages:
                waves = prompt_audio(self.family, self.processor, row)
                messages[row["id"]] = request_messages(self.family, row, waves)

        def one(i: int) -> tuple[list[int], list[float]]:
            row = rows[i]
            seed = zlib.crc32(f"{self.seed}/{step}/{rank}/{i}".encode()) & 0x7FFFFFFF
            sampling = Sampling(
                max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                stop_token_ids=tuple(stop_ids), logprobs=True, logit_bias={t: -100 for t in suppress_ids},
            )  # fmt: skip
            done = self.client.complete(messages[row["id"]], sampling, label=f"rollout of {row['id']}")
            check_prompt_ids(done, prompt_ids[i], item=row["id"])
            if done.token_ids is None or done.logprobs is None:
                raise RuntimeError("the vLLM server returned no token ids or log-probs")
            kept, stopped = split_at_stop(done.token_ids, set(stop_ids))
            n = len(kept) + stopped
            return done.token_ids[:n], done.logprobs[:n]

        with ThreadPoolExecutor(max_workers=max(1, len(rows))) as pool:
            results = list(pool.map(one, range(len(rows))))
        return [ids for ids, _ in results], [lps for _, lps in results]


@contextlib.contextmanager
def vllm_rollouts(cfg: Any, family: ModuleType, processor: Any, *, is_main: bool,
                  broadcast: Any) -> Iterator[VLLMRollouts]:  # fmt: skip
    """Start the server on rank 0 (the base model; the first sync loads the policy), share its
    address with every rank, and stop it and remove the synced weights at the end."""
    out = Path(cfg.training.output_dir)
    weights_dir = out / "vllm-weights"
    g = cfg.grpo
    server = None
    try:
        if is_main:
            refusal = vllm_refusal(
                family, cfg.model.model_name_or_path, processor, cpu=is_cpu_build(vllm_python())
            )
            if refusal:
                raise ValueError(f"{refusal} (grpo.use_vllm: set it to false to sample with generate)")
            server = VLLMServer(
                cfg.model.model_name_or_path, log_path=out / "vllm-server.log", dtype=cfg.model.dtype,
                max_model_len=g.vllm_max_model_len, served_model_name=SERVED_NAME, seed=cfg.training.seed,
                dev_mode=True, logprobs_mode="processed_logprobs", devices=g.vllm_devices, mm_processor_cache=False,
                extra_args=shlex.split(g.vllm_args),
            )  # fmt: skip
            server.start()
        base_url = broadcast(server.base_url if server is not None else None)
        yield VLLMRollouts(family, processor, base_url=base_url, server=server, weights_dir=weights_dir,
                           sync_every=g.vllm_sync_every, seed=cfg.training.seed)  # fmt: skip
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(weights_dir, ignore_errors=True)
