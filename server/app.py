"""The ASGI application: routes, error envelope, auth, and the lifespan that opens the log."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from events.compaction import compact_periodically
from events.store import ForeignStream
from projections import build_projector
from projections.views import UnknownCursor, ViewReader
from server import __version__, metrics, storage, tracing
from server.builtins import Builtins
from server.config import Settings
from server.errors import APIError, error_response, exception_handlers
from server.file_store import file_store, object_storage_options
from server.gc_policy import settle_heap
from server.limits import BodyLimit, CatchAll
from server.projects import Directory, ProjectAccess
from server.providers import ProviderRegistry
from server.request_context import RequestContext
from server.routes import (
    assistants,
    debugging,
    files,
    messages,
    organization,
    passthrough,
    playground,
    project_info,
    runs,
    threads,
    vector_stores,
)
from server.runs.manager import RunManager
from server.services import Services, shutting_down

__all__ = ["create_app"]

logger = logging.getLogger("threadlog")


async def healthz(request: Request) -> JSONResponse:
    svc: Services = request.app.state.services
    return JSONResponse({"status": "ok", "head": svc.store.head, "pid": os.getpid()})


async def readyz(request: Request) -> JSONResponse:
    """Ready when the log accepts writes: a write transaction through the store's own writer."""
    svc: Services = request.app.state.services
    if svc.draining:
        return error_response(shutting_down())
    try:
        await svc.store.probe_write()
    except Exception as exc:
        body = APIError(503, f"The event log does not accept writes: {exc}", code="not_ready").body()
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready", "head": svc.store.head})


def startup_line(svc: Services, providers: ProviderRegistry) -> str:
    """What is serving, in one line: version, URLs, storage, models, sandbox, auth."""
    settings = svc.settings
    root = f"http://{settings.host}:{settings.port}"
    upstreams = ", ".join(
        f"{p.name} {p.base_url} ({', '.join(p.models) if p.models else 'any model'})" for p in providers.all_providers
    )
    sandbox = svc.extras.get("sandbox_unavailable")
    keys = len(settings.api_keys)
    auth = f"on ({keys} key{'s' if keys != 1 else ''})" if keys else "off"
    return (
        f"Threadlog {__version__} serving the API at {root}/v1 and the playground at {root}/playground; "
        f"data dir {settings.data_dir.resolve()} ({storage.describe(settings)}); "
        f"upstreams: {upstreams or 'none configured'}; "
        f"code_interpreter: {'sandboxed' if sandbox is None else 'unavailable (' + str(sandbox) + ')'}; "
        f"auth: {auth}; traces: {'OTLP' if tracing.ENABLED else 'off'}"
    )


async def _foreign_stream(request: Request, exc: Exception) -> Response:
    """An append across projects, which the views should have stopped: answered as a missing object."""
    assert isinstance(exc, ForeignStream)
    logger.error("refused an append across projects: %s", exc)
    return error_response(APIError(404, f"No object found with id '{exc.stream_id}'."))


async def _unknown_cursor(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, UnknownCursor)
    return error_response(APIError(400, str(exc), param=exc.param))


def _routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics.metrics_endpoint, methods=["GET"]),
    ]
    modules = [assistants, runs, debugging, threads, messages, files, vector_stores, passthrough, organization]
    modules.append(project_info)
    for module in (*modules, playground):
        routes.extend(module.routes)
    return routes


def create_app(settings: Settings) -> Starlette:
    """The server over `settings.data_dir`; the data dir is locked while it runs."""
    providers = ProviderRegistry.from_settings(settings.env, settings.providers_file)
    directory = Directory(settings.api_keys, settings.admin_keys)
    if settings.env.get("THREADLOG_METRICS", "on").lower() in ("off", "0", "false"):
        metrics.disable()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Whatever opened is closed again if a later step fails: a start that fails must
        # leave no database thread behind that keeps the process from exiting.
        async with contextlib.AsyncExitStack() as opened:
            opened.push_async_callback(providers.aclose)
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            projector = build_projector()
            store = storage.event_log(settings, projector, metrics.observe_commit)
            if store.exclusive:  # a log of its own: one server per data dir
                opened.callback(_lock_data_dir(settings).close)
            opened.push_async_callback(store.close)
            await store.open()
            views = ViewReader(store.view_queries(), projector, store.read, cached=store.exclusive)
            leases = store.run_leases(settings.run_lease_s)
            await leases.open()
            opened.push_async_callback(leases.close)
            manager = RunManager(
                store,
                views,
                providers,
                run_timeout_s=settings.run_timeout_s,
                log_content=settings.log_content,
                leases=leases,
            )
            svc = Services(
                settings=settings,
                store=store,
                views=views,
                runs=manager,
                directory=directory,
                leases=leases,
                files=file_store(settings.files_uri, settings.files_dir, settings.env),
            )
            await directory.load(views)
            if not store.exclusive:  # other processes change projects and keys too
                follower = asyncio.create_task(directory.follow(store, views), name="directory-follower")
                opened.callback(follower.cancel)
            manager.directory = directory
            manager.builtins = Builtins(svc)
            app.state.services = svc
            stores = _vector_stores(svc)
            if stores is not None:
                opened.push_async_callback(stores.aclose)
            interpreter = _code_interpreter(svc)
            if interpreter is not None:
                opened.push_async_callback(interpreter.aclose)
            opened.push_async_callback(manager.shutdown)
            if settings.compact_older_than_s is not None:
                compaction = asyncio.create_task(
                    compact_periodically(settings.db_path, settings.compact_older_than_s, settings.compact_interval_s),
                    name="background-compaction",
                )
                opened.callback(compaction.cancel)
            await manager.recover()
            supervisor = asyncio.create_task(manager.supervise(), name="run-leases")
            opened.callback(supervisor.cancel)
            if stores is not None:
                await stores.recover()
                if not store.exclusive:
                    ingestions = asyncio.create_task(stores.supervise(), name="ingestion-leases")
                    opened.callback(ingestions.cancel)
            settle_heap()
            logger.info(startup_line(svc, providers), extra={"event": "startup"})
            yield

    handlers: dict[Any, Any] = {**exception_handlers, UnknownCursor: _unknown_cursor, ForeignStream: _foreign_stream}
    routes = _routes()
    templates = {route.endpoint: route.path for route in routes if isinstance(route, Route)}
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestContext, route_templates=templates),
            Middleware(CatchAll),
            Middleware(
                BodyLimit,
                max_json_bytes=settings.max_request_bytes,
                max_upload_bytes=settings.max_file_bytes + 1024 * 1024,  # the form's other fields
            ),
            Middleware(ProjectAccess, directory=directory),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )


def _vector_stores(svc: Services) -> Any:
    """LanceDB-backed vector stores, if the retrieval extras are installed."""
    try:
        from server.retrieval.chunking import AUTO_CHUNKING
        from server.retrieval.embedding import embedder_from_env
        from server.retrieval.index import VectorIndex
        from server.vector_stores import VectorStores
    except ImportError as exc:
        logger.warning("vector stores disabled: %s", exc)
        return None
    uri = svc.settings.vector_uri
    options = object_storage_options(svc.settings.env) if uri.startswith("s3://") else None
    index = VectorIndex(
        uri, embedder_from_env(svc.settings.env), storage_options=options, shared=not svc.store.exclusive
    )
    stores = VectorStores(svc, index, AUTO_CHUNKING)
    svc.extras["vector_stores"] = stores
    svc.extras["on_file_deleted"] = stores.remove_file_everywhere
    return stores


def _code_interpreter(svc: Services) -> Any:
    """The sandboxed code_interpreter, or the reason it cannot run here."""
    try:
        from server.code_interpreter import CodeInterpreter
    except ImportError as exc:
        svc.extras["sandbox_unavailable"] = f"the sandbox module is missing ({exc})"
        return None
    interpreter = CodeInterpreter.create(svc)
    if interpreter.unavailable:
        svc.extras["sandbox_unavailable"] = interpreter.unavailable
        return None
    svc.extras["code_interpreter"] = interpreter
    return interpreter


def check_data_dir(settings: Settings) -> None:
    """Before serving: the data dir can be made, written, and is not another server's.

    Raises OSError or RuntimeError with a message that names the path, for one line on stderr.
    """
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.data_dir / ".threadlog-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"the data dir {settings.data_dir} is not usable: {exc.strerror or exc}") from exc
    if storage.owns_data_dir(settings):
        _lock_data_dir(settings).close()


def _lock_data_dir(settings: Settings) -> Any:
    """One server per data dir: a second one would break the single-writer guarantee."""
    handle = open(settings.data_dir / "threadlog.lock", "a+")  # noqa: SIM115 - held for the server's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise RuntimeError(f"Another Threadlog server is using {settings.data_dir}") from exc
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
