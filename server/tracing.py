"""OpenTelemetry traces: a span per request, per run, per model call and per tool call.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set or
`serve --otel` is given; then spans go to that collector over OTLP/HTTP, batched in the
SDK's background thread, and the standard `OTEL_*` variables (service name, headers,
sampler) apply. When off, nothing here runs: each call site checks `ENABLED` first, so the
streaming path pays one attribute read.

Model calls follow the GenAI semantic conventions (`gen_ai.operation.name`,
`gen_ai.request.model`, `gen_ai.usage.input_tokens`, ...); an incoming W3C `traceparent`
makes the request's span a child of the caller's, and a run's span is a child of the
request that started it (its task inherits the context), so one trace shows an app's call,
the run it started and every model and tool call inside.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ["ENABLED", "configure", "request_span", "shutdown", "span", "traced_completion"]

ENABLED = False
_tracer: Any = None
_propagator: Any = None


def configure(env: Mapping[str, str], *, forced: bool = False) -> bool:
    """Turn tracing on when asked to; returns whether it is on."""
    global ENABLED, _tracer, _propagator
    wanted = forced or bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    if not wanted or env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from server import __version__

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "threadlog"),
                                "service.version": __version__})  # fmt: skip
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("threadlog", __version__)
    _propagator = TraceContextTextMapPropagator()
    ENABLED = True
    return True


def shutdown() -> None:
    """Flush what the batch processor holds (at exit)."""
    if ENABLED:
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        if hasattr(provider, "shutdown"):
            provider.shutdown()


@contextmanager
def request_span(scope: Mapping[str, Any]) -> Iterator[Any]:
    """The server span of one HTTP request, continuing the caller's `traceparent`."""
    headers = {
        k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in (b"traceparent", b"tracestate")
    }
    parent = _propagator.extract(headers)
    from opentelemetry.trace import SpanKind

    with _tracer.start_as_current_span(
        f"{scope['method']} {scope['path']}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"http.request.method": scope["method"], "url.path": scope["path"]},
    ) as current:
        yield current


async def traced_completion(
    stream: Callable[[Any, dict[str, Any]], AsyncIterator[Any]], provider: Any, request: dict[str, Any]
) -> AsyncIterator[Any]:
    """`stream(provider, request)` inside a GenAI client span ("chat MODEL") with its usage."""
    from opentelemetry.trace import SpanKind, Status, StatusCode

    model = request.get("model")
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider.name,
        "gen_ai.request.model": model,
        "server.address": provider.base_url,
    }
    for key in ("temperature", "top_p", "max_completion_tokens"):
        if request.get(key) is not None:
            attributes[f"gen_ai.request.{key.replace('max_completion_tokens', 'max_tokens')}"] = request[key]
    current = _tracer.start_span(f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes)
    finish: list[str] = []
    try:
        async for chunk in stream(provider, request):
            if chunk.usage is not None:
                current.set_attribute("gen_ai.usage.input_tokens", chunk.usage.prompt_tokens)
                current.set_attribute("gen_ai.usage.output_tokens", chunk.usage.completion_tokens)
            for choice in chunk.choices:
                if choice.finish_reason:
                    finish.append(choice.finish_reason)
            yield chunk
    except Exception as exc:
        current.set_status(Status(StatusCode.ERROR, str(exc)))
        current.set_attribute("error.type", getattr(exc, "code", type(exc).__name__))
        raise
    finally:
        if finish:
            current.set_attribute("gen_ai.response.finish_reasons", finish)
        current.end()


@contextmanager
def span(name: str, attributes: dict[str, Any] | None = None, *, client: bool = False) -> Iterator[Any]:
    """An internal (or, for calls to a provider, client) span under the current one."""
    from opentelemetry.trace import SpanKind

    kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
    with _tracer.start_as_current_span(name, kind=kind, attributes=attributes or {}) as current:
        yield current
