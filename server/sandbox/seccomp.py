"""The seccomp filter every sandboxed process runs under: what Python's data stack never needs.

bubblewrap already gives the sandbox its own namespaces and no capabilities; this filter
also takes away the kernel interfaces that matter only to escapes and to attacks on the
kernel itself: tracing other processes, mounting, keyrings, BPF, perf events, io_uring,
module loading, and new namespaces (so `unshare -Ur` cannot make a root user inside,
whichever mode the sandbox runs in). A refused call fails with EPERM, as it would for an
unprivileged process, so well-behaved code sees an ordinary error; `clone3` answers
ENOSYS, which makes the C library fall back to `clone`, whose flags the filter can see.

The filter is compiled with libseccomp (through `pyseccomp`) once per process.
"""

from __future__ import annotations

import errno
import os
import tempfile
from functools import lru_cache

__all__ = ["DENIED_SYSCALLS", "NAMESPACE_FLAGS", "filter_program", "program_fd", "unavailable_reason"]

DENIED_SYSCALLS = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "name_to_handle_at",
    "open_by_handle_at",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "iopl",
    "ioperm",
    "lookup_dcookie",
    "fanotify_init",
    "syslog",
)

# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080)


@lru_cache(maxsize=1)
def filter_program() -> bytes | None:
    """The compiled BPF program for bwrap's `--seccomp`, or None where libseccomp is missing."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError):
        return None
    try:
        rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        for name in DENIED_SYSCALLS:
            try:
                rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
            except (RuntimeError, ValueError, OSError):
                continue  # a syscall this architecture does not have
        for flag in NAMESPACE_FLAGS:
            rules.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        with tempfile.TemporaryFile() as out:
            rules.export_bpf(out)
            out.seek(0)
            return out.read()
    except (RuntimeError, ValueError, OSError):
        return None


def unavailable_reason() -> str | None:
    """Why no filter can be built here, or None."""
    if filter_program() is not None:
        return None
    return "libseccomp is not available (pip install pyseccomp; apt-get install libseccomp2)"


def program_fd() -> int | None:
    """A pipe read end holding the filter, for `--seccomp FD` (closed by the caller after spawn)."""
    program = filter_program()
    if program is None:
        return None
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, program)  # a few hundred bytes: fits the pipe buffer
    finally:
        os.close(write_fd)
    return read_fd
