"""Where a session's /mnt/data lives: a size-limited filesystem of its own, or a plain directory.

`LoopStorage` (root, where loop devices work) gives each session an ext4 image of
`disk_quota_bytes`, mounted at the session's data dir while its sandbox is alive. The
quota is then the filesystem's size (a write past it fails with ENOSPC inside the
sandbox), the image is sparse (it takes only what is written), and the sandbox's
`/proc/self/mountinfo` shows `/dev/loopN` mounted at `/mnt/data` instead of the host
path of the server's data dir. `DirectoryStorage` (any other user) is the plain
directory; there the manager's disk watchdog enforces the quota.

The manager attaches a session's storage before its kernel starts and detaches it after
the kernel is gone; files stay in the image between sessions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Protocol

__all__ = ["DirectoryStorage", "LoopStorage", "SessionStorage", "storage_for"]

log = logging.getLogger(__name__)

_MKFS = ["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "lazy_itable_init=1,nodiscard"]
_TIMEOUT_S = 30
_UNMOUNT_WAIT_S = 10.0


class SessionStorage(Protocol):
    kind: str

    def attach(self, session_dir: Path, quota_bytes: int) -> Path:
        """Make the session's data dir ready (and mounted) and return it."""

    def detach(self, session_dir: Path) -> None:
        """The session's processes are gone: release what `attach` took (files stay)."""


class DirectoryStorage:
    """A plain directory; the quota is the manager's watchdog."""

    kind = "directory"

    def attach(self, session_dir: Path, quota_bytes: int) -> Path:
        return session_dir / "data"

    def detach(self, session_dir: Path) -> None:
        return None


class LoopStorage:
    """An ext4 image per session, loop-mounted at its data dir while the session lives."""

    kind = "loop"

    def attach(self, session_dir: Path, quota_bytes: int) -> Path:
        data = session_dir / "data"
        image = session_dir / "data.img"
        session_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if os.path.ismount(data):
            return data  # still mounted (a server that was killed): reuse it
        if not image.exists():
            if data.is_dir() and any(data.iterdir()):
                return data  # files from before images existed: they stay a plain directory
            _make_image(image, quota_bytes)
            data.mkdir(exist_ok=True)
            _mount(image, data)
            with contextlib.suppress(OSError):
                (data / "lost+found").rmdir()
            return data
        data.mkdir(exist_ok=True)
        _wait_released(image)
        _mount(image, data)
        return data

    def detach(self, session_dir: Path) -> None:
        """Unmount, retrying while the dead sandbox's mount namespace still holds the mount.

        The kernel releases a namespace's mounts shortly after its last process exits
        (deferred work), so an unmount right after the sandbox died can be refused as busy.
        A lazy unmount would leave the old filesystem alive while the next attach mounts the
        image again, and two live mounts of one image lose writes: retry instead.
        """
        data = session_dir / "data"
        deadline = time.monotonic() + _UNMOUNT_WAIT_S
        while os.path.ismount(data):
            done = subprocess.run(["umount", str(data)], capture_output=True, timeout=_TIMEOUT_S)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                log.warning("could not unmount %s: %s", data, done.stderr.decode(errors="replace").strip())
                return
            time.sleep(0.05)


def storage_for(privileged: bool) -> SessionStorage:
    """Loop-mounted images where this server can make them (root, loop devices); else directories."""
    if privileged:
        reason = _loop_unavailable()
        if reason is None:
            return LoopStorage()
        log.warning("code_interpreter data dirs are plain directories: %s", reason)
    return DirectoryStorage()


@lru_cache(maxsize=1)
def _loop_unavailable() -> str | None:
    """Try a tiny image once: None if images can be made and mounted here, else why not."""
    if os.geteuid() != 0:
        return "loop mounts need root"
    with tempfile.TemporaryDirectory(prefix="threadlog-probe-") as tmp:
        image, target = Path(tmp) / "probe.img", Path(tmp) / "mnt"
        target.mkdir()
        try:
            _make_image(image, 8 << 20)
            _mount(image, target)
        except (OSError, subprocess.SubprocessError) as exc:
            return str(exc)
        subprocess.run(["umount", str(target)], capture_output=True, timeout=_TIMEOUT_S)
    return None


def _wait_released(image: Path) -> None:
    """Wait until no loop device still holds `image` (an earlier mount being torn down)."""
    deadline = time.monotonic() + _UNMOUNT_WAIT_S
    while True:
        held = subprocess.run(["losetup", "-j", str(image)], capture_output=True, timeout=_TIMEOUT_S)
        if held.returncode != 0 or not held.stdout.strip():
            return
        if time.monotonic() > deadline:
            raise OSError(f"{image.name} is still held by {held.stdout.decode(errors='replace').strip()}")
        time.sleep(0.05)


def _make_image(image: Path, size: int) -> None:
    tmp = image.with_suffix(".part")
    with open(tmp, "wb") as handle:
        handle.truncate(max(size, 8 << 20))  # sparse: blocks are taken only as files are written
    done = subprocess.run([*_MKFS, str(tmp)], capture_output=True, timeout=_TIMEOUT_S)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise OSError(f"mkfs.ext4 failed: {done.stderr.decode(errors='replace').strip()}")
    os.replace(tmp, image)


def _mount(image: Path, target: Path) -> None:
    done = subprocess.run(
        ["mount", "-o", "loop,nosuid,nodev", str(image), str(target)], capture_output=True, timeout=_TIMEOUT_S
    )
    if done.returncode != 0:
        raise OSError(f"mount of {image.name} failed: {done.stderr.decode(errors='replace').strip()}")
