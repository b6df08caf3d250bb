"""Where uploaded and produced file bytes live: the one place that knows there are two kinds.

`LocalFileStore`: a directory (the data dir's `files/`, or any shared filesystem), each file
written to a temporary name, fsynced, then renamed. `ObjectFileStore`: S3-compatible object
storage (`THREADLOG_FILES_URI=s3://bucket/prefix`; endpoint and credentials from the usual AWS
variables), through pyarrow's S3 filesystem (already here for LanceDB). Either way, bytes are
stored before the `file.created` event is appended, so an acknowledged upload is never lost.
Uploads are first received into a local staging directory (size-limited while streaming).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import anyio

__all__ = ["FileStore", "LocalFileStore", "ObjectFileStore", "file_store", "object_storage_options"]

_CHUNK = 1 << 20


class FileStore(Protocol):
    staging: Path
    """A local directory for uploads while they arrive (then `save`d)."""

    async def save(self, file_id: str, source: Path) -> None:
        """Store the local file `source` as `file_id`, durably; `source` is gone afterwards."""

    async def save_bytes(self, file_id: str, data: bytes) -> None: ...

    async def read(self, file_id: str) -> bytes | None:
        """The whole file, or None if it is not stored."""

    def chunks(self, file_id: str) -> AsyncIterator[bytes]:
        """The file in pieces, for a download that never holds it whole."""

    def local_path(self, file_id: str) -> Path | None:
        """A path the OS can send from (sendfile), where there is one."""

    async def delete(self, file_id: str) -> None: ...


def file_store(uri: str | None, default_dir: Path, env: Mapping[str, str]) -> FileStore:
    """The store `THREADLOG_FILES_URI` names: `s3://bucket/prefix`, a directory, or (unset) `default_dir`."""
    if uri and uri.startswith("s3://"):
        return ObjectFileStore(uri, env, staging=default_dir / "staging")
    return LocalFileStore(Path(uri) if uri else default_dir)


def object_storage_options(env: Mapping[str, str]) -> dict[str, str]:
    """LanceDB's storage options for s3:// URIs, from the same AWS variables the file store reads."""
    options: dict[str, str] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["aws_endpoint"] = endpoint
        if endpoint.startswith("http://"):
            options["allow_http"] = "true"
    for name, key in (
        ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
        ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
        ("AWS_SESSION_TOKEN", "aws_session_token"),
    ):
        if env.get(name):
            options[key] = env[name]
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        options["aws_region"] = region
    return options


class LocalFileStore:
    """implements FileStore in a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.staging = directory

    def _path(self, file_id: str) -> Path:
        return self.directory / file_id

    async def save(self, file_id: str, source: Path) -> None:
        def move() -> None:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self._path(file_id).with_suffix(".part")
            if source != tmp:
                shutil.move(source, tmp)  # a rename where both are on one filesystem
            with open(tmp, "rb+") as out:
                os.fsync(out.fileno())
            os.replace(tmp, self._path(file_id))

        await anyio.to_thread.run_sync(move)

    async def save_bytes(self, file_id: str, data: bytes) -> None:
        def write() -> None:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self._path(file_id).with_suffix(".part")
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self._path(file_id))

        await anyio.to_thread.run_sync(write)

    async def read(self, file_id: str) -> bytes | None:
        path = self._path(file_id)
        try:
            return await anyio.to_thread.run_sync(path.read_bytes)
        except FileNotFoundError:
            return None

    async def chunks(self, file_id: str) -> AsyncIterator[bytes]:
        async with await anyio.open_file(self._path(file_id), "rb") as handle:
            while chunk := await handle.read(_CHUNK):
                yield chunk

    def local_path(self, file_id: str) -> Path | None:
        path = self._path(file_id)
        return path if path.exists() else None

    async def delete(self, file_id: str) -> None:
        self._path(file_id).unlink(missing_ok=True)


class ObjectFileStore:
    """implements FileStore on S3-compatible object storage: `s3://bucket/prefix`."""

    def __init__(self, uri: str, env: Mapping[str, str], staging: Path) -> None:
        from pyarrow import fs

        self.staging = staging
        self._root = uri.removeprefix("s3://").rstrip("/")
        options = object_storage_options(env)
        endpoint = options.get("aws_endpoint")
        kwargs: dict[str, Any] = {
            "access_key": options.get("aws_access_key_id"),
            "secret_key": options.get("aws_secret_access_key"),
            "session_token": options.get("aws_session_token"),
            "region": options.get("aws_region"),
        }
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme)
        self._fs = fs.S3FileSystem(**{k: v for k, v in kwargs.items() if v is not None})

    def _key(self, file_id: str) -> str:
        return f"{self._root}/{file_id}"

    async def save(self, file_id: str, source: Path) -> None:
        def upload() -> None:
            with open(source, "rb") as data, self._fs.open_output_stream(self._key(file_id)) as out:
                while chunk := data.read(8 * _CHUNK):
                    out.write(chunk)
            source.unlink(missing_ok=True)  # the upload completed: the object is stored

        await anyio.to_thread.run_sync(upload)

    async def save_bytes(self, file_id: str, data: bytes) -> None:
        def upload() -> None:
            with self._fs.open_output_stream(self._key(file_id)) as out:
                out.write(data)

        await anyio.to_thread.run_sync(upload)

    async def read(self, file_id: str) -> bytes | None:
        def download() -> bytes | None:
            try:
                with self._fs.open_input_stream(self._key(file_id)) as stream:
                    return bytes(stream.read())
            except FileNotFoundError:
                return None

        return await anyio.to_thread.run_sync(download)

    async def chunks(self, file_id: str) -> AsyncIterator[bytes]:
        stream = await anyio.to_thread.run_sync(self._fs.open_input_stream, self._key(file_id))
        try:
            while chunk := bytes(await anyio.to_thread.run_sync(stream.read, _CHUNK)):
                yield chunk
        finally:
            stream.close()

    def local_path(self, file_id: str) -> Path | None:
        return None

    async def delete(self, file_id: str) -> None:
        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                self._fs.delete_file(self._key(file_id))

        await anyio.to_thread.run_sync(remove)
