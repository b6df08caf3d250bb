"""Bearer keys: THREADLOG_API_KEYS guards /v1, /healthz stays open, and no keys means loopback only."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from server.config import ConfigError, Settings
from tests.serverproc import ServerProcess, free_port

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("auth") / "data"
    proc = ServerProcess(data_dir=data_dir, env={"THREADLOG_API_KEYS": "k1, k2"}).start()
    try:
        yield proc
    finally:
        proc.stop()


def head(server: ServerProcess) -> int:
    return int(httpx.get(f"{server.root_url}/healthz", timeout=10).json()["head"])


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_api_key"
    assert error["param"] is None
    assert "API key" in error["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer k1k2"},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic k1"},
        {"Authorization": "k1"},
    ],
    ids=["none", "wrong", "concatenated", "empty", "basic", "no-scheme"],
)
def test_missing_or_wrong_key_is_401(keyed: ServerProcess, headers: dict[str, str]) -> None:
    before = head(keyed)
    with httpx.Client(base_url=keyed.base_url, headers=headers, timeout=10) as http:
        assert_401(http.get("/assistants"))
        assert_401(http.post("/assistants", json={"model": "m"}))
        assert_401(http.post("/threads", json={}))
        assert_401(http.get("/assistants/asst_whatever"))
        assert_401(http.get("/no/such/route/under/v1"))
    assert head(keyed) == before


def test_sdk_with_wrong_key_raises_authentication_error(keyed: ServerProcess) -> None:
    sdk = OpenAI(base_url=keyed.base_url, api_key="nope", max_retries=0, timeout=10)
    with pytest.raises(openai.AuthenticationError) as info:
        sdk.beta.assistants.list()
    assert info.value.status_code == 401
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "invalid_api_key"


@pytest.mark.parametrize("key", ["k1", "k2"])
def test_each_configured_key_works(keyed: ServerProcess, key: str) -> None:
    sdk = OpenAI(base_url=keyed.base_url, api_key=key, max_retries=0, timeout=10)
    assistant = sdk.beta.assistants.create(model="gpt-4o", name=f"made with {key}")
    assert sdk.beta.assistants.retrieve(assistant.id).name == f"made with {key}"
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": key}])
    assert [m.content[0].text.value for m in sdk.beta.threads.messages.list(thread.id)] == [key]  # type: ignore[union-attr]


def test_healthz_is_open(keyed: ServerProcess) -> None:
    response = httpx.get(f"{keyed.root_url}/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert isinstance(response.json()["head"], int)


def test_public_bind_without_keys_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "THREADLOG_API_KEYS"}
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--host", "0.0.0.0", "--port", str(port),
         "--data-dir", str(tmp_path / "data")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode != 0
    assert "THREADLOG_API_KEYS" in result.stderr + result.stdout
    assert not (tmp_path / "data" / "threadlog.sqlite").exists()


def test_public_bind_with_keys_passes_the_check(tmp_path: Path) -> None:
    settings = Settings.from_env({"THREADLOG_API_KEYS": "k1,k2"}, host="0.0.0.0", data_dir=tmp_path)
    assert settings.api_keys == frozenset({"k1", "k2"})
    with pytest.raises(ConfigError, match="THREADLOG_API_KEYS"):
        Settings.from_env({}, host="0.0.0.0", data_dir=tmp_path)
    assert Settings.from_env({}, host="::1", data_dir=tmp_path).api_keys == frozenset()
