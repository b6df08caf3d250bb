"""scripts/install stops, with one line and a non-zero exit, when a step it needs fails.

The script runs for real in a copy of the repository, on a PATH of stubs: pip always works, apt
is locked (it fails the way apt-get does when unattended-upgrades holds the lock), and the
tools it probes for are present or not as each case says.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_TOOLS = ["bash", "dirname", "grep", "cat", "mkdir", "tail"]


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def _prepare(tmp_path: Path, present: set[str]) -> tuple[Path, dict[str, str]]:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "install", repo / "scripts" / "install")
    (repo / "tests" / "node").mkdir(parents=True)
    venv_bin = repo / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    _stub(venv_bin, "python", "exit 0")  # pip install ... and the sandbox image build succeed
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in _TOOLS:
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    _stub(bin_dir, "id", "echo 0")  # root: the script may use apt
    _stub(bin_dir, "apt-get", 'echo "E: Could not get lock /var/lib/dpkg/lock-frontend" >&2; exit 100')
    _stub(bin_dir, "ldconfig", "echo '\tlibseccomp.so.2 (libc6,x86-64) => /lib/libseccomp.so.2'")
    for tool in present:
        _stub(bin_dir, tool, "exit 0")
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    return repo, env


def _run(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(repo / "scripts" / "install"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        executable=shutil.which("bash"),
    )


def test_a_missing_sandbox_that_apt_cannot_install_fails_the_install(tmp_path: Path) -> None:
    repo, env = _prepare(tmp_path, present={"mksquashfs"})
    done = _run(repo, env)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        "scripts/install: could not install bubblewrap (code_interpreter's sandbox: "
        "E: Could not get lock /var/lib/dpkg/lock-frontend); "
        "install it (apt-get install bubblewrap) and run scripts/install again"
    ]
    assert "done" not in done.stdout


def test_everything_present_installs_and_says_so(tmp_path: Path) -> None:
    repo, env = _prepare(tmp_path, present={"bwrap", "mksquashfs"})
    done = _run(repo, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "scripts/install: done (.venv)"


def test_skipping_the_sandbox_is_explicit(tmp_path: Path) -> None:
    repo, env = _prepare(tmp_path, present=set())
    done = _run(repo, {**env, "THREADLOG_INSTALL_NO_SANDBOX": "1"})
    assert done.returncode == 0, done.stderr
    assert "bubblewrap" not in done.stderr


@pytest.mark.parametrize("missing", ["node", "npm"])
def test_test_extras_fail_without_the_node_sdk_toolchain(tmp_path: Path, missing: str) -> None:
    # chromium is probed at /usr/bin/chromium, which scripts/install --test put on this machine.
    assert os.path.exists("/usr/bin/chromium")
    repo, env = _prepare(tmp_path, present={"bwrap", "mksquashfs", "node", "npm"} - {missing})
    done = _run(repo, env, "--test")
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "scripts/install: could not install nodejs npm (the Node SDK test: "
        "E: Could not get lock /var/lib/dpkg/lock-frontend); "
        "install it (apt-get install nodejs npm) and run scripts/install again"
    ]
