"""The code_interpreter tool: runs the model's Python in the thread's sandbox session.

Files of the assistant's and thread's `tool_resources.code_interpreter` and message
attachments meant for code_interpreter are placed under /mnt/data; files the code writes
there become files with purpose `assistants_output`, images as `image` outputs.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from events.records import NewEvent
from server import metrics
from server.ids import new_id
from server.runs.engine import ToolResult
from server.sandbox import InputFile, OutputFile, SandboxLimits, SandboxManager, SandboxUnavailable, sandbox_status
from server.sandbox.files import safe_file_name
from server.sandbox.pyimage import release_image
from server.services import Services

__all__ = ["CodeInterpreter"]

_MODEL_OUTPUT_CHARS = 8000

logger = logging.getLogger("threadlog")


@dataclass
class CodeInterpreter:
    svc: Services
    sandboxes: SandboxManager | None
    unavailable: str | None

    @classmethod
    def create(cls, svc: Services) -> CodeInterpreter:
        settings = svc.settings
        reason = sandbox_status(settings.allow_unsandboxed_code)
        if reason is not None:
            return cls(svc, None, reason)
        limits = SandboxLimits(
            wall_time_s=settings.code_wall_time_s,
            cpu_time_s=max(1, int(settings.code_wall_time_s)),
            memory_bytes=settings.code_memory_mb << 20,
            idle_expiry_s=settings.code_idle_s,
            max_sessions=settings.code_max_sessions,
            session_memory_bytes=settings.code_session_memory_mb << 20,
            disk_quota_bytes=settings.code_disk_quota_mb << 20,
            disk_reserve_bytes=settings.disk_reserve_mb << 20,
        )
        # Processes that share a data dir each keep their sessions apart: one session's /mnt/data
        # image must never be mounted by two kernels. What a run wrote there is in the file store
        # (see `_input_files`), and so reaches a session on any process.
        root = settings.sandbox_dir if svc.store.exclusive else settings.sandbox_dir / f"process-{os.getpid()}"
        manager = SandboxManager(root, limits, allow_unsandboxed=settings.allow_unsandboxed_code)
        logger.info("code_interpreter memory cap: %s", manager.memory_cap)
        metrics.watch_sandbox(lambda: manager.live_sessions, lambda: manager.kills)
        return cls(svc, manager, None)

    async def aclose(self) -> None:
        if self.sandboxes is not None:
            await self.sandboxes.aclose()
            await anyio.to_thread.run_sync(release_image)

    async def run(self, arguments: dict[str, Any], run: dict[str, Any]) -> ToolResult:
        assert self.sandboxes is not None
        code = str(arguments.get("code") or "")
        inputs = await self._input_files(run)
        if not self.sandboxes.has_session(run["thread_id"]):
            # A new session (another process ran this thread before, or this one restarted): the
            # files earlier runs left in /mnt/data come back from the file store.
            inputs = [*await self._earlier_outputs(run["thread_id"]), *inputs]
        try:
            result = await self.sandboxes.execute(run["thread_id"], code, inputs)
        except SandboxUnavailable as exc:
            text = f"code_interpreter is unavailable: {exc}"
            return ToolResult({"outputs": [{"type": "logs", "logs": text}]}, text)
        outputs: list[dict[str, Any]] = []
        logs = result.logs
        if result.error and result.error not in logs:
            logs = f"{logs}\n{result.error}" if logs else result.error
        if logs:
            outputs.append({"type": "logs", "logs": logs})
        notes = []
        images: list[str] = []
        paths: dict[str, str] = {}
        for produced in result.files:
            file_id = await self._store_output(produced)
            if produced.is_image:
                outputs.append({"type": "image", "image": {"file_id": file_id}})
                images.append(file_id)
                notes.append(f"[image {produced.name} is shown to the user]")
            else:
                paths[f"sandbox:/mnt/data/{produced.name}"] = file_id
                notes.append(f"[file saved; link it for the user as sandbox:/mnt/data/{produced.name}]")
        text = "\n".join([logs[-_MODEL_OUTPUT_CHARS:] if logs else "(no output)", *notes])
        return ToolResult({"outputs": outputs}, text, images=images, paths=paths)

    async def _input_files(self, run: dict[str, Any]) -> list[InputFile]:
        views = self.svc.views
        ids: list[str] = []
        for owner in (await views.get("assistant", run["assistant_id"]), await views.get("thread", run["thread_id"])):
            resources = (owner or {}).get("tool_resources") or {}
            ids += (resources.get("code_interpreter") or {}).get("file_ids") or []
        messages = await views.list("message", parent_id=run["thread_id"], limit=100_000, order="asc")
        for message in messages.data:
            for attachment in message.get("attachments") or []:
                if any(t.get("type") == "code_interpreter" for t in attachment.get("tools") or []):
                    ids.append(attachment["file_id"])
        return await self._as_inputs(ids)

    async def _earlier_outputs(self, thread_id: str) -> list[InputFile]:
        """The files code wrote to /mnt/data in the thread's earlier runs, as the messages cite them
        (images shown, files linked), oldest first: a later file of the same name wins."""
        messages = await self.svc.views.list("message", parent_id=thread_id, limit=100_000, order="asc")
        ids: list[str] = []
        for message in messages.data:
            for part in message.get("content") or []:
                if part.get("type") == "image_file":
                    ids.append(part["image_file"]["file_id"])
                for note in (part.get("text") or {}).get("annotations") or []:
                    if note.get("type") == "file_path":
                        ids.append(note["file_path"]["file_id"])
        return await self._as_inputs(ids, purpose="assistants_output")

    async def _as_inputs(self, ids: list[str], purpose: str | None = None) -> list[InputFile]:
        """The files (of `purpose`, if given) that still exist, named as they land in /mnt/data."""
        files = []
        for file_id in dict.fromkeys(ids):
            doc = await self.svc.views.get("file", file_id)
            if doc is None or (purpose is not None and doc.get("purpose") != purpose):
                continue
            data = await self.svc.files.read(file_id)
            if data is not None:
                files.append(InputFile(name=safe_file_name(doc["filename"], file_id), data=data))
        return files

    async def _store_output(self, produced: OutputFile) -> str:
        """Move the sandbox's output into the file store (streamed: never whole in memory)."""
        file_id = new_id("file-")
        name = produced.name
        if produced.path is not None:
            await self.svc.files.save(file_id, Path(produced.path))
        else:
            await self.svc.files.save_bytes(file_id, produced.content or b"")
        obj = {
            "id": file_id,
            "object": "file",
            "bytes": produced.size,
            "created_at": int(time.time()),
            "expires_at": None,
            "filename": f"/mnt/data/{name}",
            "purpose": "assistants_output",
            "status": "processed",
            "status_details": None,
        }
        await self.svc.store.append(file_id, [NewEvent("file.created", obj)], expected_version=0)
        return file_id
