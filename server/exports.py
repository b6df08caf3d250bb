"""A thread as a file (JSON lines): its events, the assistants its runs used, the files it names.

The bug report format: `export` writes it from one server, `import` reproduces the thread on
another under new ids, with every event as it was (deltas and recorded model turns too), so
its runs can be replayed, diffed and re-run with `model_source: "recorded"` there. Line one
says what the file is; then one line per event, assistant and file (bytes in base64).
"""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

from events.records import NewEvent
from server.errors import bad_request, not_found
from server.ids import new_id
from server.services import Services

__all__ = ["EXPORT_VERSION", "export_thread", "import_thread"]

EXPORT_VERSION = 1

_IDS = re.compile(r"\b(?:thread|msg|run|step|asst|call)_[A-Za-z0-9]{24}\b|\bfile-[A-Za-z0-9]{24}\b")
_BUSY = ("queued", "in_progress", "cancelling")


async def export_thread(svc: Services, thread_id: str, *, include_files: bool = True) -> str:
    thread = await svc.views.get("thread", thread_id)
    if thread is None:
        raise not_found("thread", thread_id)
    busy = await svc.views.find("run", thread_id, _BUSY)
    if busy:
        raise bad_request(f"Thread {thread_id} has a run in progress ({busy[0]['id']}); export it once the run ends.")
    events = await svc.store.read(stream_id=thread_id, limit=100_000_000)
    lines = [
        {"type": e.type, "data": e.data, "run_id": e.run_id, "created_at": e.created_at, "sequence": e.sequence}
        for e in events
    ]
    text = "\n".join(e.data_json for e in events)
    assistants = []
    for assistant_id in sorted({e.data["assistant_id"] for e in events if e.type == "thread.run.created"}):
        doc = await svc.views.get("assistant", assistant_id)
        if doc is not None:
            assistants.append(doc)
    files = []
    if include_files:
        for file_id in sorted({m for m in _IDS.findall(text) if m.startswith("file-")}):
            doc = await svc.views.get("file", file_id)
            if doc is not None:
                content = await svc.files.read(file_id) or b""
                files.append({**doc, "content_base64": base64.b64encode(content).decode()})
    header = {
        "object": "threadlog.export",
        "version": EXPORT_VERSION,
        "thread_id": thread_id,
        "exported_at": int(time.time()),
        "events": len(lines),
        "assistants": len(assistants),
        "files": len(files),
    }
    out = [json.dumps(header)]
    out += [json.dumps({"object": "threadlog.export.event", **line}, ensure_ascii=False) for line in lines]
    out += [
        json.dumps({"object": "threadlog.export.assistant", "assistant": a}, ensure_ascii=False) for a in assistants
    ]
    out += [json.dumps({"object": "threadlog.export.file", "file": f}) for f in files]
    return "\n".join(out) + "\n"


async def import_thread(svc: Services, text: str) -> dict[str, Any]:
    """Append the exported thread (and its assistants and files) under new ids; the new ids by old."""
    records = _parse(text)
    header = records[0]
    if header.get("object") != "threadlog.export" or header.get("version") != EXPORT_VERSION:
        raise bad_request(f"Not a Threadlog export of version {EXPORT_VERSION} (its first line says otherwise).")
    events = [r for r in records if r.get("object") == "threadlog.export.event"]
    if not events or events[0].get("type") != "thread.created":
        raise bad_request("The export has no thread.created event to start from.")
    found = set(_IDS.findall("\n".join(json.dumps(r) for r in records)))
    files = [r["file"] for r in records if r.get("object") == "threadlog.export.file"]
    carried = {f["id"] for f in files}
    ids = {old: _fresh(old) for old in sorted(found) if not old.startswith("file-") or old in carried}

    def remap(value: Any) -> Any:
        return json.loads(_IDS.sub(lambda m: ids.get(m.group(0), m.group(0)), json.dumps(value)))

    for file in files:
        new = remap({k: v for k, v in file.items() if k != "content_base64"})
        await svc.files.save_bytes(new["id"], base64.b64decode(file["content_base64"]))
        await svc.store.append(new["id"], [NewEvent("file.created", new)], expected_version=0)
    for record in records:
        if record.get("object") == "threadlog.export.assistant":
            assistant = remap(record["assistant"])
            await svc.store.append(assistant["id"], [NewEvent("assistant.created", assistant)], expected_version=0)
    new_events = [
        NewEvent(e["type"], remap(e["data"]), run_id=ids.get(e["run_id"], e["run_id"]) if e.get("run_id") else None)
        for e in events
    ]
    thread_id = new_events[0].data["id"]
    await svc.store.append(thread_id, new_events, expected_version=0)
    if svc.runs is not None:
        for run in await svc.views.find("run", thread_id, ("requires_action",)):
            svc.runs.watch_expiry(run)
    return {"thread_id": thread_id, "ids": ids}


def _fresh(old: str) -> str:
    prefix = "file-" if old.startswith("file-") else old.split("_", 1)[0] + "_"
    return new_id(prefix)


def _parse(text: str) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise bad_request(f"Line {number} of the export is not JSON: {exc.msg}.") from exc
        if not isinstance(record, dict):
            raise bad_request(f"Line {number} of the export is not a JSON object.")
        records.append(record)
    if not records:
        raise bad_request("The export is empty.")
    return records
