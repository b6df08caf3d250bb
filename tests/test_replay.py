"""Replay: random API traffic folds to views that a rebuild of the log reproduces exactly.

`threadlog replay --verify` must pass after any sequence of calls, must name an object
whose view row was tampered with, `threadlog replay` must refuse to run beside a live
server, and a rebuild must restore the views a restarted server then serves unchanged.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import OpenAI

from projections import build_projector
from projections.rebuild import rebuild, verify
from tests.serverproc import ServerProcess, run_cli

pytestmark = [pytest.mark.sqlite_only, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def dump_views(db_path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT kind, id, parent_id, run_id, ordinal, doc FROM views ORDER BY kind, id").fetchall()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(data_dir=tmp_path_factory.mktemp("replay") / "data").start()
    try:
        yield proc
    finally:
        proc.stop()


# -- random traffic ------------------------------------------------------------------------------------

text = st.text(st.characters(codec="utf-8"), max_size=12)  # any encodable text, no lone surrogates
metadata = st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=8), text, max_size=3)
index = st.integers(min_value=0, max_value=1_000)

operation = st.one_of(
    st.tuples(st.just("create_assistant"), text, metadata),
    st.tuples(st.just("update_assistant"), index, text, metadata),
    st.tuples(st.just("delete_assistant"), index),
    st.tuples(st.just("create_thread"), metadata, st.lists(text, max_size=3)),
    st.tuples(st.just("update_thread"), index, metadata),
    st.tuples(st.just("delete_thread"), index),
    st.tuples(st.just("create_message"), index, text, st.sampled_from(["user", "assistant"]), metadata),
    st.tuples(st.just("update_message"), index, metadata),
    st.tuples(st.just("delete_message"), index),
    st.tuples(st.just("list"), st.sampled_from(["assistants", "messages"]), st.integers(1, 5)),
)


@dataclass
class Model:
    """What the API should show, kept alongside the calls."""

    assistants: dict[str, dict[str, Any]] = field(default_factory=dict)
    threads: dict[str, dict[str, str]] = field(default_factory=dict)
    messages: dict[str, list[tuple[str, str, str, dict[str, str]]]] = field(default_factory=dict)  # thread -> msgs
    deleted: list[str] = field(default_factory=list)

    def all_messages(self) -> list[tuple[str, str]]:
        return [(t, m[0]) for t, msgs in self.messages.items() for m in msgs]


def pick(items: list[Any], i: int) -> Any:
    return items[i % len(items)] if items else None


def apply(sdk: OpenAI, model: Model, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "create_assistant":
        created = sdk.beta.assistants.create(model="gpt-4o", name=op[1], metadata=op[2])
        model.assistants[created.id] = {"name": op[1], "metadata": op[2]}
    elif kind == "update_assistant":
        target = pick(list(model.assistants), op[1])
        if target:
            sdk.beta.assistants.update(target, name=op[2], metadata=op[3])
            model.assistants[target] = {"name": op[2], "metadata": op[3]}
    elif kind == "delete_assistant":
        target = pick(list(model.assistants), op[1])
        if target:
            assert sdk.beta.assistants.delete(target).deleted is True
            del model.assistants[target]
            model.deleted.append(f"/assistants/{target}")
    elif kind == "create_thread":
        thread = sdk.beta.threads.create(metadata=op[1], messages=[{"role": "user", "content": t} for t in op[2]])
        model.threads[thread.id] = op[1]
        listed = sdk.beta.threads.messages.list(thread.id, order="asc", limit=100).data
        model.messages[thread.id] = [(m.id, "user", t, {}) for m, t in zip(listed, op[2], strict=True)]
    elif kind == "update_thread":
        target = pick(list(model.threads), op[1])
        if target:
            sdk.beta.threads.update(target, metadata=op[2])
            model.threads[target] = op[2]
    elif kind == "delete_thread":
        target = pick(list(model.threads), op[1])
        if target:
            sdk.beta.threads.delete(target)
            del model.threads[target]
            del model.messages[target]
            model.deleted.append(f"/threads/{target}")
    elif kind == "create_message":
        target = pick(list(model.threads), op[1])
        if target:
            message = sdk.beta.threads.messages.create(target, role=op[3], content=op[2], metadata=op[4])
            model.messages[target].append((message.id, op[3], op[2], op[4]))
    elif kind == "update_message":
        chosen = pick(model.all_messages(), op[1])
        if chosen:
            thread_id, message_id = chosen
            sdk.beta.threads.messages.update(message_id, thread_id=thread_id, metadata=op[2])
            msgs = model.messages[thread_id]
            msgs[:] = [(i, r, t, op[2] if i == message_id else md) for i, r, t, md in msgs]
    elif kind == "delete_message":
        chosen = pick(model.all_messages(), op[1])
        if chosen:
            thread_id, message_id = chosen
            sdk.beta.threads.messages.delete(message_id, thread_id=thread_id)
            model.messages[thread_id] = [m for m in model.messages[thread_id] if m[0] != message_id]
            model.deleted.append(f"/threads/{thread_id}/messages/{message_id}")
    elif kind == "list":
        if op[1] == "assistants":
            ids = [a.id for a in sdk.beta.assistants.list(limit=op[2], order="asc")]
            assert [i for i in ids if i in model.assistants] == list(model.assistants)
        else:
            target = pick(list(model.threads), op[2])
            if target:
                ids = [m.id for m in sdk.beta.threads.messages.list(target, limit=op[2], order="asc")]
                assert ids == [m[0] for m in model.messages[target]]


def check_against_model(server: ServerProcess, model: Model) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        for assistant_id, expected in model.assistants.items():
            body = http.get(f"/assistants/{assistant_id}").json()
            assert (body["name"], body["metadata"]) == (expected["name"], expected["metadata"])
        for thread_id, thread_metadata in model.threads.items():
            assert http.get(f"/threads/{thread_id}").json()["metadata"] == thread_metadata
            listed = http.get(f"/threads/{thread_id}/messages", params={"order": "asc", "limit": 100}).json()["data"]
            got = [(m["id"], m["role"], m["content"][0]["text"]["value"], m["metadata"]) for m in listed]
            assert got == model.messages[thread_id]
        for path in model.deleted:
            assert http.get(path).status_code == 404, path


@settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ops=st.lists(operation, min_size=1, max_size=18))
def test_random_traffic_replays_to_the_same_views(live: ServerProcess, ops: list[tuple[Any, ...]]) -> None:
    sdk = OpenAI(base_url=live.base_url, api_key="k", max_retries=0, timeout=30)
    model = Model()
    for op in ops:
        apply(sdk, model, op)
    check_against_model(live, model)
    report = asyncio.run(verify(live.data_dir / "threadlog.sqlite", build_projector()))
    assert report.difference is None, report.difference
    assert report.position == httpx.get(f"{live.root_url}/healthz").json()["head"]


def test_cli_verify_after_random_traffic(live: ServerProcess) -> None:
    """The command-line check over the whole log the random traffic left (and some more)."""
    sdk = OpenAI(base_url=live.base_url, api_key="k", max_retries=0, timeout=30)
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": "hello"}], metadata={"k": "v"})
    sdk.beta.threads.messages.create(thread.id, role="assistant", content=[{"type": "text", "text": "hi"}])
    result = run_cli("replay", "--data-dir", str(live.data_dir), "--verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    head = httpx.get(f"{live.root_url}/healthz").json()["head"]
    assert f"up to sequence {head}" in result.stdout


# -- tampering, the lock, rebuilding -------------------------------------------------------------------


def snapshot_objects(server: ServerProcess, paths: list[str]) -> dict[str, Any]:
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        out: dict[str, Any] = {}
        for path in paths:
            response = http.get(path)
            assert response.status_code == 200, path
            out[path] = response.json()
        out["/assistants?order=asc"] = http.get("/assistants", params={"order": "asc", "limit": 100}).json()
        return out


def test_tamper_lock_rebuild_and_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    db_path = data_dir / "threadlog.sqlite"
    server = ServerProcess(data_dir=data_dir).start()
    try:
        sdk = OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=30)
        victim = sdk.beta.assistants.create(model="gpt-4o", name="victim", metadata={"a": "1"})
        other = sdk.beta.assistants.create(model="gpt-4o", name="bystander")
        sdk.beta.assistants.update(other.id, instructions="changed")
        gone = sdk.beta.assistants.create(model="gpt-4o", name="gone")
        sdk.beta.assistants.delete(gone.id)
        thread = sdk.beta.threads.create(messages=[{"role": "user", "content": f"m{i}"} for i in range(3)])
        message = sdk.beta.threads.messages.create(thread.id, role="user", content="tagged", metadata={"t": "1"})
        sdk.beta.threads.messages.update(message.id, thread_id=thread.id, metadata={"t": "2"})
        paths = [
            f"/assistants/{victim.id}",
            f"/assistants/{other.id}",
            f"/threads/{thread.id}",
            f"/threads/{thread.id}/messages?order=asc",
            f"/threads/{thread.id}/messages/{message.id}",
        ]
        before = snapshot_objects(server, paths)

        ok = run_cli("replay", "--data-dir", str(data_dir), "--verify")
        assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr

        with sqlite3.connect(db_path, timeout=10) as conn:
            changed = conn.execute(
                "UPDATE views SET doc = json_set(doc, '$.name', 'tampered') WHERE kind = 'assistant' AND id = ?",
                (victim.id,),
            ).rowcount
        assert changed == 1
        mismatch = run_cli("replay", "--data-dir", str(data_dir), "--verify")
        assert mismatch.returncode == 1, mismatch.stdout + mismatch.stderr
        assert victim.id in mismatch.stdout and "name" in mismatch.stdout
        assert "OK: rebuilt views equal" not in mismatch.stdout  # (an id may contain "OK")

        refused = run_cli("replay", "--data-dir", str(data_dir))
        assert refused.returncode != 0
        assert "running" in refused.stderr
        # Refused means untouched: the tampered row is still there.
        with sqlite3.connect(db_path) as conn:
            (doc,) = conn.execute("SELECT json_extract(doc, '$.name') FROM views WHERE id = ?", (victim.id,)).fetchone()
        assert doc == "tampered"
    finally:
        server.stop()

    rebuilt = run_cli("replay", "--data-dir", str(data_dir))
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "rebuilt" in rebuilt.stdout
    first = dump_views(db_path)
    assert run_cli("replay", "--data-dir", str(data_dir), "--verify").returncode == 0

    # Determinism: a second rebuild writes exactly the same rows.
    report = asyncio.run(rebuild(db_path, build_projector()))
    assert report.difference is None and report.views == len(first)
    assert dump_views(db_path) == first
    assert {row[1] for row in first} >= {victim.id, other.id, thread.id, message.id}
    assert gone.id not in {row[1] for row in first}

    restarted = ServerProcess(data_dir=data_dir).start()
    try:
        assert snapshot_objects(restarted, paths) == before
        assert before[f"/assistants/{victim.id}"]["name"] == "victim"
        # The restarted server keeps writing on top of the rebuilt views.
        sdk = OpenAI(base_url=restarted.base_url, api_key="k", max_retries=0, timeout=30)
        assert sdk.beta.assistants.update(victim.id, name="again").name == "again"
    finally:
        restarted.stop()
    final = run_cli("replay", "--data-dir", str(data_dir), "--verify")
    assert final.returncode == 0 and "OK" in final.stdout, final.stdout


def test_rebuild_matches_the_live_fold(live: ServerProcess) -> None:
    """Views the server wrote incrementally (over all the traffic above) equal, row for row, a rebuild.

    Runs last in this module: it stops the module's server to rebuild its data dir.
    """
    sdk = OpenAI(base_url=live.base_url, api_key="k", max_retries=0, timeout=30)
    for i in range(3):
        assistant = sdk.beta.assistants.create(model="m", name=f"ü{i}", metadata={"i": str(i)})
        if i % 2:
            sdk.beta.assistants.update(assistant.id, metadata={"odd": "yes"}, temperature=0.5)
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": "x"}])
    for i in range(3):
        message = sdk.beta.threads.messages.create(thread.id, role="user", content=f"n{i}")
        if i == 1:
            sdk.beta.threads.messages.delete(message.id, thread_id=thread.id)
    live.stop()
    db_path = live.data_dir / "threadlog.sqlite"
    live_rows = dump_views(db_path)
    assert len(live_rows) >= 8
    report = asyncio.run(rebuild(db_path, build_projector()))
    assert report.views == len(live_rows)
    assert dump_views(db_path) == live_rows
