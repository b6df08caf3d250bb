"""Files, vector stores and file_search through the real SDK, real server, real LanceDB."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from tests.runs_fixtures import MODEL, wait_for, wait_run

pytest.importorskip("lancedb")

ZEBRA = b"Zebras are striped horses native to the savannas of East Africa. They live in herds."
PYTHON = b"# Python\nPython is a programming language known for list comprehensions and generators."
SECRET = b"The secret launch code for the rocket is PINEAPPLE-42. Keep it safe."


def _upload(sdk: OpenAI, name: str, data: bytes) -> Any:
    return sdk.files.create(file=(name, io.BytesIO(data)), purpose="assistants")


def _store_ready(sdk: OpenAI, store_id: str) -> Any:
    def check() -> Any:
        store = sdk.vector_stores.retrieve(store_id)
        return store if store.file_counts.in_progress == 0 else None

    return wait_for(check, timeout=120, interval=0.2)


@pytest.fixture(scope="module")
def store(sdk: OpenAI) -> Any:
    zebra = _upload(sdk, "zebra.txt", ZEBRA)
    python = _upload(sdk, "python.md", PYTHON)
    created = sdk.vector_stores.create(name="kb", file_ids=[zebra.id, python.id], metadata={"team": "x"})
    assert created.status == "in_progress"
    ready = _store_ready(sdk, created.id)
    return {"store": ready, "zebra": zebra, "python": python}


def test_files_roundtrip_and_errors(sdk: OpenAI, run_server: Any) -> None:
    uploaded = _upload(sdk, "notes.txt", b"hello world")
    assert uploaded.object == "file" and uploaded.bytes == 11 and uploaded.filename == "notes.txt"
    assert uploaded.purpose == "assistants" and uploaded.id.startswith("file-")
    assert sdk.files.retrieve(uploaded.id).bytes == 11
    assert sdk.files.content(uploaded.id).read() == b"hello world"
    assert uploaded.id in [f.id for f in sdk.files.list(purpose="assistants")]
    with pytest.raises(BadRequestError):
        sdk.files.create(file=("x.txt", io.BytesIO(b"x")), purpose="not-a-purpose")  # type: ignore[arg-type]
    deleted = sdk.files.delete(uploaded.id)
    assert deleted.deleted is True
    with pytest.raises(NotFoundError):
        sdk.files.retrieve(uploaded.id)


def test_store_counts_usage_and_search(sdk: OpenAI, store: dict[str, Any]) -> None:
    ready = store["store"]
    assert ready.status == "completed"
    assert ready.file_counts.completed == 2 and ready.file_counts.total == 2
    assert ready.usage_bytes > 0
    assert ready.metadata == {"team": "x"}
    files = sdk.vector_stores.files.list(ready.id)
    assert {f.id for f in files.data} == {store["zebra"].id, store["python"].id}
    assert all(f.status == "completed" and f.object == "vector_store.file" for f in files.data)
    assert sdk.vector_stores.files.list(ready.id, filter="failed").data == []

    results = list(sdk.vector_stores.search(ready.id, query="Where do zebras live?"))
    assert results[0].file_id == store["zebra"].id
    assert results[0].filename == "zebra.txt"
    assert "savannas" in results[0].content[0].text
    assert all(0.0 <= r.score <= 1.0 for r in results)
    capped = list(sdk.vector_stores.search(ready.id, query="zebra", max_num_results=1))
    assert len(capped) == 1
    strict = list(
        sdk.vector_stores.search(ready.id, query="zebra", ranking_options={"score_threshold": 0.999999})
    )
    assert len(strict) < len(results)


def test_unparseable_file_fails_alone(sdk: OpenAI) -> None:
    good = _upload(sdk, "good.txt", b"Octopuses have three hearts and blue blood.")
    binary = _upload(sdk, "blob.bin", bytes(range(256)) * 64)
    empty = _upload(sdk, "empty.txt", b"")
    created = sdk.vector_stores.create(name="mixed", file_ids=[good.id, binary.id, empty.id])
    ready = _store_ready(sdk, created.id)
    assert ready.file_counts.completed == 1 and ready.file_counts.failed == 2
    by_id = {f.id: f for f in sdk.vector_stores.files.list(created.id).data}
    assert by_id[binary.id].status == "failed"
    assert by_id[binary.id].last_error is not None and by_id[binary.id].last_error.code == "unsupported_file"
    assert by_id[empty.id].last_error is not None and by_id[empty.id].last_error.code == "invalid_file"
    hits = list(sdk.vector_stores.search(created.id, query="octopus hearts"))
    assert hits and hits[0].file_id == good.id


def test_deleting_file_removes_its_chunks(sdk: OpenAI) -> None:
    keep = _upload(sdk, "keep.txt", b"Capybaras are the largest rodents in the world.")
    gone = _upload(sdk, "gone.txt", b"Axolotls can regenerate their limbs and hearts.")
    created = sdk.vector_stores.create(name="deletions", file_ids=[keep.id, gone.id])
    _store_ready(sdk, created.id)
    assert any(h.file_id == gone.id for h in sdk.vector_stores.search(created.id, query="axolotl regenerate"))
    sdk.vector_stores.files.delete(gone.id, vector_store_id=created.id)
    assert all(h.file_id != gone.id for h in sdk.vector_stores.search(created.id, query="axolotl regenerate"))
    sdk.files.delete(keep.id)  # deleting the file itself takes it out of every store
    assert sdk.vector_stores.files.list(created.id).data == []
    assert list(sdk.vector_stores.search(created.id, query="capybara rodent")) == []
    assert sdk.vector_stores.delete(created.id).deleted is True
    with pytest.raises(NotFoundError):
        sdk.vector_stores.retrieve(created.id)


def test_batches_and_bad_input(sdk: OpenAI, run_server: Any) -> None:
    one = _upload(sdk, "one.txt", b"Alpha centauri is the closest star system.")
    two = _upload(sdk, "two.txt", b"Betelgeuse is a red supergiant in Orion.")
    created = sdk.vector_stores.create(name="batches")
    batch = sdk.vector_stores.file_batches.create_and_poll(vector_store_id=created.id, file_ids=[one.id, two.id])
    assert batch.object == "vector_store.files_batch"
    assert batch.status == "completed" and batch.file_counts.completed == 2
    listed = sdk.vector_stores.file_batches.list_files(batch.id, vector_store_id=created.id)
    assert {f.id for f in listed.data} == {one.id, two.id}
    head = httpx.get(f"{run_server.root_url}/healthz").json()["head"]
    with pytest.raises(BadRequestError):
        sdk.vector_stores.create(
            name="bad",
            chunking_strategy={"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 80}},
        )
    with pytest.raises(BadRequestError):
        sdk.vector_stores.create(name="bad", file_ids=["file-doesnotexist"])
    assert httpx.get(f"{run_server.root_url}/healthz").json()["head"] == head


def test_run_with_file_search_cites_files(sdk: OpenAI, store: dict[str, Any]) -> None:
    ready = store["store"]
    helper = sdk.beta.assistants.create(
        model=MODEL,
        tools=[{"type": "file_search"}],
        tool_resources={"file_search": {"vector_store_ids": [ready.id]}},
    )
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": "search: zebra herds savanna"}])
    run = sdk.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=helper.id)
    assert run.status == "completed", run.last_error
    assert run.usage is not None and run.usage.total_tokens > 0

    steps = sdk.beta.threads.runs.steps.list(run.id, thread_id=thread.id, order="asc")
    call = steps.data[0].step_details.tool_calls[0]  # type: ignore[union-attr]
    assert call.type == "file_search"
    assert call.file_search.ranking_options.ranker == "auto"
    assert call.file_search.results[0].file_id == store["zebra"].id
    assert call.file_search.results[0].content is None  # only with include[]

    included = sdk.beta.threads.runs.steps.list(
        run.id,
        thread_id=thread.id,
        order="asc",
        include=["step_details.tool_calls[*].file_search.results[*].content"],
    )
    first = included.data[0].step_details.tool_calls[0].file_search.results[0]  # type: ignore[union-attr]
    assert first.file_name == "zebra.txt" and 0 < first.score <= 1
    assert first.content is not None and "savannas" in first.content[0].text

    message = sdk.beta.threads.messages.list(thread.id, limit=1).data[0]
    text = message.content[0].text  # type: ignore[union-attr]
    annotation = text.annotations[0]
    assert annotation.type == "file_citation"
    assert annotation.file_citation.file_id == store["zebra"].id  # type: ignore[union-attr]
    assert text.value[annotation.start_index : annotation.end_index] == annotation.text
    assert annotation.text.startswith("【") and "†zebra.txt】" in annotation.text


def test_attachment_creates_thread_store(sdk: OpenAI) -> None:
    secret = _upload(sdk, "secret.txt", SECRET)
    helper = sdk.beta.assistants.create(model=MODEL, tools=[{"type": "file_search"}])
    thread = sdk.beta.threads.create(
        messages=[
            {
                "role": "user",
                "content": "search: rocket launch code",
                "attachments": [{"file_id": secret.id, "tools": [{"type": "file_search"}]}],
            }
        ]
    )
    assert thread.tool_resources is not None and thread.tool_resources.file_search is not None
    store_ids = thread.tool_resources.file_search.vector_store_ids
    assert store_ids and len(store_ids) == 1
    run = sdk.beta.threads.runs.create(thread_id=thread.id, assistant_id=helper.id)
    done = wait_run(sdk, thread.id, run.id, timeout=120)
    assert done.status == "completed", done.last_error
    message = sdk.beta.threads.messages.list(thread.id, limit=1).data[0]
    text = message.content[0].text  # type: ignore[union-attr]
    assert "†secret.txt】" in text.value
    assert text.annotations[0].file_citation.file_id == secret.id  # type: ignore[union-attr]
