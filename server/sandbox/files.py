"""The host side of a session's /mnt/data: inputs in, changed files out.

Everything in the data directory was possibly written by untrusted code, so
the host never follows a symlink there: paths are opened component by
component relative to a directory fd with O_NOFOLLOW, and only regular files
are read. Without that, `os.symlink("/etc/shadow", "/mnt/data/x")` would make
the (possibly root) server read and return a host file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .results import InputFile, OutputFile, is_image_name

# Bounds on what one call can hand back, so a loop writing 10^5 files cannot
# stall the server or flood the API.
MAX_SCAN_ENTRIES = 10_000
MAX_OUTPUT_FILES = 50
MAX_OUTPUT_TOTAL_BYTES = 512 << 20

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True)
class FileStamp:
    """What tells a changed file from an unchanged one without reading it."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int


Snapshot = dict[str, FileStamp]


def safe_file_name(name: str, fallback: str) -> str:
    """A file's name as it lands in /mnt/data: its last path part, never empty, `.` or `..`.

    Uploaded names are the client's (`..`, `/`, `""`, `a/b.csv`, 300 bytes): the sandbox
    gets a plain name, `fallback` (the file id) where nothing usable is left, cut to
    255 bytes keeping its extension.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1].replace("\x00", "").strip()
    if base in ("", ".", ".."):
        base = fallback
    if len(base.encode()) > 255:
        stem, dot, ext = base.rpartition(".")
        if not dot or len(ext.encode()) > 16:
            stem, ext = base, ""
        suffix = f".{ext}" if ext else ""
        while len((stem + suffix).encode()) > 255:
            stem = stem[:-1]
        base = stem + suffix
    return base


def validate_input_name(name: str) -> str:
    """Input files land directly in /mnt/data: a plain name, no directories."""
    if not name or name in {".", ".."} or "/" in name or "\x00" in name or len(name.encode()) > 255:
        raise ValueError(f"invalid input file name: {name!r}")
    return name


def prepare_data_dir(data_dir: Path, owner: tuple[int, int] | None) -> None:
    """Create the session's data dir and hand it (and its content) to the sandbox uid.

    Ownership is only changed when it differs, so a warm restart costs one
    stat. lchown never follows the links the sandbox may have planted.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    if owner is None:
        return
    uid, gid = owner
    st = os.lstat(data_dir)
    if (st.st_uid, st.st_gid) == (uid, gid):
        return
    os.lchown(data_dir, uid, gid)
    for root, dirs, files in os.walk(data_dir, followlinks=False):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                os.lchown(os.path.join(root, name), uid, gid)


def write_inputs(data_dir: Path, inputs: list[InputFile], owner: tuple[int, int] | None) -> None:
    """Place input files, skipping those already present with the same bytes."""
    if not inputs:
        return
    dir_fd = os.open(data_dir, _DIR_FLAGS)
    try:
        for item in inputs:
            name = validate_input_name(item.name)
            existing = _read_regular(dir_fd, name, len(item.data))
            if existing == item.data:
                continue
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                continue  # the code made a directory of that name: it keeps it, the run goes on
            fd = os.open(
                name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd
            )
            try:
                view = memoryview(item.data)
                while view:
                    view = view[os.write(fd, view) :]
                if owner is not None:
                    os.fchown(fd, *owner)
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)


def snapshot(data_dir: Path) -> Snapshot:
    """Stamp every regular file under data_dir (symlinks are not followed)."""
    result: Snapshot = {}
    stack = [""]
    seen = 0
    while stack and seen < MAX_SCAN_ENTRIES:
        rel = stack.pop()
        try:
            entries = list(os.scandir(data_dir / rel if rel else data_dir))
        except OSError:
            continue
        for entry in entries:
            seen += 1
            name = f"{rel}/{entry.name}" if rel else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(name)
            elif stat.S_ISREG(st.st_mode):
                result[name] = FileStamp(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    return result


def changed_files(before: Snapshot, after: Snapshot) -> list[str]:
    """Names of files that are new or whose stamp changed, oldest change first."""
    names = [name for name, stamp in after.items() if before.get(name) != stamp]
    names.sort(key=lambda name: (after[name].mtime_ns, name))
    return names


def collect_outputs(
    data_dir: Path, names: list[str], max_file_bytes: int, staging: Path
) -> tuple[list[OutputFile], list[str]]:
    """Copy changed files safely into `staging` (streamed); returns (files, notes on what was skipped)."""
    files: list[OutputFile] = []
    notes: list[str] = []
    total = 0
    staging.mkdir(mode=0o700, exist_ok=True)
    for name in names:
        if len(files) >= MAX_OUTPUT_FILES:
            notes.append(f"[{len(names) - len(files)} more changed files in /mnt/data were not returned]")
            break
        target = staging / f"{len(files)}.out"
        size = copy_data_file(data_dir, name, target, max_file_bytes, MAX_OUTPUT_TOTAL_BYTES - total)
        if size is None:
            continue
        if size < 0:
            notes.append(f"[/mnt/data/{name} was not returned: output files exceed {MAX_OUTPUT_TOTAL_BYTES} bytes]")
            continue
        total += size
        files.append(OutputFile(name=name, is_image=is_image_name(name), path=target, size=size))
    return files, notes


def copy_data_file(data_dir: Path, name: str, target: Path, max_bytes: int, room: int) -> int | None:
    """Stream data_dir/name (no symlink followed) into `target`: its size, None if it is no regular
    file of at most max_bytes, -1 if it does not fit in `room`."""
    opened = _open_parent(data_dir, name)
    if opened is None:
        return None
    dir_fd, leaf = opened
    try:
        fd = os.open(leaf, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        if st.st_size > room:
            return -1
        copied = 0
        with open(target, "wb") as out:
            while copied <= max_bytes:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                copied += len(chunk)
        if copied > max_bytes or copied > room:
            target.unlink(missing_ok=True)
            return None if copied > max_bytes else -1
        return copied
    finally:
        os.close(fd)


def _read_regular(dir_fd: int, name: str, max_bytes: int) -> bytes | None:
    """Read a regular file of at most max_bytes in dir_fd; None otherwise."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.EACCES):
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        chunks: list[bytes] = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        return None if len(data) > max_bytes else data
    finally:
        os.close(fd)


def usage(data_dir: Path) -> int:
    """Bytes held by regular files under data_dir (allocated blocks; symlinks not followed)."""
    total = 0
    stack = [str(data_dir)]
    seen = 0
    while stack and seen < MAX_SCAN_ENTRIES * 10:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            seen += 1
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
            elif stat.S_ISREG(st.st_mode):
                total += max(st.st_size, st.st_blocks * 512)
    return total


def free_bytes(path: Path) -> int:
    """Space left for unprivileged writers on the filesystem holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def remove_files(data_dir: Path, names: list[str]) -> None:
    """Unlink data_dir/name for each name, never following a symlink on the way."""
    for name in names:
        opened = _open_parent(data_dir, name)
        if opened is None:
            continue
        dir_fd, leaf = opened
        try:
            os.unlink(leaf, dir_fd=dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)


def _open_parent(data_dir: Path, name: str) -> tuple[int, str] | None:
    """An fd of data_dir/name's directory, opened part by part without following a symlink, and
    the name's last part; None for a name with empty, `.` or `..` parts, or a path that fails.
    The caller closes the fd."""
    parts = name.split("/")
    if any(part in {"", ".", ".."} for part in parts):
        return None
    try:
        dir_fd = os.open(data_dir, _DIR_FLAGS)
    except OSError:
        return None
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
    except OSError:
        os.close(dir_fd)
        return None
    return dir_fd, parts[-1]
