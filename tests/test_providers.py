"""Provider routing and the resilient streaming client, against the fake upstream."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from openai.types.chat import ChatCompletionChunk

from server.completions import UpstreamError, aclose_clients, stream_chat_completion
from server.fake_upstream import RunningUpstream, serve_in_thread
from server.providers import Provider, ProviderRegistry

MODEL = "fake-model"


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningUpstream]:
    running = serve_in_thread(api_key="provider-secret")
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _reset(upstream: RunningUpstream) -> None:
    upstream.reset()


@pytest_asyncio.fixture
async def provider(upstream: RunningUpstream) -> AsyncIterator[Provider]:
    yield Provider(name="fake", base_url=upstream.base_url, api_key="provider-secret")
    await aclose_clients()


def request(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


async def collect(provider: Provider, body: dict[str, Any]) -> list[ChatCompletionChunk]:
    return [chunk async for chunk in stream_chat_completion(provider, body)]


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def wait_for_open_streams(upstream: RunningUpstream, expected: int) -> None:
    """Bounded poll: the server sees a disconnect asynchronously."""
    deadline = time.monotonic() + 5.0
    while upstream.stats()["open_streams"] != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"open_streams stayed at {upstream.stats()['open_streams']}")
        await asyncio.sleep(0.02)


# ----------------------------------------------------------------- streaming


@pytest.mark.asyncio
async def test_streams_chunks_and_usage(upstream: RunningUpstream, provider: Provider) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    chunks = await collect(provider, request("say: hello there", tools=tools, temperature=0))
    assert text_of(chunks) == "hello there"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    sent = upstream.requests()[0]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["tools"] == tools and sent["temperature"] == 0


@pytest.mark.asyncio
async def test_rate_limit_retried_transparently(upstream: RunningUpstream, provider: Provider) -> None:
    chunks = await collect(provider, request("fail: 429 2\nsay: made it"))
    assert text_of(chunks) == "made it"
    assert len(upstream.requests()) == 3


@pytest.mark.asyncio
async def test_rate_limit_exhausted(upstream: RunningUpstream, provider: Provider) -> None:
    with pytest.raises(UpstreamError) as caught:
        await collect(provider, request("fail: 429 10"))
    assert caught.value.code == "rate_limit_exceeded"
    assert "Provider 'fake'" in caught.value.message
    assert "after 3 attempts (HTTP 429)" in caught.value.message
    assert len(upstream.requests()) == 3


@pytest.mark.asyncio
async def test_server_errors_beyond_retries(upstream: RunningUpstream, provider: Provider) -> None:
    flaky = Provider(name="flaky", base_url=provider.base_url, api_key=provider.api_key, max_retries=1)
    with pytest.raises(UpstreamError) as caught:
        await collect(flaky, request("fail: 500 5"))
    assert caught.value.code == "server_error"
    assert "Provider 'flaky'" in caught.value.message and "HTTP 500" in caught.value.message
    assert provider.base_url in caught.value.message
    assert len(upstream.requests()) == 2


@pytest.mark.asyncio
async def test_client_errors_are_invalid_prompt(provider: Provider) -> None:
    with pytest.raises(UpstreamError) as caught:
        await collect(provider, request("fail: 400 1"))
    assert caught.value.code == "invalid_prompt"
    assert "Simulated HTTP 400" in caught.value.message


@pytest.mark.asyncio
async def test_provider_api_key_is_sent(upstream: RunningUpstream) -> None:
    wrong = Provider(name="wrong-key", base_url=upstream.base_url, api_key="nope")
    try:
        with pytest.raises(UpstreamError) as caught:
            await collect(wrong, request("hi"))
    finally:
        await aclose_clients()
    assert caught.value.code == "invalid_prompt"
    assert "wrong-key" in caught.value.message and "401" in caught.value.message
    assert upstream.requests() == []


@pytest.mark.asyncio
async def test_stall_times_out_promptly(upstream: RunningUpstream, provider: Provider) -> None:
    stalling = Provider(name="stally", base_url=provider.base_url, api_key=provider.api_key, timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        await collect(stalling, request("stall\nsay: one two three"))
    elapsed = time.monotonic() - started
    assert caught.value.code == "server_error"
    assert "timed out" in caught.value.message and "stally" in caught.value.message
    assert elapsed < 3.0
    await wait_for_open_streams(upstream, 0)


@pytest.mark.asyncio
async def test_connection_refused_is_server_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = Provider(name="dead", base_url=f"http://127.0.0.1:{port}/v1", api_key=None, max_retries=0)
    try:
        with pytest.raises(UpstreamError) as caught:
            await collect(dead, request("hi"))
    finally:
        await aclose_clients()
    assert caught.value.code == "server_error" and "dead" in caught.value.message


@pytest.mark.asyncio
async def test_cancelling_consumer_closes_connection(upstream: RunningUpstream, provider: Provider) -> None:
    first_chunk = asyncio.Event()

    async def consume() -> None:
        async for _chunk in stream_chat_completion(provider, request("slow: 50\nlong: 200")):
            first_chunk.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_chunk.wait(), timeout=5)
    assert upstream.stats()["open_streams"] == 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await wait_for_open_streams(upstream, 0)


# -------------------------------------------------------------------- routing

PROVIDERS_TOML = """
[[providers]]
name = "ollama"
base_url = "http://127.0.0.1:11434/v1"
api_key_env = "OLLAMA_KEY"
models = ["llama3*", "qwen2.5:7b"]
timeout_s = 120
max_retries = 3
context_window = 8192

[[providers]]
name = "vllm"
base_url = "http://127.0.0.1:8001/v1"
api_key = "literal"
models = ["llama3-70b", "mistral-*"]

[[providers]]
name = "cloud"
base_url = "https://api.example.com/v1"
default = true
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "providers.toml"
    path.write_text(text)
    return path


def test_routing_exact_glob_default(tmp_path: Path) -> None:
    registry = ProviderRegistry.from_settings({"OLLAMA_KEY": "k1"}, write(tmp_path, PROVIDERS_TOML))
    ollama = registry.resolve("llama3.1:8b")
    assert ollama is not None and ollama.name == "ollama"
    assert ollama.api_key == "k1" and ollama.timeout_s == 120 and ollama.max_retries == 3
    assert ollama.context_window == 8192 and ollama.models == ("llama3*", "qwen2.5:7b")
    exact = registry.resolve("llama3-70b")  # exact match beats the earlier glob
    assert exact is not None and exact.name == "vllm" and exact.api_key == "literal"
    glob = registry.resolve("mistral-large")
    assert glob is not None and glob.name == "vllm"
    fallback = registry.resolve("gpt-4o")
    assert fallback is not None and fallback.name == "cloud" and fallback.api_key is None


def test_env_default_provider() -> None:
    env = {
        "THREADLOG_UPSTREAM_BASE_URL": "http://127.0.0.1:9000/v1",
        "THREADLOG_UPSTREAM_API_KEY": "sk-test",
        "THREADLOG_UPSTREAM_TIMEOUT": "12.5",
        "THREADLOG_UPSTREAM_MAX_RETRIES": "0",
    }
    provider = ProviderRegistry.from_settings(env, None).resolve("whatever")
    assert provider == Provider(
        name="default",
        base_url="http://127.0.0.1:9000/v1",
        api_key="sk-test",
        timeout_s=12.5,
        max_retries=0,
    )


def test_env_default_alongside_file(tmp_path: Path) -> None:
    path = write(tmp_path, PROVIDERS_TOML.replace("default = true", "default = false"))
    env = {"OLLAMA_KEY": "k", "THREADLOG_UPSTREAM_BASE_URL": "http://up/v1"}
    registry = ProviderRegistry.from_settings(env, path)
    resolved = registry.resolve("gpt-4o")
    assert resolved is not None and resolved.name == "default"
    routed = registry.resolve("qwen2.5:7b")
    assert routed is not None and routed.name == "ollama"


def test_no_provider(tmp_path: Path) -> None:
    registry = ProviderRegistry.from_settings({}, None)
    assert registry.resolve("gpt-4o") is None
    message = registry.missing_provider_message("gpt-4o")
    assert "gpt-4o" in message
    assert "THREADLOG_UPSTREAM_BASE_URL" in message and "THREADLOG_PROVIDERS_FILE" in message
    only_ollama = ProviderRegistry.from_settings(
        {"OLLAMA_KEY": "k"},
        write(tmp_path, PROVIDERS_TOML.split('[[providers]]\nname = "vllm"')[0]),
    )
    assert only_ollama.resolve("gpt-4o") is None
    assert "llama3*" in only_ollama.missing_provider_message("gpt-4o")


@pytest.mark.parametrize(
    ("text", "env", "fragment"),
    [
        ("[[providers]]\nbase_url = 'http://x/v1'\n", {}, "providers[0].name"),
        ("[[providers]]\nname = 'a'\n", {}, "('a').base_url"),
        ("[[providers]]\nname = 'a'\nbase_url = 'ftp://x'\n", {}, "('a').base_url"),
        ("[[providers]]\nname = 'a'\nbase_url = 'http://x'\ntimeout_s = 'slow'\n", {}, "timeout_s"),
        ("[[providers]]\nname = 'a'\nbase_url = 'http://x'\nmax_retries = -1\n", {}, "max_retries"),
        ("[[providers]]\nname = 'a'\nbase_url = 'http://x'\nmodels = 'llama'\n", {}, "models"),
        ("[[providers]]\nname = 'a'\nbase_url = 'http://x'\ndefault = 'yes'\n", {}, "default"),
        ("[[providers]]\nname = 'a'\nbase_url = 'http://x'\nmodel = ['x']\n", {}, "model"),
        ("[[providers]]\nname = 'a'\nbase_url = 'http://x'\napi_key_env = 'K'\n", {}, "K is not set"),
        (
            "[[providers]]\nname = 'a'\nbase_url = 'http://x'\napi_key = 'k'\napi_key_env = 'K'\n",
            {"K": "v"},
            "not both",
        ),
        (
            "[[providers]]\nname = 'a'\nbase_url = 'http://x'\n[[providers]]\nname = 'a'\nbase_url = 'http://y'\n",
            {},
            "duplicate",
        ),
        (
            "[[providers]]\nname = 'a'\nbase_url = 'http://x'\ndefault = true\n"
            "[[providers]]\nname = 'b'\nbase_url = 'http://y'\ndefault = true\n",
            {},
            "providers[1].default",
        ),
        (
            "[[providers]]\nname = 'a'\nbase_url = 'http://x'\ndefault = true\n",
            {"THREADLOG_UPSTREAM_BASE_URL": "http://z/v1"},
            "keep only one",
        ),
        ("providers = 3\n", {}, "[[providers]]"),
        ("[[providers]\nname = 'a'\n", {}, "invalid TOML"),
    ],
)
def test_invalid_files_name_file_and_field(tmp_path: Path, text: str, env: dict[str, str], fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as caught:
        ProviderRegistry.from_settings(env, path)
    assert str(path) in str(caught.value)
    assert fragment in str(caught.value)


def test_missing_file_and_bad_env(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        ProviderRegistry.from_settings({}, tmp_path / "absent.toml")
    with pytest.raises(ValueError, match="THREADLOG_UPSTREAM_TIMEOUT"):
        ProviderRegistry.from_settings({"THREADLOG_UPSTREAM_TIMEOUT": "soon"}, None)
    with pytest.raises(ValueError, match="THREADLOG_UPSTREAM_MAX_RETRIES"):
        ProviderRegistry.from_settings({"THREADLOG_UPSTREAM_MAX_RETRIES": "-2"}, None)
    with pytest.raises(ValueError, match="THREADLOG_UPSTREAM_BASE_URL"):
        ProviderRegistry.from_settings({"THREADLOG_UPSTREAM_BASE_URL": "localhost:9000"}, None)


@pytest.mark.asyncio
async def test_registry_aclose_closes_clients(upstream: RunningUpstream) -> None:
    env = {
        "THREADLOG_UPSTREAM_BASE_URL": upstream.base_url,
        "THREADLOG_UPSTREAM_API_KEY": "provider-secret",
    }
    registry = ProviderRegistry.from_settings(env, None)
    provider = registry.resolve(MODEL)
    assert provider is not None
    assert text_of(await collect(provider, request("say: twice"))) == "twice"
    assert text_of(await collect(provider, request("say: twice"))) == "twice"
    await registry.aclose()
    assert text_of(await collect(provider, request("say: after close"))) == "after close"
    await registry.aclose()
