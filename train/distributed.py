"""Process-level plumbing for `train.py`: rendezvous variables, CPU threads, and a clean exit.

Kept out of the recipe because it is about how the process was launched, not about training.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

logger = logging.getLogger(__name__)


def launched_by_launcher() -> bool:
    """True under `deepspeed`, `torchrun` or SLURM-style launchers that export the rank variables."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup_env(uses_deepspeed: bool) -> None:
    """Prepare the process; call it before torch is imported (thread counts are read at import).

    - Plain `python train.py` with a DeepSpeed config: DeepSpeed finds no rank variables and falls
      back to MPI discovery, which fails with "No module named 'mpi4py'". We fill in the rank
      variables for rank 0 of 1 and create that one-rank process group ourselves.
    - CPU threads: N ranks on one host each default to all cores (accelerate sets 2 on a 2-core box),
      which oversubscribes the cores and made steps 3x slower with 2 ranks on 2 cores. Each rank
      gets cores // local ranks, unless the user set OMP_NUM_THREADS.
    """
    single = uses_deepspeed and not launched_by_launcher()
    if single:
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1"),
                           ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):  # fmt: skip
            os.environ.setdefault(key, value)
    if "OMP_NUM_THREADS" not in os.environ:
        local = (
            os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or os.environ.get("WORLD_SIZE")
        )
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores // max(1, int(local or 1))))
    if single:
        _init_single_process_group()


def _init_single_process_group() -> None:
    """A one-rank process group on a FileStore, created before accelerate/DeepSpeed look for one.

    With env:// rendezvous the rank binds MASTER_PORT seconds after the port was chosen; on a busy
    machine another process took it first (EADDRINUSE) in our test runs. A FileStore in a fresh
    temp dir has no port to lose. accelerate and DeepSpeed both reuse an initialised group.
    """
    import tempfile

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    path = os.path.join(tempfile.mkdtemp(prefix="art-rendezvous-"), "store")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, store=dist.FileStore(path, 1), rank=0, world_size=1)


def skip_cpu_shm_comm_op() -> None:
    """CPU-only DeepSpeed: do not JIT-build DeepSpeed's shared-memory comm op; gloo does the work.

    DeepSpeed's CPU backend compiles a C++ op at init (`deepspeed_shm_comm built successfully`): ~3 min
    the first time on 2 cores, and a C++ toolchain on the user's machine. On CPU its only use is a
    faster all-reduce for inference; training collectives go through torch.distributed (gloo) either
    way. Must run before DeepSpeed initialises its backend. No effect when a GPU is present.
    """
    import torch

    if torch.cuda.is_available():
        return
    # importlib, not `import deepspeed.comm.torch as m`: `deepspeed.comm.torch` as an attribute is the
    # torch package itself (deepspeed.comm imports it), so the alias would patch the wrong module.
    ds_torch = importlib.import_module("deepspeed.comm.torch")
    ds_torch.build_shm_op = lambda: None


def finish_and_exit(code: int = 0) -> None:
    """Tear down the process group and leave without running C++ static destructors.

    A rank sometimes aborted at interpreter exit with "terminate called without an active
    exception" (launcher rc -6, ~1 run in 10-30) after training had finished: a gloo/DeepSpeed
    thread was still alive while static destructors ran. Destroying the process group and
    `os._exit` after flushing removed it. Everything worth keeping (adapter, W&B run) is already
    closed by the recipe when we get here; it also ended with a barrier after saving, so no peer
    still needs a collective (rank 0 may still be running the eval at end, alone).
    """
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception as e:  # exiting anyway; a teardown error must not turn success into failure
        logger.warning("process group teardown failed: %s", e)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
