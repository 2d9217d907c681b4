"""Bounded retries of calls to an OpenAI-compatible endpoint (a judge, a vLLM or SGLang server).

What is worth retrying: 429 (honouring Retry-After), timeouts, refused connections, 5xx, and any
error type the caller names (a malformed reply). A 4xx other than 429 is the request's own fault
and is raised at once. The client's own retries must be off (`max_retries=0`) so attempts are
counted here, once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_WAIT_S = 60.0


class RetriesExhausted(RuntimeError):
    """Every attempt failed with a retryable error; `last` says how the last one failed."""

    def __init__(self, attempts: int, last: str):
        self.attempts, self.last = attempts, last
        super().__init__(f"after {attempts} attempts: {last}")


def retry_reason(error: BaseException) -> tuple[str, str | None] | None:
    """(why, Retry-After header) when `error` is worth retrying, else None."""
    import openai

    if isinstance(error, openai.RateLimitError):
        return "429 rate limited", error.response.headers.get("retry-after")
    if isinstance(error, (openai.APITimeoutError, openai.APIConnectionError)):
        return f"{type(error).__name__}: {error}", None
    if isinstance(error, openai.APIStatusError) and error.status_code >= 500:
        return f"server error {error.status_code}", None
    return None


def backoff_wait(attempt: int, backoff: float, retry_after: str | None) -> float:
    """Seconds before retry `attempt + 1`: Retry-After when the server sent one, else doubling."""
    try:
        if retry_after is not None:
            return min(MAX_WAIT_S, float(retry_after))
    except ValueError:
        pass
    return min(MAX_WAIT_S, backoff * 2**attempt)


def with_retries(
    call: Callable[[], T],
    *,
    label: str,
    max_retries: int,
    backoff: float = 1.0,
    also_retry: tuple[type[BaseException], ...] = (),
    before_retry: Callable[[], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`call()`, retried up to `max_retries` times on retryable errors; RetriesExhausted after.

    `before_retry` runs before each retry (e.g. to raise at once when the server process died
    rather than retrying a dead socket); errors that are not retryable propagate unchanged.
    """
    last = ""
    for attempt in range(max_retries + 1):
        retry_after = None
        try:
            return call()
        except also_retry as e:
            last = f"{type(e).__name__}: {e}"
        except Exception as e:
            reason = retry_reason(e)
            if reason is None:
                raise
            last, retry_after = reason
        if attempt < max_retries:
            if before_retry is not None:
                before_retry()
            wait = backoff_wait(attempt, backoff, retry_after)
            log.warning("%s: %s; retry %d in %.1f s", label, last, attempt + 1, wait)
            sleep(wait)
    raise RetriesExhausted(max_retries + 1, last)
