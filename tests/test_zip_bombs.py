"""Zip-based uploads (.pptx, .docx, any zip) that inflate far past their size: refused from
their central directory, before anything is inflated, and the vector store file ends
`failed` / `invalid_file` saying why."""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from typing import Any

import pytest
from openai import OpenAI

from server.retrieval.parse import MAX_INFLATED_MEMBER_BYTES, InvalidFile, extract_text
from tests.runs_fixtures import wait_for

pytest.importorskip("lancedb")

INFLATED = MAX_INFLATED_MEMBER_BYTES + (16 << 20)


def _bomb(member: str, inflated: int = INFLATED, parts: int = 1) -> bytes:
    """A zip whose member(s) inflate to `inflated` bytes of XML-ish padding, built in 1 MiB writes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        for part in range(parts):
            name = member if parts == 1 else member.replace("1", str(part + 1))
            with zf.open(name, "w") as handle:
                handle.write(b"<p:sld>")
                block = b" " * (1 << 20)
                for _ in range(inflated // len(block)):
                    handle.write(block)
                handle.write(b"</p:sld>")
    return out.getvalue()


@pytest.mark.parametrize(
    ("filename", "member", "parts"),
    [
        ("slides.pptx", "ppt/slides/slide1.xml", 1),
        ("report.docx", "word/document.xml", 1),
        ("many.pptx", "ppt/slides/slide1.xml", 6),  # parts under the cap each, too much together
    ],
)
def test_zip_bombs_are_refused_without_inflating(filename: str, member: str, parts: int) -> None:
    inflated = INFLATED if parts == 1 else MAX_INFLATED_MEMBER_BYTES - (1 << 20)
    data = _bomb(member, inflated, parts)
    assert len(data) < 2 << 20  # a small upload
    tracemalloc.start()
    try:
        with pytest.raises(InvalidFile, match="inflates to"):
            extract_text(filename, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"parsing held {peak} bytes"


def test_a_zip_bomb_upload_fails_its_vector_store_file(sdk: OpenAI) -> None:
    data = _bomb("ppt/slides/slide1.xml")
    uploaded = sdk.files.create(file=("bomb.pptx", io.BytesIO(data)), purpose="assistants")
    store = sdk.vector_stores.create(name="bombs", file_ids=[uploaded.id])

    def settled() -> Any:
        entry = sdk.vector_stores.files.retrieve(uploaded.id, vector_store_id=store.id)
        return entry if entry.status != "in_progress" else None

    entry = wait_for(settled, timeout=30)
    assert entry.status == "failed"
    assert entry.last_error is not None and entry.last_error.code == "invalid_file"
    assert "inflates to" in entry.last_error.message
