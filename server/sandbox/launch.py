"""How a kernel process is started: the bwrap command line, and whether it can run.

Two sandboxed modes, chosen by who runs the server:

* root ("privileged"): bwrap creates the namespaces without a user namespace
  and runs `setpriv` to drop to a per-session host uid before Python starts.
  A user namespace mapped onto host root would be simpler, but RLIMIT_NPROC
  is never enforced for host uid 0, so a fork bomb would not be stopped.
* any other user ("userns"): plain unprivileged bwrap with a user namespace;
  the sandbox shares the server's host uid, so RLIMIT_NPROC is set to "what
  this uid already runs + max_processes".

In both, the sandbox sees only /usr (read-only), the Python installation and
virtualenv (read-only, at their host paths so the interpreter finds its
prefix), the kernel script, a private /mnt/data and small tmpfs /tmp and
/dev/shm. No network (own net namespace with only lo), a clean environment,
its own pid namespace (killing bwrap kills every process inside).

`unsandboxed` runs the same kernel as a plain subprocess with rlimits only,
for operators who opt in where bwrap cannot work.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from . import pyimage, seccomp

Mode = Literal["privileged", "userns", "unsandboxed"]

SANDBOX_DATA = "/mnt/data"
SANDBOX_KERNEL = "/opt/threadlog/kernel.py"
SANDBOX_INNER_ID = 65534  # uid/gid seen inside the user namespace (userns mode)
# Per-session host uids in privileged mode: far above any real account.
SANDBOX_UID_BASE = 1_600_000_000
SANDBOX_UID_SPAN = 1 << 20
PROBE_TIMEOUT_S = 20.0

KERNEL_SCRIPT = Path(__file__).with_name("kernel.py")


@dataclass
class LaunchSpec:
    """Everything needed to spawn one kernel."""

    argv: list[str]
    mode: Mode
    env: dict[str, str] | None = None  # None: bwrap sets the environment itself
    cwd: str | None = None
    pass_fds: list[int] = field(default_factory=list)  # closed by the caller after spawn
    info_fd: int | None = None  # read end of bwrap's --info-fd: the sandbox's pid-1 host pid


def kernel_env(python_bin_dirs: list[str]) -> dict[str, str]:
    """The sandbox's whole environment: nothing is inherited, so no key leaks in."""
    path = ":".join([*python_bin_dirs, "/usr/local/bin", "/usr/bin", "/bin"])
    return {
        "PATH": path,
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": "/tmp/matplotlib",
        "XDG_CACHE_HOME": "/tmp/.cache",
        # One BLAS thread: the machine is shared and each thread reserves
        # address space that would count against RLIMIT_AS.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_MAX_THREADS": "1",
    }


@lru_cache(maxsize=1)
def python_roots() -> tuple[tuple[str, ...], str]:
    """Directories the interpreter needs (read-only) and the executable to run.

    The server's own interpreter is reused, so packages installed for the
    server (numpy, pandas, matplotlib) import inside the sandbox too. /usr is
    bound anyway, so anything below it is left out.
    """
    executable = os.path.abspath(sys.executable)
    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    candidates.update(p for p in site.getsitepackages() if os.path.isdir(p))
    candidates.add(os.path.dirname(os.path.dirname(os.path.realpath(executable))))
    roots = sorted({os.path.realpath(p) for p in candidates} | {os.path.abspath(p) for p in candidates})
    kept: list[str] = []
    for root in roots:
        if not os.path.isdir(root) or _under(root, "/usr") or root == "/":
            continue
        if any(_under(root, other) for other in kept):
            continue
        kept.append(root)
    return tuple(kept), executable


SANDBOX_PYTHON = "/opt/python"  # the interpreter's installation, inside the sandbox (from the image)
SANDBOX_VENV = "/opt/venv"  # the virtualenv, inside the sandbox (from the image)


@dataclass(frozen=True)
class PythonLayout:
    """How the interpreter appears inside the sandbox: what is bound where, and what to run."""

    binds: tuple[tuple[str, str], ...]  # (source, sandbox path), read-only
    files: tuple[tuple[str, bytes], ...]  # (sandbox path, content)
    executable: str  # inside the sandbox
    bin_dirs: tuple[str, ...]
    env: tuple[tuple[str, str], ...]


def python_layout(image: pyimage.ImageRoot | None) -> PythonLayout:
    """From the mounted image (see pyimage.py) at /opt/python and /opt/venv, else the host's own paths."""
    if image is None:
        roots, executable = python_roots()
        bin_dirs = tuple(dict.fromkeys([os.path.dirname(executable), os.path.join(sys.base_prefix, "bin")]))
        return PythonLayout(tuple((root, root) for root in roots), (), executable, bin_dirs, ())
    name = os.path.basename(os.path.realpath(sys.executable))
    binds = [(str(image.base), SANDBOX_PYTHON)]
    # libpython's RUNPATH names its host directory; the sandbox's comes first.
    env = (("LD_LIBRARY_PATH", f"{SANDBOX_PYTHON}/lib"),)
    if image.venv_lib is None:
        executable = f"{SANDBOX_PYTHON}/bin/{name}"
        return PythonLayout(tuple(binds), (), executable, (f"{SANDBOX_PYTHON}/bin",), env)
    executable = f"{SANDBOX_VENV}/bin/python3"
    binds += [(str(image.venv_lib), f"{SANDBOX_VENV}/lib"), (str(image.base / "bin" / name), executable)]
    config = f"home = {SANDBOX_PYTHON}/bin\ninclude-system-site-packages = false\nversion = {sys.version.split()[0]}\n"
    files = ((f"{SANDBOX_VENV}/pyvenv.cfg", config.encode()),)
    return PythonLayout(tuple(binds), files, executable, (f"{SANDBOX_VENV}/bin", f"{SANDBOX_PYTHON}/bin"), env)


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def overlaps_sandbox_binds(path: Path) -> str | None:
    """The read-only bind that would expose `path` to every sandbox, if any."""
    real = os.path.realpath(path)
    for root in python_roots()[0]:
        if _under(real, root):
            return root
    if _under(real, "/usr"):
        return "/usr"
    return None


def session_uid(key: str, taken: set[int]) -> int:
    """A stable host uid for a session in privileged mode, unique among `taken`.

    Distinct uids keep RLIMIT_NPROC per session: one session's fork bomb
    does not use up another's budget.
    """
    slot = zlib.crc32(key.encode()) % SANDBOX_UID_SPAN
    for step in range(SANDBOX_UID_SPAN):
        uid = SANDBOX_UID_BASE + (slot + step) % SANDBOX_UID_SPAN
        if uid not in taken:
            return uid
    raise RuntimeError("no free sandbox uid")


def count_user_tasks(uid: int) -> int:
    """Threads owned by `uid` on the host: they count against its RLIMIT_NPROC."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as fh:
                real_uid = threads = -1
                for line in fh:
                    if line.startswith(b"Uid:"):
                        real_uid = int(line.split()[1])
                    elif line.startswith(b"Threads:"):
                        threads = int(line.split()[1])
            if real_uid == uid and threads > 0:
                total += threads
        except (OSError, ValueError, IndexError):
            continue
    return total


def _data_fd(content: bytes) -> int:
    """An fd holding `content` from offset 0, for bwrap's --ro-bind-data (a memfd: any size)."""
    fd = os.memfd_create("threadlog-data", os.MFD_CLOEXEC)
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _etc_files(uid: int, gid: int) -> dict[str, bytes]:
    return {
        "/etc/passwd": (
            f"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{uid}:{gid}:sandbox:/tmp:/bin/sh\n"
        ).encode(),
        "/etc/group": f"root:x:0:\nsandbox:x:{gid}:\n".encode(),
        "/etc/hosts": b"127.0.0.1 localhost sandbox\n::1 localhost\n",
    }


def bwrap_argv(
    mode: Mode,
    *,
    data_dir: Path | None,
    uid: int | None,
    tmpfs_bytes: int,
    kernel_args: list[str],
) -> tuple[list[str], list[int]]:
    """The full bwrap command line and the fds it must inherit.

    `data_dir` None builds the probe command (no /mnt/data).
    """
    bwrap = shutil.which("bwrap") or "bwrap"
    layout = python_layout(pyimage.image_root())
    fds: list[int] = []
    argv = [bwrap]
    if mode == "privileged":
        argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        # setpriv needs these to drop to the session uid; it then clears all caps.
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
        inner_uid = inner_gid = uid if uid is not None else SANDBOX_INNER_ID
    else:
        argv += ["--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
        argv += ["--unshare-cgroup-try", "--disable-userns"]
        argv += ["--uid", str(SANDBOX_INNER_ID), "--gid", str(SANDBOX_INNER_ID)]
        inner_uid = inner_gid = SANDBOX_INNER_ID
    argv += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--perms", "1777", "--size", str(tmpfs_bytes), "--tmpfs", "/tmp"]
    argv += ["--perms", "1777", "--size", str(min(tmpfs_bytes, 64 << 20)), "--tmpfs", "/dev/shm"]
    argv += ["--perms", "0755", "--dir", "/etc"]
    for etc in ("/etc/ld.so.cache", "/etc/localtime", "/etc/fonts"):
        argv += ["--ro-bind-try", etc, etc]
    for dest, content in _etc_files(inner_uid, inner_gid).items():
        fd = _data_fd(content)
        fds.append(fd)
        argv += ["--perms", "0644", "--ro-bind-data", str(fd), dest]
    # bwrap would create missing parents 0700 (root-owned in privileged mode):
    # create each explicitly world-traversable.
    made: set[str] = {"/", "/usr", "/etc", "/tmp", "/dev", "/proc"}
    targets = [dest for _, dest in layout.binds] + [dest for dest, _ in layout.files] + [SANDBOX_KERNEL]
    targets += [SANDBOX_DATA] if data_dir is not None else []
    for target in targets:
        for parent in reversed(Path(target).parents):
            text = str(parent)
            if text not in made:
                made.add(text)
                argv += ["--perms", "0755", "--dir", text]
    for source, dest in layout.binds:
        argv += ["--ro-bind", source, dest]
    for dest, content in layout.files:
        fd = _data_fd(content)
        fds.append(fd)
        argv += ["--perms", "0644", "--ro-bind-data", str(fd), dest]
    # The kernel's source as data, not a bind of its host path (which mountinfo would show).
    kernel_fd = _data_fd(KERNEL_SCRIPT.read_bytes())
    fds.append(kernel_fd)
    argv += ["--perms", "0444", "--ro-bind-data", str(kernel_fd), SANDBOX_KERNEL]
    if data_dir is not None:
        argv += ["--bind", str(data_dir), SANDBOX_DATA, "--chdir", SANDBOX_DATA]
    else:
        argv += ["--chdir", "/tmp"]
    argv += ["--remount-ro", "/"]
    seccomp_fd = seccomp.program_fd()
    if seccomp_fd is not None:
        fds.append(seccomp_fd)
        argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--clearenv"]
    for key, value in [*kernel_env(list(layout.bin_dirs)).items(), *layout.env]:
        argv += ["--setenv", key, value]
    argv += ["--"]
    if mode == "privileged":
        setpriv = os.path.realpath(shutil.which("setpriv") or "/usr/bin/setpriv")
        argv += [setpriv, f"--reuid={inner_uid}", f"--regid={inner_gid}", "--clear-groups"]
        argv += ["--inh-caps=-all", "--bounding-set=-all", "--"]
    argv += [layout.executable, "-I", *kernel_args]
    return argv, fds


def build_launch(
    mode: Mode,
    *,
    data_dir: Path,
    uid: int | None,
    tmpfs_bytes: int,
    kernel_config: dict[str, Any],
) -> LaunchSpec:
    """The spawn recipe for one session's kernel."""
    if mode == "unsandboxed":
        _, executable = python_roots()
        config = dict(kernel_config, data_dir=str(data_dir))
        env = kernel_env([os.path.dirname(executable)])
        env["HOME"] = env["TMPDIR"] = str(data_dir)
        env["MPLCONFIGDIR"] = str(data_dir.parent / "mplconfig")
        argv = [executable, "-I", str(KERNEL_SCRIPT), json.dumps(config)]
        return LaunchSpec(argv=argv, mode=mode, env=env, cwd=str(data_dir))
    config = dict(kernel_config, data_dir=SANDBOX_DATA, sandboxed=True)
    argv, fds = bwrap_argv(
        mode, data_dir=data_dir, uid=uid, tmpfs_bytes=tmpfs_bytes, kernel_args=[SANDBOX_KERNEL, json.dumps(config)]
    )
    # bwrap reports the host pid of the namespace's init here; once that
    # process is gone, the kernel guarantees every process inside is gone.
    info_read, info_write = os.pipe()
    os.set_blocking(info_read, False)
    argv[1:1] = ["--info-fd", str(info_write)]
    return LaunchSpec(argv=argv, mode=mode, env={}, pass_fds=[*fds, info_write], info_fd=info_read)


def preferred_mode() -> Mode:
    """Privileged when the server is root (see module docstring), else userns."""
    return "privileged" if os.geteuid() == 0 else "userns"


@lru_cache(maxsize=4)
def probe(mode: Mode) -> str | None:
    """Start a throwaway sandbox once; None if it works, else why not."""
    if not sys.platform.startswith("linux"):
        return "the code_interpreter sandbox needs Linux (bubblewrap)"
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed; install it (Debian/Ubuntu: apt-get install bubblewrap)"
    if mode == "privileged":
        setpriv = shutil.which("setpriv")
        if setpriv is None or not _under(os.path.realpath(setpriv), "/usr"):
            return "setpriv (util-linux) is missing under /usr; it is needed to drop root inside the sandbox"
    script = "import os,sys; sys.stdout.write(str(os.getuid()))"
    argv, fds = bwrap_argv(mode, data_dir=None, uid=None, tmpfs_bytes=16 << 20, kernel_args=["-c", script])
    try:
        proc = subprocess.run(
            argv, pass_fds=fds, capture_output=True, timeout=PROBE_TIMEOUT_S, env={}, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not be started: {exc}"
    finally:
        for fd in fds:
            os.close(fd)
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        reason = detail[-1] if detail else f"exit code {proc.returncode}"
        hint = ""
        if mode == "userns" and ("namespace" in reason or "Operation not permitted" in reason):
            hint = " (unprivileged user namespaces look blocked: check kernel.unprivileged_userns_clone,"
            hint += " user.max_user_namespaces or the AppArmor userns restriction)"
        elif mode == "privileged":
            hint = " (as root the sandbox needs CAP_SYS_ADMIN; otherwise run the server as an unprivileged user)"
        return f"bubblewrap sandbox failed to start: {reason}{hint}"
    if mode == "privileged" and proc.stdout.strip() == b"0":
        return "the sandbox would run as host root; refusing"
    return None
