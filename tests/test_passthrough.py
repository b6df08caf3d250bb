"""One `base_url` for the whole client: `models`, `chat.completions` (plain and streamed) and
`embeddings` through the openai SDK, passed to the routed provider under the same keys.

A real server process and the fake upstream; the providers file routes one model to a second
provider that is down, so the model list shows what each provider contributes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from server.fake_upstream import DEFAULT_MODELS, RunningUpstream, fake_embedding
from tests.runs_fixtures import MODEL, upstream_env
from tests.serverproc import ServerProcess, free_port

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KEY = "sk-passthrough-key"


@pytest.fixture(scope="module")
def server(upstream: RunningUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("passthrough")
    providers = root / "providers.toml"
    providers.write_text(
        f'[[providers]]\nname = "offline"\nbase_url = "http://127.0.0.1:{free_port()}/v1"\n'
        'models = ["local-llama", "qwen*"]\n'
    )
    proc = ServerProcess(
        data_dir=root / "data",
        env=upstream_env(upstream, THREADLOG_API_KEYS=KEY, THREADLOG_PROVIDERS_FILE=str(providers)),
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=30)


def test_models_lists_every_provider_and_the_routed_names(client: OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(DEFAULT_MODELS) <= set(models)  # the default provider's own /v1/models
    assert models["local-llama"].owned_by == "offline"  # routed by name; that provider is down
    assert "qwen*" not in models  # a glob is no model name
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert missing.value.code == "model_not_found"


def test_chat_completions_plain_and_streamed(client: OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "say: hello there"}])
    assert plain.choices[0].message.content == "hello there"
    assert plain.usage is not None and plain.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "say: one two three four"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 4  # relayed as chunks
    assert chunks[-1].usage is not None


def test_a_stream_is_relayed_byte_for_byte(server: ServerProcess, upstream: RunningUpstream) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "say: a b c"}], "stream": True}
    with httpx.Client(timeout=30) as http:
        direct = http.post(f"{upstream.base_url}/chat/completions", json=body)
        relayed = http.post(
            f"{server.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
        )
    assert relayed.headers["content-type"] == direct.headers["content-type"]

    def shape(raw: str) -> list[str]:  # each completion has its own id and timestamp
        import re

        return [re.sub(r'"(id|created)":("[^"]*"|\d+)', "", line) for line in raw.split("\n")]

    assert shape(relayed.text) == shape(direct.text)
    assert relayed.text.endswith("data: [DONE]\n\n")


def test_provider_errors_come_back_in_openais_envelope(client: OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "fail: 429 1\nsay: x"}])
    assert limited.value.status_code == 429
    body = limited.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert body["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.APIStatusError) as down:
        client.chat.completions.create(model="local-llama", messages=[{"role": "user", "content": "hi"}])
    assert down.value.status_code == 502
    assert isinstance(down.value.body, dict) and "offline" in down.value.body["message"]


def test_embeddings(client: OpenAI) -> None:
    result = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"], dimensions=8)
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[0].embedding == pytest.approx(fake_embedding("alpha", 8))
    assert result.data[1].embedding == pytest.approx(fake_embedding("beta", 8))
    assert result.usage.prompt_tokens == 2


def test_same_keys_and_bad_input(server: ServerProcess, tmp_path: Path) -> None:
    with httpx.Client(timeout=30) as http:
        unauthorized = http.get(f"{server.base_url}/models")
        assert unauthorized.status_code == 401
        for payload in (b"{not json", b"[1]", b'{"messages": []}'):
            bad = http.post(
                f"{server.base_url}/chat/completions",
                content=payload,
                headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            )
            assert bad.status_code == 400, payload
            assert set(bad.json()["error"]) == {"message", "type", "param", "code"}
