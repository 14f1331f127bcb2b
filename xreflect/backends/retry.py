"""When to retry a failed API call, and how long to wait first.

Rate limits (429), server errors (5xx), timeouts and dropped connections are transient: retry them
with exponential backoff and jitter, waiting at least what the server asks for in `Retry-After`.
Authentication errors and an exhausted quota (`insufficient_quota`) will fail every request the
same way, so they stop the whole run at once with a message that says what to fix; retrying would
only burn time (and, for some servers, rate-limit credit). A malformed or refused request (400,
422: e.g. an image the model rejects) fails that item only.
"""
from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass
from typing import Any, Mapping

import openai

from xreflect.core.errors import EXIT_AUTH, EXIT_QUOTA, EXIT_SERVER, EXIT_UNREACHABLE, StopRun


class FatalBackendError(StopRun):
    """An error that every further request would hit too: the run stops, nothing is retried."""
    exit_code = EXIT_SERVER


class AuthError(FatalBackendError):
    exit_code = EXIT_AUTH


class QuotaError(FatalBackendError):
    exit_code = EXIT_QUOTA


class ServerAnswered(StopRun):
    """An API error raised outside a backend's own retries (the Batch API calls), as one message."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class ServerUnreachable(FatalBackendError):
    """Connection failures or timeouts in a row: the server is down, unreachable or too slow."""
    exit_code = EXIT_UNREACHABLE


class NotOpenAIServer(FatalBackendError):
    """The server answered, but not as an OpenAI API (an HTML page from a proxy, say)."""


@dataclass(frozen=True)
class Decision:
    retry: bool
    fatal: bool = False
    retry_after: float | None = None  # seconds the server asked us to wait
    reason: str = ""
    unreachable: str | None = None  # "connection" or "timeout": counts towards the circuit breaker
    stop: type = FatalBackendError    # the error raised when `fatal`


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6        # first try included
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    max_retry_after_s: float = 600.0  # never sleep longer than this, whatever the server says

    def delay(self, attempt: int, retry_after: float | None = None,
              rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `attempt + 1` (attempt counts from 0).

        "Equal jitter": half the exponential step fixed, half random, so many clients that hit the
        same 429 do not come back in lockstep, and each still waits a growing minimum.
        """
        step = min(self.max_delay_s, self.base_delay_s * 2 ** attempt)
        wait = step / 2 + (rng or random).uniform(0, step / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after_s))
        return wait

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RetryPolicy":
        return cls(max_attempts=int(config.get("max_attempts", cls.max_attempts)),
                   base_delay_s=float(config.get("backoff_base_s", cls.base_delay_s)),
                   max_delay_s=float(config.get("backoff_max_s", cls.max_delay_s)))


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """`retry-after-ms` (OpenAI), else `Retry-After` as seconds or an HTTP date; None if absent."""
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        return max(0.0, parsed.timestamp() - (now if now is not None else time.time()))


def _error_code(error: openai.APIStatusError) -> str | None:
    code = getattr(error, "code", None)
    if code:
        return str(code)
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("code"):
            return str(inner["code"])
    return None


def classify(error: Exception) -> Decision:
    """What to do about an exception raised by the OpenAI SDK."""
    if isinstance(error, openai.APITimeoutError):
        return Decision(retry=True, reason="timed out", unreachable="timeout")
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__ or error
        return Decision(retry=True, reason=f"connection failed ({type(cause).__name__}: {cause})",
                        unreachable="connection")
    if not isinstance(error, openai.APIStatusError):
        return Decision(retry=False, reason=f"{type(error).__name__}: {error}")
    status, code = error.status_code, _error_code(error)
    retry_after = parse_retry_after(error.response.headers if error.response is not None else None)
    if status in (401, 403):
        return Decision(retry=False, fatal=True, stop=AuthError,
                        reason=f"authentication failed (HTTP {status}: {error.message})")
    if code == "insufficient_quota":
        return Decision(retry=False, fatal=True, stop=QuotaError,
                        reason="insufficient_quota: the account has no credit left")
    if status == 404:  # model not served there: every request would fail the same way
        return Decision(retry=False, fatal=True, reason=f"not found (HTTP 404: {error.message})")
    if status in (408, 409, 429) or status >= 500:
        return Decision(retry=True, retry_after=retry_after, reason=f"HTTP {status}" + (f" {code}" if code else ""))
    return Decision(retry=False, reason=f"HTTP {status}: {error.message}")


def api_stop(error: openai.APIError) -> StopRun:
    """The stop-the-run error of an OpenAI SDK error: its message says what the server answered."""
    decision = classify(error)
    code = decision.stop.exit_code if decision.fatal else EXIT_UNREACHABLE if decision.unreachable else EXIT_SERVER
    request = getattr(error, "request", None)
    where = f" from {request.method} {request.url}" if request is not None else ""
    return ServerAnswered(f"the server answered{where}: {decision.reason}. Check the base URL "
                          "($OPENAI_BASE_URL), the key ($OPENAI_API_KEY) and the account, then rerun.", code)
