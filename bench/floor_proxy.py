"""The floor for bench_runs section 4: the same streams relayed by a minimal Starlette proxy with no log.

    python bench/floor_proxy.py --port 8100 --upstream http://127.0.0.1:9000/v1

It answers just what the benchmark's client asks of Threadlog (create an assistant and
threads, stream a run) on the same stack (uvicorn, Starlette, aiohttp to the upstream,
orjson), and for each upstream token writes the `thread.message.delta` event Threadlog
would. No log, no views, no validation: what one process on this machine can relay at all,
so that Threadlog's figures read as a ratio to it.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
from collections.abc import AsyncIterator

import aiohttp
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

_ids = itertools.count(1)


def create_app(upstream: str) -> Starlette:
    threads: dict[str, str] = {}
    session: list[aiohttp.ClientSession] = []

    def client() -> aiohttp.ClientSession:
        if not session:
            session.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
        return session[0]

    async def assistant(request: Request) -> Response:
        return JSONResponse({"id": f"asst_{next(_ids)}", "object": "assistant"})

    async def thread(request: Request) -> Response:
        body = orjson.loads(await request.body())
        thread_id = f"thread_{next(_ids)}"
        threads[thread_id] = body["messages"][0]["content"]
        return JSONResponse({"id": thread_id, "object": "thread"})

    async def run(request: Request) -> Response:
        text = threads[request.path_params["thread_id"]]
        run_id, message_id = f"run_{next(_ids)}", f"msg_{next(_ids)}"
        body = {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": text}]}
        return StreamingResponse(_relay(client(), upstream, body, run_id, message_id), media_type="text/event-stream")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "head": 0})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if session:
            await session[0].close()

    return Starlette(
        routes=[
            Route("/v1/assistants", assistant, methods=["POST"]),
            Route("/v1/threads", thread, methods=["POST"]),
            Route("/v1/threads/{thread_id}/runs", run, methods=["POST"]),
            Route("/healthz", healthz),
        ],
        lifespan=lifespan,
    )


def _event(name: bytes, data: bytes) -> bytes:
    return b"event: " + name + b"\r\ndata: " + data + b"\r\n\r\n"


async def _relay(
    session: aiohttp.ClientSession, upstream: str, body: dict[str, object], run_id: str, message_id: str
) -> AsyncIterator[bytes]:
    run = orjson.dumps({"id": run_id, "object": "thread.run", "status": "queued"})
    yield _event(b"thread.run.created", run)
    async with session.post(f"{upstream}/chat/completions", data=orjson.dumps(body)) as response:
        buffer = b""
        async for data in response.content.iter_any():
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            out = []
            for line in lines:
                if not line.startswith(b"data: {"):
                    continue
                for choice in orjson.loads(line[6:])["choices"]:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        part = {"index": 0, "type": "text", "text": {"value": content}}
                        delta = {"id": message_id, "object": "thread.message.delta", "delta": {"content": [part]}}
                        out.append(_event(b"thread.message.delta", orjson.dumps(delta)))
            if out:
                yield b"".join(out)
    completed = orjson.dumps({"id": run_id, "object": "thread.run", "status": "completed"})
    yield _event(b"thread.run.completed", completed) + _event(b"done", b"[DONE]")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream's /v1 base URL")
    args = parser.parse_args()
    uvicorn.run(create_app(args.upstream), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
