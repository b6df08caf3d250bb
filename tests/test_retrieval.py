"""server/retrieval: real parsing, real tokenizer/model, real LanceDB on tmp_path."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import itertools
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from server.retrieval import (
    AUTO_CHUNKING,
    Chunk,
    FilterError,
    InvalidFile,
    LocalMiniLMEmbedder,
    OpenAICompatibleEmbedder,
    UnsupportedFile,
    VectorIndex,
    auto_chunking_for,
    chunk_text,
    count_tokens,
    embedder_from_env,
    extract_text,
)
from server.retrieval.filters import attribute_column, compile_filter
from server.retrieval.fusion import reciprocal_rank_fusion
from server.retrieval.index import table_name_for
from server.retrieval.minilm import find_model_dir

# ------------------------------------------------------------------ helpers


def make_pdf(lines: list[str]) -> bytes:
    """A minimal one-page PDF with Helvetica text, written by hand."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    content = "BT /F1 12 Tf 14 TL 72 720 Td " + " ".join(f"({esc(line)}) '" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{obj}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def encrypt_pdf(pdf: bytes, user_password: str, owner_password: str = "owner") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password, owner_password, algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def make_docx(paragraphs: list[str], table: list[list[str]]) -> bytes:
    import docx

    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    tbl = document.add_table(rows=len(table), cols=len(table[0]))
    for r, row in enumerate(table):
        for c, value in enumerate(row):
            tbl.cell(r, c).text = value
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def make_pptx(slides: list[str]) -> bytes:
    ns = "http://schemas.openxmlformats.org/drawingml/2006/main"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        for number, text in enumerate(slides, start=1):
            zf.writestr(
                f"ppt/slides/slide{number}.xml",
                f'<p:sld xmlns:p="p" xmlns:a="{ns}"><a:p><a:r><a:t>{text}</a:t></a:r></a:p></p:sld>',
            )
    return buf.getvalue()


# ------------------------------------------------------------------ parse


def test_plain_markdown_and_code() -> None:
    assert extract_text("notes.txt", b"hello\r\nworld\n") == "hello\nworld\n"
    assert "# Title" in extract_text("README.md", b"# Title\n\nSome *markdown*.")
    code = b"def add(a: int, b: int) -> int:\n    return a + b\n"
    for name in ("m.py", "m.js", "m.ts", "m.go", "m.rs", "m.java", "m.c", "m.cpp", "m.rb", "m.sh", "noext"):
        assert "return a + b" in extract_text(name, code)
    assert extract_text("latin1.txt", "caf\xe9 cr\xe8me".encode("cp1252")) == "café crème"
    assert extract_text("bom.txt", "hé".encode("utf-16")) == "hé"


def test_html_strips_tags_scripts_and_styles() -> None:
    html = b"""<!doctype html><html><head><title>Doc title</title><style>p{color:red}</style>
    <script>var secret = "do-not-index";</script></head>
    <body><h1>Heading</h1><p>First &amp; <b>bold</b> paragraph.</p><p>Second</p>
    <noscript>nojs</noscript><table><tr><td>a</td><td>b</td></tr></table></body></html>"""
    text = extract_text("page.html", html)
    assert "Doc title" in text and "Heading" in text and "First & bold paragraph." in text
    assert "do-not-index" not in text and "color:red" not in text and "nojs" not in text
    assert "<" not in text
    assert "First & bold paragraph.\n" in text  # block elements end lines
    # Sniffed without an extension too.
    assert "Heading" in extract_text("download", html)


def test_json_and_csv() -> None:
    text = extract_text("data.json", b'{"name":"caf\\u00e9","tags":["x","y"],"n":3}')
    assert json.loads(text) == {"name": "café", "tags": ["x", "y"], "n": 3}
    assert "café" in text and "\n" in text
    jsonl = extract_text("rows.jsonl", b'{"a": 1}\n{"a": 2}\n')
    assert jsonl.splitlines() == ['{"a": 1}', '{"a": 2}']
    with pytest.raises(InvalidFile):
        extract_text("broken.json", b'{"a": ')
    csv_text = extract_text("table.csv", b"city,population\nOslo,709000\n")
    assert "Oslo,709000" in csv_text


def test_pdf_text_comes_out() -> None:
    pdf = make_pdf(["Quarterly report for Zanzibar Logistics", "Revenue grew (strongly) in Q3."])
    text = extract_text("report.pdf", pdf)
    assert "Zanzibar Logistics" in text and "Revenue grew (strongly) in Q3." in text
    assert "Zanzibar" in extract_text("upload.bin-without-pdf-name", pdf)  # sniffed


def test_encrypted_pdf_is_invalid_but_owner_only_pdf_reads() -> None:
    pdf = make_pdf(["Top secret plans"])
    with pytest.raises(InvalidFile):
        extract_text("locked.pdf", encrypt_pdf(pdf, user_password="secret"))
    # Only an owner password (empty user password): anyone can open it.
    assert "Top secret plans" in extract_text("restricted.pdf", encrypt_pdf(pdf, user_password=""))


def test_corrupt_or_empty_pdf_is_invalid() -> None:
    with pytest.raises(InvalidFile):
        extract_text("bad.pdf", b"%PDF-1.4\nthis is not really a pdf\n%%EOF")
    with pytest.raises(InvalidFile):
        extract_text("fake.pdf", b"just some text named .pdf")
    with pytest.raises(InvalidFile):
        extract_text("blank.pdf", make_pdf([]))


def test_docx_and_pptx() -> None:
    data = make_docx(["Minutes of the Andromeda meeting", "Action items follow."], [["owner", "task"], ["Ada", "ship"]])
    text = extract_text("minutes.docx", data)
    assert "Andromeda meeting" in text and "Action items follow." in text and "Ada\tship" in text
    assert "Andromeda" in extract_text("attachment", data)  # sniffed by zip content
    with pytest.raises(InvalidFile):
        extract_text("broken.docx", b"PK\x03\x04 truncated zip")
    slides = extract_text("deck.pptx", make_pptx(["Roadmap 2031", "Hiring plan"]))
    assert "Roadmap 2031" in slides and "Hiring plan" in slides


def test_binary_is_unsupported_and_empty_is_invalid() -> None:
    rng = np.random.default_rng(0)
    garbage = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for name in ("blob", "data.txt", "x.py"):
        with pytest.raises(UnsupportedFile):
            extract_text(name, garbage)
    with pytest.raises(UnsupportedFile):
        extract_text("photo.png", b"\x89PNG\r\n\x1a\n" + garbage)
    with pytest.raises(UnsupportedFile):
        extract_text("image.jpg", b"looks like text but is a jpg by name")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "x")
    with pytest.raises(UnsupportedFile):
        extract_text("archive.zip", buf.getvalue())
    for empty in (b"", b"   \n\t  "):
        with pytest.raises(InvalidFile):
            extract_text("empty.txt", empty)
    with pytest.raises(InvalidFile):
        extract_text("empty.html", b"<html><script>x()</script></html>")


# ------------------------------------------------------------------ tokens & chunking


def test_count_tokens_is_a_real_tokenizer() -> None:
    assert count_tokens("") == 0
    assert count_tokens("hello world") == 2
    assert count_tokens("Tokenization") > 1  # word pieces, not words
    big = "lorem ipsum dolor sit amet " * 20_000  # ~540 KB
    start = time.perf_counter()
    assert count_tokens(big) > 100_000
    assert time.perf_counter() - start < 5.0


def _overlap(a: str, b: str) -> str:
    for size in range(min(len(a), len(b)), 0, -1):
        if a.endswith(b[:size]):
            return b[:size]
    return ""


SENTENCES = [
    f"Sentence number {i} talks about {topic} and why it matters for the project."
    for i, topic in enumerate(["storage", "latency", "recall", "tokenizers", "chunking", "embeddings"] * 40)
]


@pytest.mark.parametrize(("max_tokens", "overlap"), [(100, 50), (200, 0), (254, 64), (800, 400)])
def test_chunking_respects_max_and_overlap(max_tokens: int, overlap: int) -> None:
    text = " ".join(SENTENCES) + "\n\n" + "Unbreakable" * 40 + " tail."
    chunks = chunk_text(text, max_tokens, overlap)
    assert len(chunks) > 1
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.token_count == count_tokens(chunk.text) <= max_tokens
    for a, b in itertools.pairwise(chunks):
        shared = _overlap(a.text, b.text)
        assert count_tokens(shared) <= overlap
        if overlap:
            # Starts snap forward to a word start: at most one word short.
            assert count_tokens(shared) >= overlap - 8, (count_tokens(shared), overlap)
    # Every token is covered, in order.
    assert chunks[0].text == text[: len(chunks[0].text)]
    assert text.rstrip().endswith(chunks[-1].text)


def test_chunking_prefers_sentence_and_paragraph_ends() -> None:
    text = " ".join(SENTENCES)
    chunks = chunk_text(text, 200, 40)
    assert all(c.text.endswith(".") for c in chunks)
    # Paragraphs of ~60 tokens: one always ends within the last quarter of a window.
    paragraphs = "\n\n".join(" ".join(SENTENCES[i : i + 4]) for i in range(0, 80, 4))
    cuts = [c.text for c in chunk_text(paragraphs, 300, 0)]
    assert all(paragraphs.count(c + "\n\n") or c == cuts[-1] for c in cuts)


def test_chunking_validation_and_auto() -> None:
    assert chunk_text("", 100, 0) == []
    assert chunk_text("short text", 100, 50) == [Chunk("short text", 2, 0)]
    for bad in ((99, 0), (4097, 0), (100, 51), (100, -1)):
        with pytest.raises(ValueError):
            chunk_text("x", *bad)
    max_tokens, overlap = AUTO_CHUNKING
    assert max_tokens + 2 <= LocalMiniLMEmbedder.max_input_tokens and overlap <= max_tokens // 2
    assert auto_chunking_for(256) == AUTO_CHUNKING
    assert auto_chunking_for(8191) == (800, 400)


# ------------------------------------------------------------------ embeddings


@pytest.fixture(scope="module")
def embedder() -> LocalMiniLMEmbedder:
    return LocalMiniLMEmbedder()


def test_local_embeddings_shape_norm_and_batching(embedder: LocalMiniLMEmbedder) -> None:
    texts = ["a short one", "", "a considerably longer sentence about vector databases " * 3]
    batched = embedder.embed(texts)
    assert batched.dtype == np.float32 and batched.shape == (3, 384) and embedder.dim == 384
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    singles = np.stack([embedder.embed([t])[0] for t in texts])
    assert np.allclose(batched, singles, atol=1e-5)  # padding does not leak into results
    assert embedder.embed([]).shape == (0, 384)
    sim = embedder.embed(["The cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell."])
    assert sim[0] @ sim[1] > sim[0] @ sim[2] + 0.2


VOLCANO_TAIL = (
    "Volcanic eruptions send lava, ash and magma down the slopes of the volcano. "
    "Geologists monitor volcanoes with seismometers to predict the next eruption. "
    "Pyroclastic flows and lava domes form when magma reaches the surface. "
    "The crater of the volcano glowed red as lava fountains rose into the night sky."
)
LONG_HEAD = " ".join(SENTENCES[:24])


def test_long_text_is_embedded_past_the_window(embedder: LocalMiniLMEmbedder) -> None:
    assert count_tokens(LONG_HEAD) > 300  # the tail starts past the 256-piece window
    full, head_only = embedder.embed([LONG_HEAD + " " + VOLCANO_TAIL, LONG_HEAD])
    query = embedder.embed(["volcano lava eruption"])[0]
    assert not np.allclose(full, head_only, atol=1e-3)  # truncation would make them equal
    assert query @ full > query @ head_only + 0.08


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None, reason="reference needs torch")
def test_numpy_minilm_matches_sentence_transformers(embedder: LocalMiniLMEmbedder) -> None:
    from sentence_transformers import SentenceTransformer

    texts = ["The quick brown fox jumps over the lazy dog.", "", "naïve café — 東京 🎉", "word " * 200]
    reference = SentenceTransformer(str(find_model_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    cosines = (np.asarray(reference) * embedder.embed(texts)).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines


def test_openai_compatible_embedder_batches_and_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda _s: None)
    calls: list[dict[str, Any]] = []
    failures = {"left": 1}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/embeddings"
        assert request.headers["authorization"] == "Bearer sk-test"
        body = json.loads(request.content)
        calls.append(body)
        if failures["left"]:
            failures["left"] -= 1
            return httpx.Response(503, json={"error": "busy"})
        data = [{"index": i, "embedding": [float(len(t)), 1.0, 0.0]} for i, t in enumerate(body["input"])]
        return httpx.Response(200, json={"data": list(reversed(data))})

    emb = OpenAICompatibleEmbedder(
        "http://upstream/v1/", api_key="sk-test", model="custom-embed", batch_size=2,
        transport=httpx.MockTransport(handler),
    )  # fmt: skip
    assert emb.dim == 3  # learnt from a probe
    out = emb.embed(["a", "bb", "ccc", ""])
    assert out.shape == (4, 3) and np.allclose(np.linalg.norm(out, axis=1), 1.0)
    assert out[2] @ np.array([3.0, 1.0, 0.0]) / np.sqrt(10) == pytest.approx(1.0, abs=1e-5)
    assert [len(c["input"]) for c in calls[-2:]] == [2, 2] and calls[-1]["input"][1] == " "
    assert all(c["model"] == "custom-embed" for c in calls)


def test_embedder_from_env() -> None:
    assert isinstance(embedder_from_env({}), LocalMiniLMEmbedder)
    remote = embedder_from_env(
        {
            "THREADLOG_EMBEDDINGS_BASE_URL": "http://127.0.0.1:9/v1",
            "THREADLOG_EMBEDDINGS_API_KEY": "k",
            "THREADLOG_EMBEDDINGS_MODEL": "text-embedding-3-large",
        }
    )
    assert isinstance(remote, OpenAICompatibleEmbedder) and remote.dim == 3072
    assert remote.name == "openai-compatible:text-embedding-3-large"


# ------------------------------------------------------------------ filters & fusion


def test_filter_compilation_is_typed_and_escaped() -> None:
    cols = [attribute_column("author", "s"), attribute_column("year", "n"), attribute_column("draft", "b")]
    sql = compile_filter({"type": "eq", "key": "author", "value": "O'Brien"}, cols)
    assert sql == f"COALESCE({attribute_column('author', 's')} = 'O''Brien', FALSE)"
    assert compile_filter({"type": "eq", "key": "missing", "value": 1}, cols) == "FALSE"
    assert compile_filter({"type": "ne", "key": "missing", "value": 1}, cols) == "TRUE"
    assert compile_filter({"type": "and", "filters": []}, cols) == "TRUE"
    assert compile_filter({"type": "or", "filters": []}, cols) == "FALSE"
    assert "TRUE" in (compile_filter({"type": "eq", "key": "draft", "value": True}, cols) or "")
    assert compile_filter(None, cols) is None
    for bad in (
        {"type": "regex", "key": "a", "value": "x"},
        {"type": "eq", "value": "x"},
        {"type": "eq", "key": "a"},
        {"type": "and"},
        {"type": "gt", "key": "year", "value": float("nan")},
        {"type": "eq", "key": "a", "value": ["list"]},
        {"type": "in", "key": "a", "value": []},
        "not a dict",
    ):
        with pytest.raises(FilterError):
            compile_filter(bad, cols)  # type: ignore[arg-type]


def test_rrf() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "d"]])
    assert [key for key, _ in fused][:2] == ["b", "a"]
    assert all(0 < score <= 1 for _, score in fused)
    assert reciprocal_rank_fusion([["x"], ["x"]]) == [("x", 1.0)]
    assert table_name_for("vs_abc123") == "s_vs_abc123"
    assert table_name_for("../../etc").startswith("h_")


# ------------------------------------------------------------------ index

DOCS = {
    "file_volcano": ("volcano.txt", "The volcano erupted at dawn and molten lava flowed down the mountain slopes."),
    "file_bread": ("bread.md", "To bake sourdough bread, feed the starter and let the dough proof overnight."),
    "file_finance": ("q3.pdf", "Quarterly revenue grew by twelve percent thanks to strong cloud subscription sales."),
    "file_chess": ("chess.txt", "The grandmaster sacrificed her queen to force checkmate in the endgame."),
}
ATTRS: dict[str, dict[str, str | float | bool]] = {
    "file_volcano": {"topic": "science", "year": 2021, "public": True},
    "file_bread": {"topic": "food", "year": 2019, "public": True, "author": "O'Brien"},
    "file_finance": {"topic": "business", "year": 2024, "public": False},
    "file_chess": {"topic": "games", "year": 2022.5},
}


@pytest.fixture
def index(tmp_path: Path, embedder: LocalMiniLMEmbedder) -> Iterator[VectorIndex]:
    yield VectorIndex(str(tmp_path / "lancedb"), embedder)


async def _load(index: VectorIndex, store: str = "vs_main") -> None:
    for file_id, (filename, text) in DOCS.items():
        stored = await index.add_file(store, file_id, filename, chunk_text(text, 100, 0), ATTRS[file_id])
        assert stored == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["vector", "fts", "hybrid"])
async def test_search_finds_the_right_file(index: VectorIndex, mode: str) -> None:
    await _load(index)
    queries = {
        "file_volcano": "lava flowing from an erupting volcano",
        "file_bread": "sourdough starter dough",
        "file_finance": "quarterly revenue growth",
        "file_chess": "grandmaster checkmate queen sacrifice",
    }
    for expected, query in queries.items():
        hits = await index.search(["vs_main"], query, mode=mode)
        assert hits and hits[0].file_id == expected, (mode, query, hits)
        top = hits[0]
        assert top.filename == DOCS[expected][0] and top.content == DOCS[expected][1] and top.chunk_index == 0
        assert top.attributes == ATTRS[expected]
        assert all(0.0 <= h.score <= 1.0 for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.asyncio
async def test_filters(index: VectorIndex) -> None:
    await _load(index)

    async def ids(filters: dict[str, Any], mode: str = "hybrid") -> set[str]:
        hits = await index.search(["vs_main"], "lava bread revenue checkmate", filters=filters, mode=mode)
        return {h.file_id for h in hits}

    assert await ids({"type": "eq", "key": "topic", "value": "food"}) == {"file_bread"}
    assert await ids({"type": "ne", "key": "topic", "value": "food"}) == {"file_volcano", "file_finance", "file_chess"}
    assert await ids({"type": "gt", "key": "year", "value": 2021}) == {"file_finance", "file_chess"}
    assert await ids({"type": "gte", "key": "year", "value": 2021}) == {"file_volcano", "file_finance", "file_chess"}
    assert await ids({"type": "lt", "key": "year", "value": 2022.5}) == {"file_volcano", "file_bread"}
    assert await ids({"type": "lte", "key": "year", "value": 2022.5}, mode="fts") == {
        "file_volcano",
        "file_bread",
        "file_chess",
    }
    assert await ids({"type": "eq", "key": "public", "value": False}, mode="vector") == {"file_finance"}
    assert await ids({"type": "ne", "key": "public", "value": True}) == {"file_finance", "file_chess"}
    both = {
        "type": "and",
        "filters": [{"type": "eq", "key": "public", "value": True}, {"type": "gt", "key": "year", "value": 2020}],
    }
    assert await ids(both) == {"file_volcano"}
    either = {
        "type": "or",
        "filters": [
            {"type": "eq", "key": "topic", "value": "games"},
            {"type": "and", "filters": [{"type": "eq", "key": "public", "value": False}]},
        ],
    }
    assert await ids(either) == {"file_chess", "file_finance"}
    assert await ids({"type": "in", "key": "topic", "value": ["food", "games", 7]}) == {"file_bread", "file_chess"}
    assert await ids({"type": "eq", "key": "author", "value": "O'Brien"}) == {"file_bread"}
    assert await ids({"type": "eq", "key": "author", "value": "x' OR '1'='1"}) == set()
    assert await ids({"type": "eq", "key": "year", "value": "2021"}) == set()  # string vs number: no match
    assert await ids({"type": "eq", "key": "nonexistent", "value": 1}) == set()
    with pytest.raises(FilterError):
        await index.search(["vs_main"], "x", filters={"type": "bogus"})


@pytest.mark.asyncio
async def test_update_attributes_replaces_them(index: VectorIndex) -> None:
    await _load(index)
    await index.update_attributes("vs_main", "file_bread", {"topic": "baking", "stars": 5})
    hits = await index.search(["vs_main"], "sourdough", filters={"type": "eq", "key": "topic", "value": "baking"})
    assert [h.file_id for h in hits] == ["file_bread"] and hits[0].attributes == {"topic": "baking", "stars": 5}
    # The old 'author' attribute is gone.
    assert not await index.search(["vs_main"], "bread", filters={"type": "eq", "key": "author", "value": "O'Brien"})


@pytest.mark.asyncio
async def test_remove_replace_drop_and_usage(index: VectorIndex) -> None:
    await _load(index)
    usage = await index.usage_bytes("vs_main")
    assert usage > 4 * 384 * 4
    await index.remove_file("vs_main", "file_volcano")
    for mode in ("vector", "fts", "hybrid"):
        hits = await index.search(["vs_main"], "volcano lava eruption", mode=mode)
        assert "file_volcano" not in {h.file_id for h in hits}
    # Re-adding a file replaces its chunks instead of duplicating them.
    chunks = chunk_text(" ".join(SENTENCES[:30]), 100, 20)
    assert await index.add_file("vs_main", "file_chess", "chess.txt", chunks, {"topic": "games"}) == len(chunks)
    assert await index.add_file("vs_main", "file_chess", "chess.txt", chunks[:2], {"topic": "games"}) == 2
    hits = await index.search(["vs_main"], "sentence number", max_num_results=50, mode="fts")
    assert sorted(h.chunk_index for h in hits if h.file_id == "file_chess") == [0, 1]
    await index.remove_file("vs_main", "no_such_file")
    await index.drop_store("vs_main")
    assert await index.search(["vs_main"], "bread") == []
    assert await index.usage_bytes("vs_main") == 0
    await index.drop_store("vs_main")  # idempotent
    await index.remove_file("vs_never", "f")


@pytest.mark.asyncio
async def test_score_threshold_and_limits(index: VectorIndex) -> None:
    await _load(index)
    every = await index.search(["vs_main"], "molten lava volcano", mode="vector")
    assert len(every) == 4
    cut = (every[0].score + every[1].score) / 2
    kept = await index.search(["vs_main"], "molten lava volcano", mode="vector", score_threshold=cut)
    assert [h.file_id for h in kept] == ["file_volcano"]
    assert len(await index.search(["vs_main"], "molten lava volcano", max_num_results=2)) == 2
    for bad in ({"max_num_results": 0}, {"max_num_results": 51}, {"score_threshold": 1.5}, {"mode": "x"}):
        with pytest.raises(ValueError):
            await index.search(["vs_main"], "q", **bad)
    assert (await index.search(["vs_main"], "molten lava volcano", ranker="default-2024-11-15"))[0].score == 1.0


@pytest.mark.asyncio
async def test_search_across_stores_and_long_chunk(index: VectorIndex) -> None:
    await _load(index, "vs_a")
    # Same 300+-token head; only one file goes on about volcanoes after it.
    long_text = LONG_HEAD + " " + VOLCANO_TAIL
    await index.add_file("vs_b", "file_long", "long.txt", [Chunk(long_text, count_tokens(long_text), 0)])
    await index.add_file("vs_b", "file_head", "head.txt", [Chunk(LONG_HEAD, count_tokens(LONG_HEAD), 0)])
    hits = await index.search(["vs_b"], "volcano lava eruption", mode="vector")
    assert hits[0].file_id == "file_long"  # found only because tokens past 256 are embedded
    assert hits[0].score > hits[1].score + 0.05
    both = await index.search(["vs_a", "vs_b", "vs_missing"], "sourdough bread", max_num_results=50)
    assert both[0].file_id == "file_bread" and {"file_long", "file_head"} <= {h.file_id for h in both}


@pytest.mark.asyncio
async def test_event_loop_is_not_blocked(index: VectorIndex) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    text = " ".join(SENTENCES)
    start = time.perf_counter()
    await index.add_file("vs_t", "f", "f.txt", chunk_text(text, 254, 64))
    elapsed = time.perf_counter() - start
    stop.set()
    await task
    assert elapsed > 0.05 and ticks >= elapsed / 0.005 * 0.3, (ticks, elapsed)


@pytest.mark.asyncio
async def test_in_memory_vector_search_equals_lancedb_and_survives_outside_writes(
    tmp_path: Path, embedder: LocalMiniLMEmbedder
) -> None:
    cached = VectorIndex(str(tmp_path / "db"), embedder)
    uncached = VectorIndex(str(tmp_path / "db"), embedder, vector_cache_bytes=0)  # LanceDB's own flat search
    await _load(cached)
    queries = ["lava flowing from an erupting volcano", "bread", "money", "board games"]
    flt = {"type": "ne", "key": "topic", "value": "food"}
    for query in queries:
        for filters in (None, flt):
            a = await cached.search(["vs_main"], query, mode="vector", filters=filters)
            b = await uncached.search(["vs_main"], query, mode="vector", filters=filters)
            assert [h.file_id for h in a] == [h.file_id for h in b]
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
    name = table_name_for("vs_main")
    assert name in cached._vectors and name not in uncached._vectors
    # A write that bypasses the index's bookkeeping (row ids move on delete + compaction):
    # the stale cache is detected when rows are read, and answers stay right.
    table = cached._open("vs_main", create=False)
    table.delete("file_id = 'file_volcano'")
    table.optimize()
    for mode in ("vector", "hybrid"):
        hits = await cached.search(["vs_main"], "volcano lava", mode=mode)
        assert "file_volcano" not in {h.file_id for h in hits}
        assert {h.file_id for h in hits} == {"file_bread", "file_finance", "file_chess"}
        assert all(h.content == DOCS[h.file_id][1] for h in hits)


@pytest.mark.asyncio
async def test_cache_follows_own_writes(index: VectorIndex) -> None:
    await _load(index)
    assert (await index.search(["vs_main"], "volcano", mode="vector"))[0].file_id == "file_volcano"
    await index.add_file("vs_main", "file_new", "new.txt", chunk_text("Volcanic ash clouds ground flights.", 100, 0))
    assert "file_new" in {h.file_id for h in await index.search(["vs_main"], "volcano ash", mode="vector")}
    await index.update_attributes("vs_main", "file_new", {"topic": "air"})
    hits = await index.search(
        ["vs_main"], "volcano", mode="vector", filters={"type": "eq", "key": "topic", "value": "air"}
    )
    assert [h.file_id for h in hits] == ["file_new"] and hits[0].attributes == {"topic": "air"}
    await index.remove_file("vs_main", "file_new")
    assert "file_new" not in {h.file_id for h in await index.search(["vs_main"], "volcano ash", mode="vector")}


def test_blas_is_single_threaded_for_the_embedder(embedder: LocalMiniLMEmbedder) -> None:
    from server.retrieval.minilm import set_blas_threads

    embedder.warmup()
    assert set_blas_threads(1) is True


def test_weighted_rrf() -> None:
    from server.retrieval.fusion import BM25_WEIGHT, RRF_K, VECTOR_WEIGHT

    fused = dict(reciprocal_rank_fusion([["v1", "both"], ["b1", "both"]], weights=[VECTOR_WEIGHT, BM25_WEIGHT]))
    best = (VECTOR_WEIGHT + BM25_WEIGHT) / (RRF_K + 1)
    assert fused["v1"] == pytest.approx(VECTOR_WEIGHT / (RRF_K + 1) / best)
    assert fused["b1"] == pytest.approx(BM25_WEIGHT / (RRF_K + 1) / best)
    assert fused["both"] == pytest.approx((VECTOR_WEIGHT + BM25_WEIGHT) / (RRF_K + 2) / best)
    assert fused["v1"] > fused["b1"]
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["a"]], weights=[1.0, 2.0])


@pytest.mark.asyncio
async def test_fts_rows_fold_in_at_threshold_or_when_asked(tmp_path: Path, embedder: LocalMiniLMEmbedder) -> None:
    index = VectorIndex(str(tmp_path / "db"), embedder, fts_reindex_rows=2)

    def unindexed() -> int:
        table = index._open("vs_f", create=False)
        fts = next(i for i in table.list_indices() if i.index_type == "FTS")
        return int(table.index_stats(fts.name).num_unindexed_rows)

    await index.add_file("vs_f", "a", "a.txt", chunk_text("Alpha particles are helium nuclei.", 100, 0))
    await index.add_file("vs_f", "b", "b.txt", chunk_text("Beta decay emits an electron.", 100, 0))
    assert unindexed() == 1  # under the threshold: scanned at query time, still found
    assert [h.file_id for h in await index.search(["vs_f"], "electron beta decay", mode="fts")] == ["b"]
    await index.fold_pending("vs_f")
    assert unindexed() == 0
    for text, fid in (("Gamma rays are photons.", "c"), ("Delta rays knock electrons.", "d"), ("Eps.", "e")):
        await index.add_file("vs_f", fid, f"{fid}.txt", chunk_text(text, 100, 0))
    assert unindexed() == 0  # the third unindexed row passed the threshold and folded all in
    await index.fold_pending("vs_f")  # nothing to do
    await index.fold_pending("vs_none")


@pytest.mark.asyncio
async def test_ann_index_path(tmp_path: Path, embedder: LocalMiniLMEmbedder) -> None:
    from server.retrieval import AnnSettings

    ann = VectorIndex(str(tmp_path / "db"), embedder, ann=AnnSettings(min_rows=1, num_partitions=1, nprobes=1))
    await _load(ann)
    table = ann._open("vs_main", create=False)
    assert any(i.index_type == "IvfFlat" for i in table.list_indices())
    hits = await ann.search(["vs_main"], "lava flowing from an erupting volcano", mode="vector")
    assert hits[0].file_id == "file_volcano" and len(hits) == 4
    assert table_name_for("vs_main") not in ann._vectors  # LanceDB answered, not the in-memory scan


@pytest.mark.asyncio
async def test_open_table_handles_are_bounded(tmp_path: Path, embedder: LocalMiniLMEmbedder) -> None:
    """Handles of stores not used lately are closed (a store deleted through another process is
    never used here again); a store whose handle was closed opens again when it is searched."""
    index = VectorIndex(str(tmp_path / "lancedb"), embedder, max_open_tables=2)
    stores = {f"vs_{name}": (file_id, filename, text) for name, (file_id, (filename, text)) in
              zip(("a", "b", "c"), list(DOCS.items())[:3], strict=True)}  # fmt: skip
    for store, (file_id, filename, text) in stores.items():
        assert await index.add_file(store, file_id, filename, chunk_text(text, 100, 0), {}) == 1
        assert len(index._tables) <= 2
    for store, (file_id, _, text) in reversed(stores.items()):
        hits = await index.search([store], text.split(".")[0], mode="vector")
        assert {hit.file_id for hit in hits} == {file_id}
        assert len(index._tables) <= 2
