"""Per-project request and token rate limits: token buckets, OpenAI's 429 and headers.

A limit of N per minute is a bucket of N that refills N/60 per second, as OpenAI's limits
behave: a burst of N passes, then one more every 60/N seconds. Requests are taken when a
request arrives; tokens are charged when a run (or a pass-through call) reports its usage,
and a project whose token bucket is empty gets 429 on the routes that call a model until it
refills. The headers are OpenAI's (`x-ratelimit-limit-requests`, `-remaining-`, `-reset-`, and
the same for tokens); a 429 adds `retry-after` and `retry-after-ms`, which the openai SDK's
automatic retry waits for.

In memory, per process: a restart starts every bucket full.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from server.errors import APIError

__all__ = ["Limits", "RateLimiter", "format_reset"]


@dataclass(frozen=True, slots=True)
class Limits:
    """A project's limits; None is no limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(slots=True)
class _Bucket:
    capacity: float
    level: float
    stamp: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.capacity / 60.0)
        self.stamp = now

    def seconds_until(self, level: float) -> float:
        """How long until the bucket holds `level` again."""
        return max(0.0, (level - self.level) * 60.0 / self.capacity)


class RateLimiter:
    def __init__(self, clock: object = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, _Bucket] = {}
        self._tokens: dict[str, _Bucket] = {}

    def admit(self, project: str, limits: Limits, *, calls_model: bool) -> list[tuple[bytes, bytes]]:
        """Take one request from the project's bucket; the headers to send, or a 429 `APIError`.

        `calls_model`: the request will call a model, so an exhausted token budget refuses it too.
        """
        now = self._now()
        headers: list[tuple[bytes, bytes]] = []
        if limits.requests_per_minute is not None:
            bucket = _bucket(self._requests, project, limits.requests_per_minute, now)
            if bucket.level < 1:
                wait = bucket.seconds_until(1)
                raise _too_many(project, "requests", limits.requests_per_minute, wait, bucket, headers)
            bucket.level -= 1
            headers += _headers("requests", limits.requests_per_minute, bucket)
        if limits.tokens_per_minute is not None:
            bucket = _bucket(self._tokens, project, limits.tokens_per_minute, now)
            if calls_model and bucket.level <= 0:
                wait = bucket.seconds_until(min(1.0, bucket.capacity))
                raise _too_many(project, "tokens", limits.tokens_per_minute, wait, bucket, headers)
            headers += _headers("tokens", limits.tokens_per_minute, bucket)
        return headers

    def charge_tokens(self, project: str, limits: Limits, tokens: int) -> None:
        """Tokens a model call used; the bucket may go below zero (the call was let in)."""
        if limits.tokens_per_minute is None or tokens <= 0:
            return
        bucket = _bucket(self._tokens, project, limits.tokens_per_minute, self._now())
        bucket.level -= tokens

    def forget(self, project: str) -> None:
        """The project's limits changed: its buckets start over (full, at the new size)."""
        self._requests.pop(project, None)
        self._tokens.pop(project, None)

    def _now(self) -> float:
        clock = self._clock
        assert callable(clock)
        return float(clock())


def _bucket(buckets: dict[str, _Bucket], project: str, per_minute: int, now: float) -> _Bucket:
    bucket = buckets.get(project)
    if bucket is None or bucket.capacity != per_minute:
        bucket = buckets[project] = _Bucket(float(per_minute), float(per_minute), now)
    else:
        bucket.refill(now)
    return bucket


def _headers(what: str, limit: int, bucket: _Bucket) -> list[tuple[bytes, bytes]]:
    return [
        (f"x-ratelimit-limit-{what}".encode(), str(limit).encode()),
        (f"x-ratelimit-remaining-{what}".encode(), str(max(0, math.floor(bucket.level))).encode()),
        (f"x-ratelimit-reset-{what}".encode(), format_reset(bucket.seconds_until(bucket.capacity)).encode()),
    ]


def _too_many(
    project: str, what: str, limit: int, wait: float, bucket: _Bucket, headers: list[tuple[bytes, bytes]]
) -> APIError:
    unit = "RPM" if what == "requests" else "TPM"
    return APIError(
        429,
        f"Rate limit reached in project {project} on {what} per min ({unit}): Limit {limit}, "
        f"Remaining {max(0, math.floor(bucket.level))}. Please try again in {format_reset(wait)}.",
        code="rate_limit_exceeded",
        type_=what,
        headers=[
            *headers,
            *_headers(what, limit, bucket),
            (b"retry-after", str(max(1, math.ceil(wait))).encode()),
            (b"retry-after-ms", str(max(1, math.ceil(wait * 1000))).encode()),
        ],
    )


def format_reset(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s"
