"""Run untrusted, model-written Python in a throwaway, resource-limited, offline child process.

HumanEval and MBPP are scored by executing the code a model wrote. ``run_untrusted`` runs one program (and,
optionally, its tests as a separate piece) per call, each in a fresh interpreter, and reports whether it ran to
the end::

    >>> run_untrusted("def add(a, b):\\n    return a + b", tests="assert add(2, 3) == 5").status
    'passed'
    >>> run_untrusted("while True:\\n    pass", timeout_s=1).status
    'timeout'

**The verdict** is the child's exit status, read by this process: the child (``sandbox_child.py``) exits 0
only when a statement that runs after the tests' last statement releases a lock that nothing the program can
reach refers to; the program runs in a thread whose stack holds none of the harness's frames, the harness's
globals are emptied before it starts, and every ``_exit`` it can find is a blocked operation. No token or
secret exists in the child.

**Layers**, each used when the machine offers it (``isolation()`` says which are on; a missing one is logged
as a warning once per process, never silently). See ``docs/sandbox.md`` for what each one holds and when.

- namespaces (``unshare``): no network, its own pid namespace (every process of the run dies with it), its
  own mount namespace (fresh ``/proc``; the work directory is re-mounted ``noexec``);
- an unprivileged, per-run uid when started as root, with ``RLIMIT_NPROC``; directories the uid may not
  traverse (a mode-700 ``/root`` holding the interpreter) are replaced, inside the mount namespace, by a
  tmpfs that holds only the interpreter's trees;
- Landlock: reads only of the interpreter, the allowed packages and system libraries; writes only in the
  work directory; no exec, no TCP, no signals out;
- seccomp: no new processes (threads only), no exec, no sockets but AF_UNIX;
- rlimits (address space, CPU, file size, no core dumps) and a scrubbed environment (an allow-list);
- a PEP 578 audit hook: clear ``blocked`` statuses, and the introspection routes closed (gc, other threads'
  frames, tracing, ctypes, fresh builtin modules).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Exit codes the child uses to say why it stopped (chosen to not collide with Python's own 0/1/2).
EXIT_BLOCKED = 86
EXIT_MEMORY = 87
EXIT_SETUP = 88  # an isolation layer that was asked for could not be set up
STDERR_TAIL_CHARS = 4000
# Per-run uids when started as root: far above ordinary and subordinate-id ranges, never in /etc/passwd.
UID_BASE = 2_100_000_000
UID_SPAN = 1 << 20
NPROC = 16  # tasks (threads included) a run's uid may have: the harness uses two
DEFAULT_PACKAGES = ("numpy",)  # third-party packages a program may import (and read)
# The child's whole environment (nothing is inherited: no keys, tokens or proxies reach it).
ENV_ALLOWED = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CHILD_SOURCE = (Path(__file__).with_name("sandbox_child.py")).read_text()

STATUSES = ("passed", "failed", "timeout", "memory", "blocked", "error")


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    status: str  # one of STATUSES
    stderr: str  # the last STDERR_TAIL_CHARS characters the program wrote to stderr
    returncode: int | None  # None when it was killed at the time limit
    duration_s: float  # wall clock, seconds


@dataclass(frozen=True)
class _Layers:
    prefix: tuple[str, ...]  # command that puts the child in fresh namespaces, or ()
    pid_namespace: bool
    mounts: bool  # a private mount namespace the child may change
    drop: bool  # root: run as a fresh unprivileged uid
    landlock: bool
    seccomp: bool


_NS_FULL = ("--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--propagation", "private")


def _namespace_options() -> list[tuple[tuple[str, ...], bool]]:
    """Namespace commands to try, strongest first: (prefix, has pid + mount namespaces)."""
    if sys.platform != "linux" or not shutil.which("unshare"):
        return []
    user = () if os.geteuid() == 0 else ("--user", "--map-root-user")
    return [(("unshare", *user, *_NS_FULL, "--"), True), (("unshare", *user, "--net", "--"), False)]


def _probe(layers: _Layers) -> bool:
    """Does a small program that imports from the standard library pass with these layers?"""
    try:
        result = _run("import fractions, heapq, json\nassert json.loads('[1]') == [1]", None, 20.0, 256,
                      layers=layers, packages=(), probe=True)
    except OSError:
        return False
    if not result.passed:
        log.debug("sandbox probe %s: %s %s", layers, result.status, result.stderr[-500:])
    return result.passed


_probe_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _layers() -> _Layers:
    """Probe once per process, each layer with a real run, which layers this machine offers."""
    with _probe_lock:
        none = _Layers((), False, False, False, False, False)
        layers = next((lay for prefix, full in _namespace_options()
                       if _probe(lay := _Layers(prefix, full, full, False, False, False))), none)
        if os.geteuid() == 0:
            dropped = _Layers(layers.prefix, layers.pid_namespace, layers.mounts, True, False, False)
            if _probe(dropped):
                layers = dropped
        for field in ("landlock", "seccomp"):
            trial = _Layers(**{**layers.__dict__, field: True})
            if _probe(trial):
                layers = trial
        _warn_weaker(layers)
        return layers


def _warn_weaker(layers: _Layers) -> None:
    if not layers.prefix:
        log.warning("sandbox: no namespaces (unshare unavailable or refused): the network is closed only by "
                    "Landlock/seccomp (if any) and processes are killed by process group only")
    elif not layers.pid_namespace:
        log.warning("sandbox: no pid/mount namespace: processes are killed by process group (and by uid when "
                    "dropped), /proc shows the host's processes, the work directory allows exec")
    if os.geteuid() == 0 and not layers.drop:
        log.warning("sandbox: running as root and the drop to an unprivileged uid failed: untrusted code runs "
                    "as root, held only by the other layers, with no process limit")
    if not layers.landlock:
        log.warning("sandbox: no Landlock (Linux >= 5.13): reads and writes outside the work directory are "
                    "stopped only by %s and the in-process audit hook",
                    "file permissions of the unprivileged uid" if layers.drop else "nothing at the OS level")
    if not layers.seccomp:
        log.warning("sandbox: no seccomp filter: process creation and exec are stopped by the audit hook%s",
                    " and RLIMIT_NPROC" if layers.drop else "")


def isolation() -> dict:
    """The OS-level layers in use here, for logs and metrics."""
    layers = _layers()
    return {"network_namespace": " ".join(layers.prefix[:-1]) or None, "pid_namespace": layers.pid_namespace,
            "drop_to_uid": f"per-run uid >= {UID_BASE}" if layers.drop else None, "landlock": layers.landlock,
            "seccomp": layers.seccomp, "env": sorted(ENV_ALLOWED)}


def run_untrusted(code: str, timeout_s: float = 10.0, memory_mb: int = 512, *, tests: str | None = None,
                  packages: tuple[str, ...] = DEFAULT_PACKAGES) -> SandboxResult:
    """Run ``code`` (then ``tests``, compiled separately) in a fresh sandboxed interpreter; passed only if the
    last statement completes within the limits.

    ``timeout_s`` is wall-clock seconds for the whole run; ``memory_mb`` caps the address space (MiB), which
    must leave room for the interpreter itself (about 30 MiB); ``packages`` are the third-party packages the
    program may import (everything else in site-packages is unreadable).
    """
    return _run(code, tests, timeout_s, memory_mb, layers=_layers(), packages=packages)


def _count_processes(uid: int) -> int:
    n = 0
    for entry in os.listdir("/proc"):
        try:
            n += entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid
        except OSError:
            pass
    return n


def _kill_uid(uid: int) -> None:
    """Kill every process of a run's own uid (used where no pid namespace does it)."""
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid:
                os.kill(int(entry), signal.SIGKILL)
        except OSError:
            pass


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


def _run(code: str, tests: str | None, timeout_s: float, memory_mb: int, *, layers: _Layers,
         packages: tuple[str, ...], probe: bool = False, audit: bool = True) -> SandboxResult:
    start = time.monotonic()
    uid = UID_BASE + secrets.randbelow(UID_SPAN) if layers.drop else None
    with tempfile.TemporaryDirectory(prefix="evolforge-sandbox-") as base, tempfile.TemporaryFile() as err:
        work, stage = os.path.join(base, "work"), os.path.join(base, "stage")
        os.mkdir(work, 0o700)
        os.mkdir(stage, 0o700)
        if uid is not None:
            os.chmod(base, 0o711)  # the uid may pass through to its work directory, not list the rest
            os.chown(work, uid, uid)
        if uid is not None or os.geteuid() == 0:
            nproc = NPROC
        else:  # the limit counts all of this user's processes
            nproc = _count_processes(os.geteuid()) + NPROC
        cfg = {"code": code, "tests": tests or "", "work": work, "stage": stage, "memory_mb": int(memory_mb),
               "cpu_s": int(timeout_s) + 1, "nproc": nproc, "drop_to": uid, "expect_uid": uid if probe else None,
               "expose": _expose_roots(), "mounts": layers.mounts, "landlock": layers.landlock,
               "seccomp": layers.seccomp, "audit": audit, "packages": list(packages), "exit_blocked": EXIT_BLOCKED,
               "exit_setup": EXIT_SETUP}
        env = {**ENV_ALLOWED, "HOME": work, "TMPDIR": work}
        try:
            proc = subprocess.Popen([*layers.prefix, sys.executable, "-I", "-B", "-c", CHILD_SOURCE],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, cwd=work,
                                    env=env, start_new_session=True)
        except OSError as e:
            return SandboxResult(False, "error", f"could not start the sandbox: {e}", None, 0.0)
        try:
            proc.communicate(json.dumps(cfg).encode(), timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # pass or fail, nothing of the run outlives it
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            if uid is not None:  # the namespace's processes die with its pid 1, but asynchronously: wait for it
                deadline = time.monotonic() + 5
                while _count_processes(uid) and time.monotonic() < deadline:
                    _kill_uid(uid)
                    time.sleep(0.01)
        err.seek(0)
        stderr = err.read().decode(errors="replace")[-STDERR_TAIL_CHARS:]
        if uid is not None:  # files the uid created are removed with the directory; make sure we may
            for root, dirs, _files in os.walk(work):
                for d in dirs:
                    try:
                        os.chmod(os.path.join(root, d), 0o700)
                    except OSError:
                        pass
    rc = None if timed_out else proc.returncode
    status = _status(rc, timed_out, stderr)
    return SandboxResult(status == "passed", status, stderr, rc, round(time.monotonic() - start, 3))
