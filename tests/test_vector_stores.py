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
    strict = list(sdk.vector_stores.search(ready.id, query="zebra", ranking_options={"score_threshold": 0.999999}))
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


# ---------------------------------------------------------------- issue 4 audit


def _files_by_id(sdk: OpenAI, store_id: str) -> dict[str, Any]:
    return {f.id: f for f in sdk.vector_stores.files.list(store_id, limit=100).data}


def test_every_format_is_parsed_and_found(sdk: OpenAI) -> None:
    from tests.test_retrieval import encrypt_pdf, make_docx, make_pdf

    docs = {
        "page.html": (
            b"<html><head><title>T</title><script>var hidden='scriptword';</script></head>"
            b"<body><p>The <b>quokka</b> smiles on Rottnest island.</p></body></html>",
            "quokka Rottnest",
        ),
        "data.json": (b'{"animal": "narwhal", "facts": ["tusk is a tooth", "lives in the Arctic"]}', "narwhal tusk"),
        "table.csv": (b"city,dish\nNaples,margherita pizza\nLyon,quenelles de brochet\n", "quenelles Lyon"),
        "code.py": (b'def pangolin_scales():\n    """Pangolins roll into a ball of scales."""\n', "pangolin scales"),
        "notes.md": (b"# Tardigrades\n\nTardigrades survive the vacuum of space.", "tardigrade vacuum"),
        "paper.pdf": (make_pdf(["Okapis are relatives of the giraffe.", "They live in the Congo."]), "okapi giraffe"),
        "memo.docx": (make_docx(["Wombats produce cube-shaped droppings."], [["marsupial", "wombat"]]), "wombat cube"),
    }
    locked = _upload(sdk, "locked.pdf", encrypt_pdf(make_pdf(["secret aardvark text"]), "pw"))
    uploaded = {name: _upload(sdk, name, data) for name, (data, _) in docs.items()}
    created = sdk.vector_stores.create(name="formats", file_ids=[f.id for f in uploaded.values()] + [locked.id])
    ready = _store_ready(sdk, created.id)
    assert ready.file_counts.completed == len(docs) and ready.file_counts.failed == 1
    failed = _files_by_id(sdk, created.id)[locked.id]
    assert failed.status == "failed" and failed.last_error is not None
    assert failed.last_error.code == "invalid_file" and "encrypted" in failed.last_error.message
    for name, (_, query) in docs.items():
        hits = list(sdk.vector_stores.search(created.id, query=query, max_num_results=3))
        assert hits[0].filename == name, (name, [h.filename for h in hits])
    assert "scriptword" not in sdk.vector_stores.files.content(uploaded["page.html"].id, vector_store_id=created.id)
    html = list(sdk.vector_stores.search(created.id, query="scriptword", max_num_results=50))
    assert all("scriptword" not in h.content[0].text for h in html)


def test_chunking_bounds_and_auto_fit_the_embedder(sdk: OpenAI) -> None:
    from server.retrieval import count_tokens

    for static in (
        {"max_chunk_size_tokens": 99, "chunk_overlap_tokens": 0},
        {"max_chunk_size_tokens": 4097, "chunk_overlap_tokens": 0},
        {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 401},
        {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": -1},
    ):
        with pytest.raises(BadRequestError):
            sdk.vector_stores.create(name="bad", chunking_strategy={"type": "static", "static": static})
    text = " ".join(f"Sentence {i} is about the migration of arctic terns and their routes." for i in range(60))
    doc = _upload(sdk, "terns.txt", text.encode())
    store = sdk.vector_stores.create(name="chunks")
    static = {"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 50}}
    vsf = sdk.vector_stores.files.create(vector_store_id=store.id, file_id=doc.id, chunking_strategy=static)
    assert vsf.chunking_strategy.static.max_chunk_size_tokens == 100  # type: ignore[union-attr]
    assert vsf.chunking_strategy.static.chunk_overlap_tokens == 50  # type: ignore[union-attr]
    auto_store = sdk.vector_stores.create(name="auto", file_ids=[doc.id])
    auto = sdk.vector_stores.files.retrieve(doc.id, vector_store_id=auto_store.id)
    # auto fits all-MiniLM-L6-v2's 256-piece window ([CLS] + 254 + [SEP]): every token is embedded.
    assert auto.chunking_strategy.static.max_chunk_size_tokens == 254  # type: ignore[union-attr]
    assert auto.chunking_strategy.static.chunk_overlap_tokens == 64  # type: ignore[union-attr]
    _store_ready(sdk, store.id)
    _store_ready(sdk, auto_store.id)
    small = list(sdk.vector_stores.search(store.id, query="arctic terns", max_num_results=50))
    total = count_tokens(text)
    assert len(small) >= (total - 100) // 50  # step = size - overlap
    assert all(count_tokens(h.content[0].text) <= 100 for h in small)
    big = list(sdk.vector_stores.search(auto_store.id, query="arctic terns", max_num_results=50))
    assert all(count_tokens(h.content[0].text) <= 254 for h in big) and len(big) < len(small)


def test_search_filters_threshold_and_bounds(sdk: OpenAI) -> None:
    red = _upload(sdk, "red.txt", b"Red pandas eat bamboo in the Himalayan forests.")
    blue = _upload(sdk, "blue.txt", b"Blue whales eat krill in the Southern Ocean.")
    store = sdk.vector_stores.create(name="filters")
    sdk.vector_stores.files.create(
        vector_store_id=store.id, file_id=red.id, attributes={"color": "red", "year": 2020, "public": True}
    )
    sdk.vector_stores.files.create(
        vector_store_id=store.id, file_id=blue.id, attributes={"color": "blue", "year": 2024, "public": False}
    )
    _store_ready(sdk, store.id)

    def ids(**kwargs: Any) -> list[str]:
        return [h.file_id for h in sdk.vector_stores.search(store.id, query="what do animals eat", **kwargs)]

    assert set(ids()) == {red.id, blue.id}
    assert ids(filters={"type": "eq", "key": "color", "value": "blue"}) == [blue.id]
    assert ids(filters={"type": "gte", "key": "year", "value": 2021}) == [blue.id]
    assert ids(filters={"type": "eq", "key": "public", "value": True}) == [red.id]
    either = {
        "type": "or",
        "filters": [{"type": "lt", "key": "year", "value": 2021}, {"type": "eq", "key": "x", "value": 1}],
    }
    assert ids(filters=either) == [red.id]
    hit = next(
        iter(sdk.vector_stores.search(store.id, query="krill", filters={"type": "eq", "key": "color", "value": "blue"}))
    )
    assert hit.attributes == {"color": "blue", "year": 2024, "public": False}
    assert ids(max_num_results=1) and len(ids(max_num_results=1)) == 1
    krill = list(sdk.vector_stores.search(store.id, query="krill"))
    assert [h.file_id for h in krill] == [blue.id, red.id]  # red: no BM25 match, vector rank 2 only
    assert krill[0].score == 1.0 and 0 < krill[1].score < 0.7
    cut = list(sdk.vector_stores.search(store.id, query="krill", ranking_options={"score_threshold": 0.7}))
    assert [h.file_id for h in cut] == [blue.id]
    for bad in ({"max_num_results": 0}, {"max_num_results": 51}, {"ranking_options": {"score_threshold": 1.5}}):
        with pytest.raises(BadRequestError):
            ids(**bad)
    with pytest.raises(BadRequestError):
        ids(filters={"type": "bogus", "key": "color", "value": "red"})


def test_store_state_is_true(sdk: OpenAI, run_server: Any) -> None:
    doc = _upload(sdk, "state.txt", b"Hummingbirds can fly backwards.")
    store = sdk.vector_stores.create(name="state", expires_after={"anchor": "last_active_at", "days": 2})
    assert store.status == "completed" and store.file_counts.total == 0 and store.usage_bytes == 0
    assert store.expires_at == store.last_active_at + 2 * 86400  # type: ignore[operator]
    sdk.vector_stores.files.create(vector_store_id=store.id, file_id=doc.id)
    ready = _store_ready(sdk, store.id)
    assert ready.status == "completed" and ready.file_counts.completed == 1 and ready.file_counts.total == 1
    file_usage = sdk.vector_stores.files.retrieve(doc.id, vector_store_id=store.id).usage_bytes
    assert ready.usage_bytes == file_usage > 0
    before = ready.last_active_at
    list(sdk.vector_stores.search(store.id, query="hummingbird"))
    after = sdk.vector_stores.retrieve(store.id)
    assert after.last_active_at is not None and before is not None and after.last_active_at >= before
    assert after.expires_at == after.last_active_at + 2 * 86400
    sdk.vector_stores.files.delete(doc.id, vector_store_id=store.id)
    emptied = sdk.vector_stores.retrieve(store.id)
    assert emptied.file_counts.total == 0 and emptied.usage_bytes == 0
    table = run_server.data_dir / "lancedb" / f"s_{store.id}.lance"
    assert table.is_dir()
    sdk.vector_stores.delete(store.id)
    assert not table.exists()


def test_upload_limit_is_enforced_while_streaming(tmp_path: Any) -> None:
    from tests.runs_fixtures import start_server

    server = start_server(tmp_path / "data", None, THREADLOG_MAX_FILE_BYTES="1000")
    try:
        client = OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        assert _upload(client, "ok.txt", b"x" * 1000).bytes == 1000
        with pytest.raises(Exception) as info:
            _upload(client, "big.txt", b"x" * 1001)
        assert getattr(info.value, "status_code", None) == 413

        def body() -> Any:  # chunked upload, no Content-Length: only counting while reading can catch it
            yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n'
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="s.txt"\r\n\r\n'
            for _ in range(256):
                yield b"y" * 16384
            yield b"\r\n--b--\r\n"

        with httpx.Client(timeout=30) as http:
            resp = http.post(
                f"{server.base_url}/files", content=body(), headers={"Content-Type": "multipart/form-data; boundary=b"}
            )
        assert resp.status_code == 413 and "limit is 1000 bytes" in resp.json()["error"]["message"]
        assert [f.filename for f in client.files.list().data] == ["ok.txt"]
        assert sorted(p.name for p in (tmp_path / "data" / "files").iterdir()) == [client.files.list().data[0].id]
    finally:
        server.stop()


def test_run_file_search_honours_ranking_options(sdk: OpenAI, store: dict[str, Any]) -> None:
    ready = store["store"]
    helper = sdk.beta.assistants.create(
        model=MODEL,
        tools=[
            {
                "type": "file_search",
                "file_search": {
                    "max_num_results": 1,
                    "ranking_options": {"ranker": "default_2024_08_21", "score_threshold": 0.0},
                },
            }
        ],
        tool_resources={"file_search": {"vector_store_ids": [ready.id]}},
    )
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": "search: python list comprehensions"}])
    run = sdk.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=helper.id)
    assert run.status == "completed", run.last_error
    steps = sdk.beta.threads.runs.steps.list(
        run.id, thread_id=thread.id, order="asc", include=["step_details.tool_calls[*].file_search.results[*].content"]
    )
    call = steps.data[0].step_details.tool_calls[0]  # type: ignore[union-attr]
    assert call.file_search.ranking_options.ranker == "default_2024_08_21"
    assert call.file_search.ranking_options.score_threshold == 0.0
    assert [r.file_id for r in call.file_search.results] == [store["python"].id]
    assert call.file_search.results[0].content[0].text == PYTHON.decode()
    text = sdk.beta.threads.messages.list(thread.id, limit=1).data[0].content[0].text  # type: ignore[union-attr]
    assert [a.file_citation.file_id for a in text.annotations] == [store["python"].id]  # type: ignore[union-attr]
    for a in text.annotations:
        assert text.value[a.start_index : a.end_index] == a.text == "【0:0†python.md】"
