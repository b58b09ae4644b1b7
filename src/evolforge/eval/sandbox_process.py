"""The sandbox's child processes: start one locked-down child per role, read how it ended, leave nothing behind.

Used by :mod:`evolforge.eval.sandbox` (which decides the layers and the verdict); the child's own code is
``sandbox_roles.py`` + ``sandbox_os_layers.py`` + ``sandbox_child.py``, passed as text to ``python -I -B -c``.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from evolforge.config.sandbox_limits import FILE_MB, OPEN_FILES, PROCESSES, WORK_QUOTA_FILES, WORK_QUOTA_MB
from evolforge.eval.sandbox_roles import read_roots

# Exit codes the child uses to say why it stopped (chosen to not collide with Python's own 0/1/2).
EXIT_BLOCKED = 86
EXIT_MEMORY = 87
EXIT_SETUP = 88  # an isolation layer that was asked for could not be set up
STDERR_TAIL_CHARS = 4000
# Per-run uids when started as root: far above ordinary and subordinate-id ranges, never in /etc/passwd.
UID_BASE = 2_100_000_000
UID_SPAN = 1 << 20
DEFAULT_PACKAGES = ("numpy",)  # third-party packages a program may import (and read)
# The child's whole environment (nothing is inherited: no keys, tokens or proxies reach it).
ENV_ALLOWED = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# the child's script: its roles (worker, checker), its OS layers, then its audit hook and entry point (files beside
# this one, read as text: tools/stage_deps.py lists them as deps of every stage that imports this module)
CHILD_FILES = ("sandbox_roles.py", "sandbox_os_layers.py", "sandbox_child.py")
CHILD_SOURCE = "\n".join(Path(__file__).with_name(name).read_text() for name in CHILD_FILES)
WORKER_GRACE_S = 1.0  # after a failed check: how long the worker may take to end, so its status is known


@dataclass(frozen=True)
class _Layers:
    prefix: tuple[str, ...]  # command that puts the child in fresh namespaces, or ()
    pid_namespace: bool
    mounts: bool  # a private mount namespace the child may change
    drop: bool  # root: run as a fresh unprivileged uid
    landlock: bool
    seccomp: bool


def _count_processes(uid: int) -> int:
    n = 0
    for entry in os.listdir("/proc"):
        try:
            n += entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid
        except OSError:
            pass
    return n


def _kill_uids(uids: set[int]) -> set[int]:
    """Kill every process of the runs' own uids (one pass over /proc); return the uids that still had one."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and (uid := os.stat(f"/proc/{entry}").st_uid) in uids:
                found.add(uid)
                os.kill(int(entry), signal.SIGKILL)
        except OSError:
            pass
    return found


def _expose_roots() -> list[str]:
    """The interpreter's trees, which the per-run uid must be able to read."""
    roots = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, sys.prefix)})
    return [r for r in roots if not any(r != o and r.startswith(o + os.sep) for o in roots)]


def _status(rc: int | None, timed_out: bool, stderr: str) -> str:
    if timed_out or rc in (-signal.SIGXCPU, -signal.SIGKILL):  # RLIMIT_CPU ends pid 1 of a namespace by SIGKILL
        return "timeout"
    if rc == 0:
        return "passed"
    if rc == EXIT_SETUP:
        return "error"
    if rc in (EXIT_BLOCKED, -signal.SIGSYS):  # the audit hook, or seccomp killing a fork / exec
        return "blocked"
    if rc == EXIT_MEMORY or "MemoryError" in stderr:
        return "memory"
    return "failed"


@dataclass
class _Child:
    """One started child: its process, its per-run uid (or None) and the file its stderr goes to."""

    proc: subprocess.Popen
    uid: int | None
    err: IO[bytes]

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode(errors="replace")[-STDERR_TAIL_CHARS:]


def _start(base: str, role: str, settings: dict, timeout_s: float, memory_mb: int, layers: _Layers,
           packages: tuple[str, ...], pass_fds: tuple[int, ...] = (), probe: bool = False,
           audit: bool = True) -> _Child:
    """Start one locked-down child for ``role`` in a directory of its own under ``base`` (OSError if it can't)."""
    uid = UID_BASE + secrets.randbelow(UID_SPAN) if layers.drop else None
    home = os.path.join(base, role)
    work, stage = os.path.join(home, "work"), os.path.join(home, "stage")
    os.makedirs(work, 0o700)
    os.mkdir(stage, 0o700)
    if uid is not None:
        os.chmod(base, 0o711)  # the uid may pass through to its work directory, not list the rest
        os.chmod(home, 0o711)
        os.chown(work, uid, uid)
    if uid is not None or os.geteuid() == 0:
        nproc = PROCESSES
    else:  # the limit counts all of this user's processes
        nproc = _count_processes(os.geteuid()) + PROCESSES
    cfg = {**settings, "role": role, "work": work, "stage": stage, "memory_mb": int(memory_mb),
           "cpu_s": int(timeout_s) + 1, "nproc": nproc, "drop_to": uid, "expect_uid": uid if probe else None,
           "expose": _expose_roots(), "mounts": layers.mounts, "landlock": layers.landlock,
           "seccomp": layers.seccomp, "audit": audit, "packages": list(packages), "exit_blocked": EXIT_BLOCKED,
           "exit_setup": EXIT_SETUP, "quota_mb": WORK_QUOTA_MB, "quota_files": WORK_QUOTA_FILES,
           "file_mb": FILE_MB, "open_files": OPEN_FILES,
           **_read_roots(tuple(packages))}
    env = {**ENV_ALLOWED, "HOME": work, "TMPDIR": work}
    err = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen([*layers.prefix, sys.executable, "-I", "-B", "-c", CHILD_SOURCE],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, cwd=work, env=env,
                                start_new_session=True, pass_fds=pass_fds)
    except OSError:
        err.close()
        raise
    try:
        proc.stdin.write(json.dumps(cfg).encode())
        proc.stdin.close()
    except OSError:  # it died before reading its settings: its exit status tells why
        pass
    return _Child(proc, uid, err)


@functools.lru_cache(maxsize=8)
def _read_roots(packages: tuple[str, ...]) -> dict:
    read_dirs, read_files, list_dirs = read_roots(set(packages))
    return {"read_dirs": read_dirs, "read_files": read_files, "list_dirs": list_dirs}


def _end(*children: _Child) -> None:
    """Kill everything the children started; pass or fail, nothing of a run outlives it."""
    for child in children:
        try:
            os.killpg(child.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for child in children:
        child.proc.wait()
    uids = {child.uid for child in children} - {None}
    # the namespaces' processes die with their pid 1, but asynchronously: wait for them (all runs' at once)
    deadline = time.monotonic() + 5
    while uids and time.monotonic() < deadline:
        uids = _kill_uids(uids)
        if uids:
            time.sleep(0.002)


def _writable_for_removal(base: str) -> None:
    """Files a per-run uid created are removed with the directory; make sure we may."""
    for root, dirs, _files in os.walk(base):
        for d in dirs:
            try:
                os.chmod(os.path.join(root, d), 0o700)
            except OSError:
                pass
