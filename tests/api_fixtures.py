"""What the `/v1` resource tests share: one server process per module, the SDK and a raw HTTP
client on it, and checks of OpenAI's error envelope."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.serverproc import ServerProcess

__all__ = ["ERROR_KEYS", "assert_error", "cases", "http", "log_head", "post_body", "sdk", "shared"]

ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(data_dir=tmp_path_factory.mktemp("api") / "data").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def sdk(shared: ServerProcess) -> OpenAI:
    return OpenAI(base_url=shared.base_url, api_key="test-key", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def http(shared: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared.base_url, timeout=30) as client:
        yield client


def log_head(server: ServerProcess) -> int:
    """The event log's head: a refused request must leave it where it was."""
    response = httpx.get(f"{server.root_url}/healthz", timeout=10)
    assert response.status_code == 200
    return int(response.json()["head"])


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == ERROR_KEYS
    assert error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    return dict(error)


def cases(table: list[tuple[str, Any, str | None]]) -> list[Any]:
    return [pytest.param(body, param, id=name) for name, body, param in table]


def post_body(http: httpx.Client, path: str, body: bytes | dict[str, Any]) -> httpx.Response:
    """POST a JSON body, or raw bytes sent as JSON (for malformed-JSON cases)."""
    if isinstance(body, bytes):
        return http.post(path, content=body, headers={"content-type": "application/json"})
    return http.post(path, json=body)
