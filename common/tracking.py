"""The W&B mode of a run, decided without ever blocking: training (rank 0) and the eval CLIs use it.

wandb 0.31 with an API key but no network blocks ~100 s in `wandb.init` before failing, and without
credentials it stops at a login prompt; a run here goes offline instead, with a log line saying why.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import threading
import urllib.error
import urllib.request
from urllib.parse import urlparse

logger = logging.getLogger(__name__)

REACH_TIMEOUT_S = 2.0


def _wandb_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")


def _has_credentials(host: str) -> bool:
    """An API key in the environment or a `wandb login` entry in ~/.netrc (only its presence)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(base_url: str, timeout: float = REACH_TIMEOUT_S) -> bool:
    """True when a W&B GraphQL endpoint answers at `base_url` within `timeout`.

    A TCP connect is not enough: sandboxes and proxies accept connections (and answer 404 to
    everything) with no W&B behind them. A GraphQL server answers a POST with 200, or 400/401/403
    when it dislikes the query or the missing key; anything else counts as unreachable. The request
    runs in a daemon thread so a stuck DNS lookup cannot hold us either.
    """
    status: list[int] = []
    request = urllib.request.Request(
        f"{base_url}/graphql",
        data=json.dumps({"query": "query { __typename }"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )

    def probe() -> None:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status.append(response.status)
        except urllib.error.HTTPError as e:
            status.append(e.code)
        except (OSError, ValueError):
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(status) and status[0] in (200, 400, 401, 403)


def wandb_mode(requested: str = "auto") -> str:
    """'online', 'offline' or 'disabled' for a W&B run. WANDB_MODE=offline|dryrun|disabled wins;
    `requested` "offline" forces offline; otherwise online only with credentials and a W&B host that
    answers within REACH_TIMEOUT_S, each fallback with a log line."""
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode in ("offline", "dryrun", "disabled"):
        return "offline" if env_mode == "dryrun" else env_mode
    if requested == "offline":
        return "offline"
    url = _wandb_url()
    if not _has_credentials(urlparse(url).hostname or "api.wandb.ai"):
        logger.warning("W&B: no credentials (WANDB_API_KEY or `wandb login`); logging offline.")
        return "offline"
    if not _reachable(url):
        logger.warning(
            "W&B: %s did not answer within %.0f s; logging offline (wandb would otherwise block "
            "~100 s). Upload later with `wandb sync <run dir>`.",
            url,
            REACH_TIMEOUT_S,
        )
        return "offline"
    return "online"
