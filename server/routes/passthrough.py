"""`/v1/models`, `/v1/chat/completions` and `/v1/embeddings`, passed through to the providers.

Apps that use Assistants call these on the same client (`client.models.list()`,
`chat.completions.create`, `embeddings.create`), so one `base_url` must answer them all. The
request goes to the provider that the model routes to, under the same keys as the rest of
the API; the provider's answer comes back byte for byte (a stream as it arrives), and its
errors in OpenAI's envelope with its own status. The model list is each provider's own
`/v1/models` (cached for a minute) plus the exact names routed in the providers file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from server.completions import session_for
from server.errors import APIError
from server.providers import Provider, ProviderRegistry
from server.services import services

__all__ = ["routes"]

logger = logging.getLogger("threadlog")

_MODELS_TTL_S = 60.0
_PASSED_HEADERS = ("content-type", "openai-processing-ms", "x-ratelimit-limit-requests",
                   "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
                   "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens", "retry-after")  # fmt: skip


class _ModelCache:
    """Each provider's model list, fetched at most once a minute; a provider that fails is skipped."""

    def __init__(self) -> None:
        self._lists: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._lock = asyncio.Lock()

    async def models(self, registry: ProviderRegistry) -> list[dict[str, Any]]:
        async with self._lock:
            found: dict[str, dict[str, Any]] = {}
            for provider in registry.all_providers:
                for model in await self._of(provider):
                    found.setdefault(model["id"], model)
                for name in provider.model_names:
                    found.setdefault(name, {"id": name, "object": "model", "created": 0, "owned_by": provider.name})
            return list(found.values())

    async def _of(self, provider: Provider) -> list[dict[str, Any]]:
        cached = self._lists.get(provider.name)
        if cached is not None and time.monotonic() - cached[0] < _MODELS_TTL_S:
            return cached[1]
        models: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(min(provider.timeout_s, 10.0)):
                response = await session_for(provider).get(provider.url("/models"))
                async with response:
                    if response.status >= 300:
                        raise RuntimeError(f"HTTP {response.status}")
                    body = await response.json(content_type=None)
            for item in body.get("data") or []:
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    models.append(
                        {
                            "id": item["id"],
                            "object": "model",
                            "created": int(item.get("created") or 0),
                            "owned_by": str(item.get("owned_by") or provider.name),
                        }
                    )
        except Exception as exc:  # one provider down must not hide the others' models
            logger.warning("listing the models of provider %s failed: %s", provider.name, exc)
            return cached[1] if cached is not None else []
        self._lists[provider.name] = (time.monotonic(), models)
        return models


def _cache(request: Request) -> _ModelCache:
    svc = services(request)
    cache = svc.extras.get("model_cache")
    if cache is None:
        cache = svc.extras["model_cache"] = _ModelCache()
    assert isinstance(cache, _ModelCache)
    return cache


def _registry(request: Request) -> ProviderRegistry:
    manager = services(request).runs
    assert manager is not None
    return manager.providers


async def list_models(request: Request) -> JSONResponse:
    svc = services(request)
    data = [m for m in await _cache(request).models(_registry(request)) if svc.project_allows_model(m["id"])]
    return JSONResponse({"object": "list", "data": data})


async def retrieve_model(request: Request) -> JSONResponse:
    svc = services(request)
    model_id = request.path_params["model"]
    for model in await _cache(request).models(_registry(request)):
        if model["id"] == model_id and svc.project_allows_model(model_id):
            return JSONResponse(model)
    raise APIError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")


async def chat_completions(request: Request) -> Response:
    return await _forward(request, "/chat/completions")


async def embeddings(request: Request) -> Response:
    return await _forward(request, "/embeddings")


async def _forward(request: Request, path: str) -> Response:
    payload = await request.body()
    try:
        body = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, "We could not parse the JSON body of your request.", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "Missing required parameter: 'model'.", param="model")
    registry = _registry(request)
    provider = registry.resolve(model)
    if provider is None:
        raise APIError(404, registry.missing_provider_message(model), param="model", code="model_not_found")
    svc = services(request)
    if not svc.project_allows_model(model):
        raise APIError(
            404, f"The model '{model}' is not allowed in this project.", param="model", code="model_not_found"
        )
    try:
        upstream = await session_for(provider).post(
            provider.url(path),
            data=payload,
            headers={"Accept": request.headers.get("accept", "application/json")},
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=provider.connect_timeout_s, sock_read=provider.timeout_s
            ),
        )
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise APIError(
            502, f"The model provider {provider.name} could not be reached: {exc}", code="upstream_error"
        ) from exc
    headers = {k: upstream.headers[k] for k in _PASSED_HEADERS if k in upstream.headers}
    if upstream.status >= 400:
        async with upstream:
            raw = await upstream.read()
        return JSONResponse(_error_envelope(provider, upstream.status, raw), status_code=upstream.status,
                            headers={k: v for k, v in headers.items() if k != "content-type"})  # fmt: skip
    if upstream.headers.get("content-type", "").startswith("text/event-stream"):
        return StreamingResponse(_relay(upstream), status_code=upstream.status, headers=headers)
    async with upstream:
        raw = await upstream.read()
    if svc.directory is not None:
        svc.directory.charge_tokens(_total_tokens(raw))
    return Response(raw, status_code=upstream.status, headers=headers)


def _total_tokens(raw: bytes) -> int:
    """The usage a provider reported in a whole (not streamed) response, for the token limit."""
    try:
        usage = json.loads(raw).get("usage") or {}
        return int(usage.get("total_tokens") or 0)
    except (ValueError, AttributeError, TypeError):
        return 0


async def _relay(upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The provider's stream as it arrives; a client that leaves closes the upstream call."""
    finished = False
    try:
        async for chunk in upstream.content.iter_any():
            yield chunk
        finished = True
    finally:
        if finished:
            upstream.release()  # the connection goes back to the pool
        else:
            upstream.close()


def _error_envelope(provider: Provider, status: int, raw: bytes) -> dict[str, Any]:
    """The provider's error in OpenAI's shape (some send it already, others a string or HTML)."""
    error: Any = None
    try:
        decoded = json.loads(raw)
        error = decoded.get("error") if isinstance(decoded, dict) else None
        if error is None and isinstance(decoded, dict) and "detail" in decoded:
            error = str(decoded["detail"])  # vLLM / FastAPI
    except (json.JSONDecodeError, UnicodeDecodeError):
        error = raw.decode("utf-8", "replace").strip()[:500] or None
    if isinstance(error, dict):
        return {
            "error": {
                "message": str(error.get("message") or f"HTTP {status} from the model provider"),
                "type": str(error.get("type") or APIError(status, "").type),
                "param": error.get("param"),
                "code": error.get("code"),
            }
        }
    message = f"The model provider {provider.name} answered HTTP {status}" + (f": {error}" if error else "")
    return APIError(status, message, code="upstream_error").body()


routes = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
]
