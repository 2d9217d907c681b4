"""A dead rank never hangs the job: every rank watches its peers on the same host.

Why: when one rank dies (OOM killer, a crash, `kill -9`), its peers sit in the next collective until
the collective timeout (30 min by default), and the DeepSpeed launcher, which does stop the job
when a child exits, names the last rank it spawned, not the dead one. So each rank runs a thread
that finds its sibling ranks (the launcher's other children, told apart by their LOCAL_RANK) and
checks them every `INTERVAL_S`; when one is gone before it said it finished, the rank prints which
rank died and exits with `EXIT_PEER_DIED`, within about a second. A rank that finishes marks
itself done and waits for its peers (so rank 1 stays to watch rank 0 through `eval_at_end`).
Peers on other hosts are not visible here: there the collective timeout (`training.
collective_timeout_s`) ends the wait, and the launcher the job.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

INTERVAL_S = 0.25
STARTUP_S = 120.0  # how long to wait for every local rank to appear under the launcher
EXIT_PEER_DIED = 3
_state: dict[str, Any] = {}


def _env_int(*names: str, default: int = 0) -> int:
    for name in names:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return default


def _marker_dir() -> Path:
    """Per job: the launcher's pid and the rendezvous port name it on this host."""
    job = f"{os.getppid()}-{os.environ.get('MASTER_PORT', '')}"
    return Path(tempfile.gettempdir()) / f"art-ranks-{job}"


def _alive(proc: Any) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _find_peers(local_rank: int, local_size: int) -> dict[int, Any]:
    """local rank -> psutil.Process of the sibling ranks (same launcher parent); {} if not found."""
    import psutil

    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        peers = {}
        for child in psutil.Process(os.getppid()).children():
            try:
                rank = child.environ().get("LOCAL_RANK")
            except psutil.Error:
                continue
            if child.pid != os.getpid() and rank is not None and rank.isdigit():
                peers[int(rank)] = child
        if set(peers) >= set(range(local_size)) - {local_rank}:
            return peers
        time.sleep(INTERVAL_S)
    return {}


def _dead_peers() -> list[tuple[int, int]]:
    """(local rank, pid) of peers that are gone without having marked themselves done."""
    done = _state["dir"]
    return [
        (lr, proc.pid)
        for lr, proc in sorted(_state["peers"].items())
        if not (done / f"done-{lr}").exists() and not _alive(proc)
    ]


def _stop(dead: list[tuple[int, int]], why: str) -> None:
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    names = ", ".join(f"rank {rank - local_rank + lr} (local rank {lr}, pid {pid})" for lr, pid in dead)
    message = (
        f"rank {rank}: {names} died before finishing ({why}); stopping rank {rank} so the job does not "
        "hang. The last complete checkpoint is intact: rerun with --resume_from_checkpoint latest."
    )
    # stderr directly: logging is quiet on ranks other than 0, and this must reach the user.
    print(f"ERROR {message}", file=sys.stderr, flush=True)
    os._exit(EXIT_PEER_DIED)


def _watch() -> None:
    while True:
        dead = _dead_peers()
        if dead:
            _stop(dead, "seen by the rank watch")
        time.sleep(INTERVAL_S)


def _on_sigterm(signum: int, frame: Any) -> None:
    """The launcher stops the survivors with SIGTERM when a rank exits: say which one died first."""
    if os.getpid() != _state.get("pid"):  # a forked loader worker inherited this handler
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    dead = _dead_peers()
    if dead:
        _stop(dead, "the launcher is stopping the job")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def start() -> bool:
    """Start watching the local peer ranks (under a launcher with several local ranks).

    Returns False, and watches nothing, for one process or when the peers cannot be found (e.g.
    ranks started one by one by SLURM, each with its own parent).
    """
    local_size = _env_int("LOCAL_WORLD_SIZE", "LOCAL_SIZE", default=1)
    if local_size < 2 or "LOCAL_RANK" not in os.environ:
        return False
    local_rank = _env_int("LOCAL_RANK")
    peers = _find_peers(local_rank, local_size)
    if not peers:
        logger.warning(
            "rank watch: local peer ranks not found; a dead peer ends the job by collective timeout"
        )
        return False
    folder = _marker_dir()
    folder.mkdir(parents=True, exist_ok=True)
    _state.update(peers=peers, dir=folder, pid=os.getpid(), local_rank=local_rank)
    signal.signal(signal.SIGTERM, _on_sigterm)
    threading.Thread(target=_watch, name="rank-watch", daemon=True).start()
    return True


def finish() -> None:
    """Mark this rank done, then wait until every local peer is done (or the watch stops us)."""
    if not _state:
        return
    (_state["dir"] / f"done-{_state['local_rank']}").touch()
    while not all((_state["dir"] / f"done-{lr}").exists() for lr in _state["peers"]):
        time.sleep(INTERVAL_S)
