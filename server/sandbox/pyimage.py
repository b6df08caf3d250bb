"""The interpreter the sandbox runs, from a read-only image of its own filesystem.

Bind mounts show their source's host path in the sandbox's `/proc/self/mountinfo` (the
"root" field is the path within the source filesystem, whatever the mount point). So the
Python installation and the virtualenv, bound from the host, would tell sandboxed code
where the server lives. `scripts/install` (as root, with squashfs-tools) packs both into
`<venv>/sandbox-python.sqfs`; the server mounts it read-only once and the sandbox binds
from there, at /opt/python and /opt/venv, so what mountinfo shows is paths inside the image.

Without the image (not root, no squashfs-tools, or packages installed after it was made)
the sandbox binds the host directories as before, and says so in the log.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

__all__ = ["IMAGE_NAME", "ImageRoot", "image_root", "release_image"]

log = logging.getLogger(__name__)

IMAGE_NAME = "sandbox-python.sqfs"
MANIFEST_NAME = "sandbox-python.json"
_TIMEOUT_S = 60


class ImageRoot:
    """Where the mounted image's trees are: the base installation and the venv's lib."""

    def __init__(self, mount: Path, base: Path, venv_lib: Path | None) -> None:
        self.mount = mount
        self.base = base
        self.venv_lib = venv_lib


@lru_cache(maxsize=1)
def image_root() -> ImageRoot | None:
    """Mount the image once (root only); None where there is none usable."""
    prefix = Path(sys.prefix)
    image, manifest_path = prefix / IMAGE_NAME, prefix / MANIFEST_NAME
    if os.geteuid() != 0 or not image.exists() or not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        base_name, lib_name = manifest["base"], manifest.get("venv_lib")
        if manifest.get("base_prefix") != os.path.realpath(sys.base_prefix):
            raise ValueError("the image was made for another interpreter")
        site = Path(sys.prefix) / "lib"
        if lib_name and site.exists() and _newest_mtime(site) > image.stat().st_mtime:
            raise ValueError("packages were installed after the image was made (run scripts/install again)")
        mount = Path(f"/run/threadlog/python-{os.getpid()}")
        mount.mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(mount):
            done = subprocess.run(
                ["mount", "-o", "loop,ro,nosuid,nodev", str(image), str(mount)], capture_output=True, timeout=_TIMEOUT_S
            )
            if done.returncode != 0:
                raise OSError(done.stderr.decode(errors="replace").strip())
            atexit.register(release_image)  # sandboxes still using it keep it alive in their namespaces
        base = mount / base_name
        venv_lib = mount / lib_name if lib_name else None
        if not (base / "bin").is_dir() or (venv_lib is not None and not venv_lib.is_dir()):
            raise ValueError("the image does not hold the interpreter")
        return ImageRoot(mount, base, venv_lib)
    except (OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        log.warning("code_interpreter binds the interpreter from the host (no image): %s", exc)
        return None


def release_image() -> None:
    """Unmount the image if this process mounted it (server shutdown)."""
    if image_root.cache_info().currsize == 0:
        return
    root = image_root()
    image_root.cache_clear()
    if root is not None and os.path.ismount(root.mount):
        subprocess.run(["umount", str(root.mount)], capture_output=True, timeout=_TIMEOUT_S)
        if not os.path.ismount(root.mount):
            with contextlib.suppress(OSError):
                root.mount.rmdir()


def _newest_mtime(site: Path) -> float:
    """The latest change among the venv's site-packages directories (an install touches them)."""
    newest = 0.0
    for packages in site.glob("python*/site-packages"):
        newest = max(newest, packages.stat().st_mtime)
    return newest


def build() -> int:
    """Pack this interpreter and its venv's lib into `<venv>/sandbox-python.sqfs` (scripts/install)."""
    base = os.path.realpath(sys.base_prefix)
    if base.startswith("/usr/"):
        print("sandbox image: a system Python under /usr is bound as it is; no image needed")
        return 0
    prefix = Path(sys.prefix)
    venv_lib = prefix / "lib" if os.path.realpath(sys.prefix) != base else None
    sources = [base] + ([str(venv_lib)] if venv_lib is not None else [])
    names = [os.path.basename(source.rstrip("/")) for source in sources]
    if len(set(names)) != len(names):
        print(f"sandbox image: sources {sources} share a name; not built", file=sys.stderr)
        return 1
    tmp = prefix / (IMAGE_NAME + ".part")
    cmd = ["mksquashfs", *sources, str(tmp), "-comp", "lz4", "-noappend", "-quiet", "-no-progress"]
    done = subprocess.run(cmd, capture_output=True)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        print(f"sandbox image: mksquashfs failed: {done.stderr.decode(errors='replace').strip()}", file=sys.stderr)
        return 1
    manifest = {"base": names[0], "venv_lib": names[1] if venv_lib is not None else None, "base_prefix": base}
    (prefix / MANIFEST_NAME).write_text(json.dumps(manifest))
    os.replace(tmp, prefix / IMAGE_NAME)
    print(f"sandbox image: {prefix / IMAGE_NAME} ({(prefix / IMAGE_NAME).stat().st_size >> 20} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(build())
