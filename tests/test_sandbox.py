"""Tests of the code_interpreter sandbox with real bubblewrap and real processes.

Limits are kept small so each runaway scenario ends in about a second.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from server.sandbox import (
    InputFile,
    SandboxLimits,
    SandboxManager,
    SandboxUnavailable,
    files,
    sandbox_status,
)
from server.sandbox import manager as manager_module
from server.sandbox.output import OutputCollector, sentinel_bytes
from server.sandbox.storage import DirectoryStorage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = SandboxLimits(wall_time_s=10.0, cpu_time_s=10, memory_bytes=1 << 30, max_processes=32, idle_expiry_s=600)

_reason = sandbox_status()
needs_bwrap = pytest.mark.skipif(_reason is not None, reason=f"sandbox unavailable: {_reason}")

Factory = Callable[..., SandboxManager]


@pytest_asyncio.fixture
async def make_manager(tmp_path: Path) -> AsyncIterator[Factory]:
    """Managers rooted in the test's tmp dir, all closed (process trees killed) afterwards."""
    made: list[SandboxManager] = []

    def factory(limits: SandboxLimits = FAST, allow_unsandboxed: bool = False, name: str = "work") -> SandboxManager:
        manager = SandboxManager(tmp_path / name, limits, allow_unsandboxed=allow_unsandboxed)
        made.append(manager)
        return manager

    yield factory
    for manager in made:
        await manager.aclose()


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


# --- pure units ------------------------------------------------------------
def test_collector_finds_sentinel_split_across_chunks() -> None:
    collector = OutputCollector(1000, "abc123")
    data = "héllo\n".encode() + sentinel_bytes("abc123") + b"after"
    for i in range(len(data)):  # byte by byte: every split point at once
        collector.feed(data[i : i + 1])
    assert collector.finished.is_set()
    assert collector.text() == "héllo\n"


def test_collector_caps_and_counts() -> None:
    collector = OutputCollector(1000)
    for _ in range(100):
        collector.feed(b"y" * 10_000)
    collector.close()
    text = collector.text()
    match = re.search(r"\[output truncated: (\d+) more characters\]", text)
    assert match is not None
    kept = len(text.replace(match.group(0), "").replace("\n", ""))
    assert kept + int(match.group(1)) == 1_000_000
    assert len(text) < 1100


def test_limits_validate() -> None:
    with pytest.raises(ValueError):
        SandboxLimits(wall_time_s=0)


# --- behaviour in the sandbox ----------------------------------------------
@needs_bwrap
@pytest.mark.asyncio
async def test_print_output(make_manager: Factory) -> None:
    result = await make_manager().execute("thread_a", "print('hello sandbox')")
    assert result.error is None
    assert result.logs == "hello sandbox\n"
    assert result.files == []
    assert result.duration_s > 0


@needs_bwrap
@pytest.mark.asyncio
async def test_traceback_sets_error(make_manager: Factory) -> None:
    code = "def f():\n    raise ValueError('boom')\nprint('before')\nf()"
    result = await make_manager().execute("thread_a", code)
    assert result.error == "ValueError: boom"
    assert result.logs.startswith("before\nTraceback (most recent call last):\n")
    assert "raise ValueError('boom')" in result.logs
    assert "kernel.py" not in result.logs  # the kernel's own frames are hidden


@needs_bwrap
@pytest.mark.asyncio
async def test_syntax_error(make_manager: Factory) -> None:
    result = await make_manager().execute("thread_a", "x = = 1")
    assert result.error is not None and result.error.startswith("SyntaxError")


@needs_bwrap
@pytest.mark.asyncio
async def test_variables_persist_and_last_expression_shown(make_manager: Factory) -> None:
    manager = make_manager()
    first = await manager.execute("thread_a", "x = 41")
    assert first.logs == "" and first.error is None
    second = await manager.execute("thread_a", "x + 1")
    assert second.logs == "42\n"
    third = await manager.execute("thread_a", "x + 1;")  # trailing semicolon hides it, like a notebook
    assert third.logs == ""


@needs_bwrap
@pytest.mark.asyncio
async def test_input_csv_with_pandas(make_manager: Factory) -> None:
    manager = make_manager()
    csv = InputFile("sales.csv", b"region,amount\nnorth,10\nsouth,32\n")
    code = "import pandas as pd\ndf = pd.read_csv('/mnt/data/sales.csv')\nprint(int(df['amount'].sum()))"
    result = await manager.execute("thread_a", code, [csv])
    assert result.error is None, result.logs
    assert result.logs == "42\n"
    assert result.files == []  # inputs are not echoed back as outputs
    data_file = manager.work_root / "thread_a" / "data" / "sales.csv"
    stamp = data_file.stat().st_mtime_ns
    await manager.execute("thread_a", "pass", [csv])
    assert data_file.stat().st_mtime_ns == stamp  # same content: not rewritten


@needs_bwrap
@pytest.mark.asyncio
async def test_matplotlib_show_yields_png(make_manager: Factory) -> None:
    manager = make_manager()
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [3, 1, 2])\nplt.title('t')\nplt.show()"
    result = await manager.execute("thread_a", code)
    assert result.error is None, result.logs
    images = [f for f in result.files if f.is_image]
    assert len(images) == 1
    assert images[0].data.startswith(PNG_SIGNATURE)
    assert images[0].name.endswith(".png")
    after = await manager.execute("thread_a", "plt.get_fignums()")
    assert after.logs == "[]\n"  # figures are closed after being captured
    assert after.files == []


@needs_bwrap
@pytest.mark.asyncio
async def test_written_files_are_returned(make_manager: Factory) -> None:
    manager = make_manager()
    code = (
        "import os\nos.makedirs('/mnt/data/sub', exist_ok=True)\n"
        "open('/mnt/data/report.txt', 'w').write('v1')\n"
        "open('sub/pic.png', 'wb').write(b'\\x89PNG\\r\\n\\x1a\\nfake')"  # cwd is /mnt/data
    )
    result = await manager.execute("thread_a", code)
    assert result.error is None, result.logs
    by_name = {f.name: f for f in result.files}
    report = by_name["report.txt"]
    assert (report.name, report.data, report.is_image, report.size) == ("report.txt", b"v1", False, 2)
    assert report.path is not None and report.path.parent.name == "outgoing"  # a copy, outside /mnt/data
    assert by_name["sub/pic.png"].is_image
    unchanged = await manager.execute("thread_a", "print(open('/mnt/data/report.txt').read())")
    assert unchanged.logs == "v1\n" and unchanged.files == []
    changed = await manager.execute("thread_a", "open('/mnt/data/report.txt', 'w').write('v2')")
    assert [(f.name, f.data) for f in changed.files] == [("report.txt", b"v2")]


@needs_bwrap
@pytest.mark.asyncio
async def test_symlink_in_data_dir_is_not_followed_by_host(make_manager: Factory, tmp_path: Path) -> None:
    host_secret = tmp_path / "host-secret.txt"
    host_secret.write_text("TOP SECRET")
    host_secret.chmod(0o644)
    result = await make_manager().execute("thread_a", f"import os\nos.symlink({str(host_secret)!r}, '/mnt/data/link')")
    assert result.error is None, result.logs
    assert all(b"TOP SECRET" not in f.data for f in result.files)
    assert [f.name for f in result.files] == []


@needs_bwrap
@pytest.mark.asyncio
async def test_no_network(make_manager: Factory) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        code = (
            "import socket\nprint(socket.if_nameindex())\n"
            "s = socket.socket()\ns.settimeout(2)\n"
            f"s.connect(('127.0.0.1', {port}))\nprint('CONNECTED')"
        )
        result = await make_manager().execute("thread_a", code)
    finally:
        listener.close()
    assert "[(1, 'lo')]" in result.logs
    assert "CONNECTED" not in result.logs
    assert result.error is not None and "ConnectionRefusedError" in result.error


@needs_bwrap
@pytest.mark.asyncio
async def test_timeout_interrupts_and_session_goes_on(make_manager: Factory) -> None:
    manager = make_manager(SandboxLimits(wall_time_s=1.0, cpu_time_s=10, max_processes=32))
    await manager.execute("thread_a", "kept = 'still here'")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    result = await manager.execute("thread_a", "while True:\n    pass")
    task.cancel()
    assert result.error == "Execution timed out after 1s"
    assert "timed out" in result.logs
    assert time.monotonic() - started < 5
    assert ticks >= 10  # the event loop kept running meanwhile
    after = await manager.execute("thread_a", "print('ok', kept)")
    assert after.error is None and after.logs == "ok still here\n"


@needs_bwrap
@pytest.mark.asyncio
async def test_timeout_kills_uninterruptible_code_and_restarts(make_manager: Factory) -> None:
    manager = make_manager(SandboxLimits(wall_time_s=1.0, cpu_time_s=10, max_processes=32))
    await manager.execute("thread_a", "lost = 1\nopen('/mnt/data/keep.txt', 'w').write('x')")
    code = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass"
    result = await manager.execute("thread_a", code)
    assert result.error == "Execution timed out after 1s"
    assert "Variables are lost; files in /mnt/data are kept." in result.logs
    after = await manager.execute("thread_a", "import os\nprint(os.path.exists('/mnt/data/keep.txt'))\nlost")
    assert after.logs.startswith("[The Python session was restarted because the previous call timed out")
    assert "True\n" in after.logs
    assert after.error == "NameError: name 'lost' is not defined"


@needs_bwrap
@pytest.mark.asyncio
async def test_memory_limit(make_manager: Factory) -> None:
    manager = make_manager(SandboxLimits(wall_time_s=10.0, memory_bytes=256 << 20, max_processes=32))
    big = await manager.execute("thread_a", "x = bytearray(10**11)")
    assert big.error is not None and big.error.startswith("Memory limit exceeded"), big.error
    assert "MemoryError" in big.logs
    growing = await manager.execute("thread_a", "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))")
    assert growing.error is not None and growing.error.startswith("Memory limit exceeded")
    after = await manager.execute("thread_a", "del chunks\nprint('alive')")
    assert after.logs == "alive\n"


@needs_bwrap
@pytest.mark.asyncio
async def test_fork_bomb_is_contained(make_manager: Factory) -> None:
    manager = make_manager(SandboxLimits(wall_time_s=5.0, cpu_time_s=10, max_processes=16))
    bomb = await manager.execute("thread_a", "import os\nwhile True:\n    os.fork()")
    assert bomb.error is not None and bomb.error.startswith("Process limit exceeded"), bomb.logs
    # A bomb whose children linger: they are stopped, so the budget comes back.
    code = "import os, time\nwhile True:\n    if os.fork() == 0:\n        time.sleep(60)"
    lingering = await manager.execute("thread_a", code)
    assert lingering.error is not None and lingering.error.startswith("Process limit exceeded")
    check = "import subprocess\nprint(subprocess.run(['echo', 'spawn ok'], capture_output=True, text=True).stdout)"
    after = await manager.execute("thread_a", check)
    assert after.error is None, after.logs
    assert "spawn ok" in after.logs
    # The host is not flooded: nothing of the session's uid runs beyond the kernel.
    uid = manager._sessions["thread_a"].uid
    if uid is not None:
        assert len(_pids_of_uid(uid)) <= 2


@needs_bwrap
@pytest.mark.asyncio
async def test_cpu_time_limit(make_manager: Factory) -> None:
    manager = make_manager(SandboxLimits(wall_time_s=20.0, cpu_time_s=1, max_processes=32))
    await manager.execute("thread_a", "kept = 3")
    result = await manager.execute("thread_a", "while True:\n    pass")
    assert result.error == "CPU time limit exceeded (1s)"
    after = await manager.execute("thread_a", "print(kept)")  # interrupted, not killed
    assert after.logs == "3\n"


@needs_bwrap
@pytest.mark.asyncio
async def test_kernel_crash_is_reported_and_session_restarts(make_manager: Factory) -> None:
    manager = make_manager()
    died = await manager.execute("thread_a", "import os\nprint('bye', flush=True)\nos._exit(3)")
    assert died.error == "Python process died unexpectedly (exit code 3)"
    assert died.logs.startswith("bye\n")
    killed = await manager.execute("thread_a", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert killed.error is not None and "SIGKILL" in killed.error
    after = await manager.execute("thread_a", "print('back')")
    assert after.logs.endswith("back\n") and "restarted" in after.logs


@needs_bwrap
@pytest.mark.asyncio
async def test_cancelled_call_kills_kernel_and_next_call_is_clean(make_manager: Factory) -> None:
    manager = make_manager()
    call = asyncio.create_task(manager.execute("thread_a", "import time\ntime.sleep(30)\nprint('late')"))
    await asyncio.sleep(0.5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    after = await manager.execute("thread_a", "print('next')")
    assert after.error is None
    assert "late" not in after.logs
    assert after.logs.endswith("next\n") and "cancelled" in after.logs


@needs_bwrap
@pytest.mark.asyncio
async def test_huge_output_is_truncated(make_manager: Factory) -> None:
    manager = make_manager(SandboxLimits(wall_time_s=20.0, max_output_chars=2_000))
    result = await manager.execute("thread_a", "print('x' * 10**7)\nprint('the end')")
    assert result.error is None
    match = re.search(r"\[output truncated: (\d+) more characters\]", result.logs)
    assert match is not None
    assert int(match.group(1)) > 10**7 - 2_000
    assert len(result.logs) < 2_200
    assert result.logs.endswith("the end\n")  # the tail is kept: that is where errors show up


@needs_bwrap
@pytest.mark.asyncio
async def test_sessions_are_isolated(make_manager: Factory) -> None:
    manager = make_manager()
    await manager.execute("thread_a", "secret_var = 7\nopen('/mnt/data/a_only.txt', 'w').write('a')")
    code = "import os\nprint(sorted(os.listdir('/mnt/data')))\nprint('secret_var' in globals())"
    result = await manager.execute("thread_b", code)
    assert result.logs == "[]\nFalse\n"
    both = await asyncio.gather(
        manager.execute("thread_a", "import time; time.sleep(0.3); print('a')"),
        manager.execute("thread_b", "import time; time.sleep(0.3); print('b')"),
    )
    assert [r.logs for r in both] == ["a\n", "b\n"]


@needs_bwrap
@pytest.mark.asyncio
async def test_server_data_and_env_are_hidden(
    make_manager: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_data = tmp_path / "threadlog-data"
    server_data.mkdir()
    (server_data / "keys.txt").write_text("sk-live-secret")
    (server_data / "keys.txt").chmod(0o644)
    server_data.chmod(0o755)
    monkeypatch.setenv("THREADLOG_API_KEYS", "sk-live-secret")
    manager = make_manager()
    code = (
        "import os\n"
        f"print(os.path.exists({str(server_data)!r}), os.path.exists({str(manager.work_root)!r}))\n"
        "print(os.environ.get('THREADLOG_API_KEYS'))\n"
        "print(any('secret' in v for v in os.environ.values()))\n"
        f"open({str(server_data / 'keys.txt')!r}).read()"
    )
    result = await manager.execute("thread_a", code)
    assert result.logs.startswith("False False\nNone\nFalse\n")
    assert "sk-live-secret" not in result.logs
    assert result.error is not None and result.error.startswith("FileNotFoundError")
    ident = await manager.execute("thread_a", "import os\nprint(os.getuid() != 0, os.geteuid() != 0)")
    assert ident.logs == "True True\n"


@needs_bwrap
@pytest.mark.asyncio
async def test_idle_session_expires_but_files_stay(make_manager: Factory) -> None:
    manager = make_manager(SandboxLimits(wall_time_s=5.0, idle_expiry_s=0.3, max_processes=32))
    await manager.execute("thread_a", "v = 1\nopen('/mnt/data/stay.txt', 'w').write('s')")
    for _ in range(40):
        await asyncio.sleep(0.1)
        if "thread_a" not in manager._sessions:
            break
    assert "thread_a" not in manager._sessions
    result = await manager.execute("thread_a", "print(open('/mnt/data/stay.txt').read())\nprint('v' in globals())")
    assert "because it was idle" in result.logs
    assert result.logs.endswith("s\nFalse\n")


@needs_bwrap
@pytest.mark.asyncio
async def test_close_and_aclose_kill_process_trees(make_manager: Factory) -> None:
    manager = make_manager()
    code = "import subprocess\np = subprocess.Popen(['sleep', '300'])\nprint('started')"
    await manager.execute("thread_a", code)
    await manager.execute("thread_b", code)
    procs = {sid: s.kernel.proc for sid, s in manager._sessions.items() if s.kernel is not None}
    uids = [s.uid for s in manager._sessions.values() if s.uid is not None]
    await manager.close_session("thread_a")
    assert procs["thread_a"].returncode is not None
    assert procs["thread_b"].returncode is None
    await manager.aclose()
    assert procs["thread_b"].returncode is not None
    for uid in uids:
        assert _pids_of_uid(uid) == []
    with pytest.raises(RuntimeError):
        await manager.execute("thread_b", "print(1)")


@needs_bwrap
@pytest.mark.asyncio
async def test_work_root_inside_a_readable_bind_is_refused(tmp_path: Path) -> None:
    manager = SandboxManager(Path(sys.prefix) / "threadlog-data", FAST)
    with pytest.raises(SandboxUnavailable, match="every sandbox can read"):
        await manager.execute("thread_a", "print(1)")
    await manager.aclose()


@needs_bwrap
@pytest.mark.asyncio
async def test_bad_names_rejected(make_manager: Factory) -> None:
    manager = make_manager()
    with pytest.raises(ValueError):
        await manager.execute("../escape", "print(1)")
    with pytest.raises(ValueError):
        await manager.execute("thread_a", "print(1)", [InputFile("../x.csv", b"1")])


@pytest.mark.asyncio
async def test_unavailable_sandbox_raises_or_runs_unsandboxed(
    make_manager: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without bwrap: a clear SandboxUnavailable, unless the operator opted in."""
    monkeypatch.setattr(manager_module, "probe", lambda mode: "bubblewrap (bwrap) is not installed")
    assert manager_module.sandbox_status() == "bubblewrap (bwrap) is not installed"
    assert manager_module.sandbox_status(allow_unsandboxed=True) is None
    with pytest.raises(SandboxUnavailable, match="bwrap"):
        await make_manager(name="strict").execute("thread_a", "print(1)")
    loose = make_manager(name="loose", allow_unsandboxed=True)
    result = await loose.execute("thread_a", "y = 2\nopen('out.txt', 'w').write('u')\nprint(y * 21)")
    assert result.error is None, result.logs
    assert result.logs == "42\n"
    assert [f.name for f in result.files] == ["out.txt"]


HARDENING_PROBE = """
import ctypes, errno, os, shutil, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
def refused(result):
    return result == -1 and ctypes.get_errno() == errno.EPERM
status = dict(line.split(':\\t', 1) for line in open('/proc/self/status').read().splitlines() if ':\\t' in line)
print('seccomp', status['Seccomp'].strip())
print('userns', refused(libc.unshare(0x10000000)))
print('ptrace', refused(libc.ptrace(16, 1, 0, 0)))  # PTRACE_ATTACH to the sandbox's init
print('keyctl', refused(libc.syscall(250, 0, 0, 0, 0, 0)))  # keyctl(KEYCTL_GET_KEYRING_ID)
print('bpf', refused(libc.syscall(321, 0, 0, 0)))
print('unshare_cmd', subprocess.run(['unshare', '-Ur', 'id', '-u'], capture_output=True).returncode != 0
      if shutil.which('unshare') else True)
t = threading.Thread(target=lambda: None); t.start(); t.join()
pid = os.fork()
if pid == 0:
    os._exit(7)
print('fork', os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print('subprocess', subprocess.run(['true']).returncode)
import numpy, pandas
print('numpy', int(numpy.arange(4).sum()), len(pandas.DataFrame({'a': [1, 2]})))
"""


@needs_bwrap
async def test_seccomp_refuses_what_the_data_stack_never_needs(make_manager: Factory) -> None:
    """Namespaces (no `unshare -Ur` root), ptrace, keyrings and BPF are refused; threads, fork,
    subprocesses and numpy/pandas work."""
    result = await make_manager().execute("hardening", HARDENING_PROBE)
    assert result.error is None, result.logs
    assert result.logs.splitlines() == [
        "seccomp 2",
        "userns True",
        "ptrace True",
        "keyctl True",
        "bpf True",
        "unshare_cmd True",
        "fork 7",
        "subprocess 0",
        "numpy 6 2",
    ]


MEMORY_HOG = """
import subprocess, sys
child = "import time; b = b'x' * (150 << 20); print('filled', flush=True); time.sleep(3)"
procs = [subprocess.Popen([sys.executable, '-c', child], stdout=subprocess.PIPE) for _ in range({n})]
print(sorted(p.wait() for p in procs))
"""


@needs_bwrap
async def test_a_session_s_processes_share_one_memory_cap(make_manager: Factory) -> None:
    """Three children of 150 MB each, every one under the 256 MiB per-process limit: together
    they pass the session's 384 MiB, and the cap stops them; two fit."""
    limits = SandboxLimits(
        wall_time_s=30.0, cpu_time_s=30, memory_bytes=256 << 20, session_memory_bytes=384 << 20, max_processes=32
    )
    manager = make_manager(limits)
    fits = await manager.execute("cgroup_fits", MEMORY_HOG.format(n=2))
    cap = manager.memory_cap
    if os.geteuid() == 0 or os.environ.get("CI") == "true":
        assert cap.startswith("cgroup"), cap
    if not cap.startswith("cgroup"):
        assert cap.startswith("address-space budget: 4 processes")
        return
    assert fits.logs.strip().splitlines()[-1] == "[0, 0]", fits.logs
    hog = await manager.execute("cgroup_hog", MEMORY_HOG.format(n=3))
    codes = hog.logs.strip().splitlines()[-1]
    assert "-9" in codes, hog.logs  # the kernel's OOM killer, inside the session's cgroup
    # The session goes on.
    after = await manager.execute("cgroup_hog", "print('alive')")
    assert after.logs.strip().endswith("alive")


@needs_bwrap
@pytest.mark.parametrize("storage", ["automatic", "directory"])
async def test_a_session_s_disk_quota_stops_the_call_that_passes_it(
    make_manager: Factory, tmp_path: Path, storage: str
) -> None:
    """Files of 8 MB each, every one under RLIMIT_FSIZE, against a 40 MiB quota. As root the
    session's /mnt/data is a 40 MiB filesystem: the write past it fails (ENOSPC). As a
    plain directory the watchdog stops the call and removes what it wrote. Either way
    earlier files stay and the session goes on."""
    limits = SandboxLimits(wall_time_s=30.0, cpu_time_s=30, disk_quota_bytes=40 << 20, idle_expiry_s=600)
    manager = SandboxManager(
        tmp_path / "quota-root", limits, storage=DirectoryStorage() if storage == "directory" else None
    )
    try:
        kept = await manager.execute("quota", "open('/mnt/data/kept.txt', 'w').write('small')")
        assert kept.error is None
        writer = (
            "import os, time\n"
            "for i in range(30):\n"
            "    with open(f'/mnt/data/big{i}.bin', 'wb') as f:\n"
            "        f.write(os.urandom(8 << 20))\n"
            "    time.sleep(0.05)\n"
            "print('wrote everything')"
        )
        result = await manager.execute("quota", writer)
        assert "wrote everything" not in result.logs
        data_dir = manager.work_root / "quota" / "data"
        if os.geteuid() == 0 and storage == "automatic":
            assert manager.disk_cap.startswith("a 40 MiB ext4 image"), manager.disk_cap
        if manager.disk_cap.startswith("a 40 MiB ext4 image"):
            assert "No space left on device" in result.logs
            assert 0 < files.usage(data_dir) <= 40 << 20
        else:
            assert result.error is not None and "disk quota of 40 MiB" in result.error
            assert sorted(os.listdir(data_dir)) == ["kept.txt"]
        after = await manager.execute("quota", "print(open('/mnt/data/kept.txt').read())")
        assert after.logs.strip().endswith("small")
        mountinfo = await manager.execute("quota", "print(open('/proc/self/mountinfo').read())")
        assert str(tmp_path) not in mountinfo.logs or storage == "directory"
        assert "server/sandbox" not in mountinfo.logs
    finally:
        await manager.aclose()
    assert not os.path.ismount(manager.work_root / "quota" / "data")


@needs_bwrap
async def test_no_call_runs_when_the_disk_is_nearly_full(make_manager: Factory) -> None:
    """A reserve larger than the free space: the call is refused before it runs, in words."""
    limits = SandboxLimits(wall_time_s=10.0, cpu_time_s=10, disk_reserve_bytes=1 << 60, idle_expiry_s=600)
    manager = make_manager(limits)
    result = await manager.execute("full", "open('/mnt/data/x', 'w').write('x'); print('ran')")
    assert result.error is not None and "disk is nearly full" in result.error
    assert "ran" not in result.logs
    assert not (manager.work_root / "full" / "data" / "x").exists()


@needs_bwrap
async def test_mountinfo_shows_no_host_paths(make_manager: Factory, tmp_path: Path) -> None:
    """The interpreter comes from its image, /mnt/data from its own filesystem, the kernel from
    a memfd: the sandbox's mount table names none of the server's host paths."""
    from server.sandbox import pyimage

    if os.geteuid() == 0 and (os.environ.get("CI") == "true" or (Path(sys.prefix) / pyimage.IMAGE_NAME).exists()):
        assert pyimage.image_root() is not None, "scripts/install should have built the interpreter image"
    if pyimage.image_root() is None:
        pytest.skip("no interpreter image here (not root, or scripts/install could not build it)")
    manager = make_manager()
    result = await manager.execute(
        "paths", "import sys\nprint(sys.prefix, sys.executable)\nprint(open('/proc/self/mountinfo').read())"
    )
    assert result.error is None, result.logs
    assert result.logs.splitlines()[0] == "/opt/venv /opt/venv/bin/python3"
    host = {
        os.path.realpath(sys.prefix),
        os.path.realpath(sys.base_prefix),
        str(Path(__file__).resolve().parents[1]),
        str(tmp_path),
    }
    for path in host:
        assert path not in result.logs, f"{path} is visible in the sandbox's mountinfo"
    numbers = await manager.execute("paths", "import numpy, pandas, matplotlib\nprint(int(numpy.ones(3).sum()))")
    assert numbers.logs.strip() == "3"


@needs_bwrap
@pytest.mark.asyncio
async def test_a_call_right_after_a_session_closes_sees_its_files(make_manager: Factory) -> None:
    """A new kernel for a session whose old one is still being stopped waits for that: the old
    one's /mnt/data is detached as it stops, which must not happen under the new kernel."""
    manager = make_manager(SandboxLimits(wall_time_s=5.0, max_processes=32))
    await manager.execute("thread_a", "open('/mnt/data/stay.txt', 'w').write('s')")
    for _ in range(3):
        _, result = await asyncio.gather(
            manager.close_session("thread_a"),
            manager.execute("thread_a", "print(open('/mnt/data/stay.txt').read())"),
        )
        assert result.error is None, result.logs
        assert result.logs.endswith("s\n")
