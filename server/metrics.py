"""Prometheus metrics (`GET /metrics`), with prometheus_client.

One registry per process (one server per process): the code that observes something calls
the metric here directly. Nothing is observed per token: requests, runs, model calls, commits
and sandbox calls are each counted once, so metrics cost the streaming path nothing
measurable (bench_http prints the overhead). Label values are bounded: routes are the
route's template (`/v1/threads/{thread_id}`), never the raw path; models and providers come
from the configuration and the runs it admitted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from server.auth import holds_key
from server.errors import APIError, error_response

__all__ = [
    "APPENDS",
    "APPEND_SECONDS",
    "EVENTS_APPENDED",
    "INGESTION_FAILURES",
    "INGESTION_QUEUE",
    "REGISTRY",
    "REQUESTS",
    "REQUEST_SECONDS",
    "RUNS",
    "RUN_SECONDS",
    "SANDBOX_KILLS",
    "SANDBOX_SESSIONS",
    "SSE_STREAMS",
    "TIME_TO_FIRST_TOKEN",
    "TOKENS",
    "UPSTREAM_ERRORS",
    "disable",
    "metrics_endpoint",
    "observe_commit",
    "watch",
    "watch_sandbox",
]

REGISTRY = CollectorRegistry()

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_COMMIT = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

REQUESTS = Counter(
    "threadlog_http_requests",
    "HTTP requests by route template, method and status",
    ["route", "method", "status"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "threadlog_http_request_duration_seconds",
    "Time until the response ended (a stream's whole life)",
    ["route", "method"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
RUNS = Counter(
    "threadlog_runs",
    "Runs that stopped executing, by the status they stopped in",
    ["status", "model"],
    registry=REGISTRY,
)
RUN_SECONDS = Histogram(
    "threadlog_run_duration_seconds",
    "Executing time of a run (one stretch between tool outputs)",
    ["model"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "threadlog_time_to_first_token_seconds",
    "From sending a model call to its first content or tool-call chunk",
    ["model", "provider"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
TOKENS = Counter(
    "threadlog_tokens",
    "Tokens by model, provider and direction (in: prompt, out: completion)",
    ["model", "provider", "direction"],
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "threadlog_upstream_errors",
    "Model calls that failed, by provider and the run's last_error code",
    ["provider", "code"],
    registry=REGISTRY,
)
APPENDS = Counter("threadlog_event_appends", "Committed write transactions of the event log", registry=REGISTRY)
EVENTS_APPENDED = Counter("threadlog_events_appended", "Events committed to the log", registry=REGISTRY)
APPEND_SECONDS = Histogram(
    "threadlog_event_commit_duration_seconds",
    "Time of one commit of the log's writer (one or many appends)",
    buckets=_COMMIT,
    registry=REGISTRY,
)
SSE_STREAMS = Gauge("threadlog_sse_streams_open", "Server-sent event streams open now", registry=REGISTRY)
INGESTION_QUEUE = Gauge(
    "threadlog_ingestion_queue", "Vector store files waiting for or in ingestion", registry=REGISTRY
)
INGESTION_FAILURES = Counter(
    "threadlog_ingestion_failures", "Vector store files whose ingestion failed", registry=REGISTRY
)
SANDBOX_SESSIONS = Gauge(
    "threadlog_sandbox_sessions", "code_interpreter sessions with a live Python process", registry=REGISTRY
)


class _SandboxKills(Collector):
    """The sandbox manager counts its kills itself (server/sandbox stays free of this module)."""

    def __init__(self) -> None:
        self.kills: Callable[[], Mapping[str, int]] = dict

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "threadlog_sandbox_kills", "code_interpreter calls stopped by a limit, by reason", labels=["reason"]
        )
        for reason, count in sorted(self.kills().items()):
            family.add_metric([reason], count)
        yield family


SANDBOX_KILLS = _SandboxKills()
REGISTRY.register(SANDBOX_KILLS)


class _Off:
    """Stands in for every metric when metrics are off: each call does nothing."""

    def labels(self, *values: str) -> _Off:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def set_function(self, read: Callable[[], float]) -> None:
        pass


ENABLED = True


def disable() -> None:
    """`THREADLOG_METRICS=off`: no counting anywhere (for measuring what counting costs)."""
    global ENABLED, REQUESTS, REQUEST_SECONDS, RUNS, RUN_SECONDS, TIME_TO_FIRST_TOKEN, TOKENS, UPSTREAM_ERRORS
    global APPENDS, EVENTS_APPENDED, APPEND_SECONDS, SSE_STREAMS, INGESTION_QUEUE, INGESTION_FAILURES
    global SANDBOX_SESSIONS
    off: Any = _Off()
    ENABLED = False
    REQUESTS = REQUEST_SECONDS = RUNS = RUN_SECONDS = TIME_TO_FIRST_TOKEN = TOKENS = UPSTREAM_ERRORS = off
    APPENDS = EVENTS_APPENDED = APPEND_SECONDS = SSE_STREAMS = INGESTION_QUEUE = INGESTION_FAILURES = off
    SANDBOX_SESSIONS = off


def observe_commit(events: int, seconds: float) -> None:
    APPENDS.inc()
    EVENTS_APPENDED.inc(events)
    APPEND_SECONDS.observe(seconds)


def watch_sandbox(live_sessions: Callable[[], int], kills: Callable[[], Mapping[str, int]]) -> None:
    if not ENABLED:
        return
    SANDBOX_SESSIONS.set_function(live_sessions)
    SANDBOX_KILLS.kills = kills


def watch(gauge: Gauge, read: Callable[[], float]) -> None:
    """A gauge read at scrape time from the object that knows the number."""
    gauge.set_function(read)


async def metrics_endpoint(request: Request) -> Response:
    """Open like /healthz without auth; with API keys on, only an admin key reads it."""
    settings = request.app.state.services.settings
    if not ENABLED:
        return error_response(APIError(404, "Metrics are off on this server (THREADLOG_METRICS=off)."))
    admin_keys = [key.encode() for key in settings.admin_keys]
    if settings.api_keys and not holds_key(dict(request.scope["headers"]), admin_keys):
        message = (
            "Metrics need an admin key (THREADLOG_ADMIN_KEYS) in an Authorization header: Bearer ADMIN_KEY."
            if settings.admin_keys
            else "Metrics need an admin key, and this server has none: set THREADLOG_ADMIN_KEYS."
        )
        return error_response(APIError(401, message, code="invalid_api_key"))
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
