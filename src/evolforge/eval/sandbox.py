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
from typing import IO

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
# the child's script: its roles (worker, checker), then its lock-down and entry point
CHILD_SOURCE = "\n".join(Path(__file__).with_name(name).read_text() for name in ("sandbox_roles.py", "sandbox_child.py"))
# the work directory's disk quota, where a mount namespace allows a tmpfs (else only RLIMIT_FSIZE holds)
WORK_QUOTA_MB = 64
WORK_QUOTA_FILES = 2048
WORKER_GRACE_S = 1.0  # after a failed check: how long the worker may take to end, so its status is known

STATUSES = ("passed", "failed", "timeout", "memory", "blocked", "error")


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    status: str  # one of STATUSES
    stderr: str  # the last STDERR_TAIL_CHARS characters of stderr (with tests: the program's, then the tests')
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
                  setup: str = "", calls: tuple[str, ...] | None = None,
                  packages: tuple[str, ...] = DEFAULT_PACKAGES) -> SandboxResult:
    """Run ``code`` in a fresh sandboxed interpreter; with ``tests``, judge it by them, outside its process.

    Without ``tests``: ``passed`` means the program's last statement completed within the limits. The program's
    own process says so, so it is no verdict that a hostile program could not fake (``docs/sandbox.md``).

    With ``tests``: the program runs in one child (the worker); the trusted ``setup``, then ``tests``, run in
    another (the checker), where each name in ``calls`` (default: each callable of the program that the tests
    name, unless a builtin or the setup binds that name) is a proxy that calls the program's function in the
    worker and gets back plain data only. ``passed`` only when the tests' last statement completed in the
    checker, which then writes a nonce that the program's process never sees.

    ``timeout_s`` is wall-clock seconds for the whole run; ``memory_mb`` caps each process's address space (MiB),
    which must leave room for the interpreter itself (about 30 MiB); ``packages`` are the third-party packages
    the program may import (everything else in site-packages is unreadable).
    """
    if tests is None:
        return _run(code, None, timeout_s, memory_mb, layers=_layers(), packages=packages)
    return _run_checked(code, tests, setup, calls, timeout_s, memory_mb, layers=_layers(), packages=packages)


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
        nproc = NPROC
    else:  # the limit counts all of this user's processes
        nproc = _count_processes(os.geteuid()) + NPROC
    cfg = {**settings, "role": role, "work": work, "stage": stage, "memory_mb": int(memory_mb),
           "cpu_s": int(timeout_s) + 1, "nproc": nproc, "drop_to": uid, "expect_uid": uid if probe else None,
           "expose": _expose_roots(), "mounts": layers.mounts, "landlock": layers.landlock,
           "seccomp": layers.seccomp, "audit": audit, "packages": list(packages), "exit_blocked": EXIT_BLOCKED,
           "exit_setup": EXIT_SETUP, "quota_mb": WORK_QUOTA_MB, "quota_files": WORK_QUOTA_FILES}
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


def _end(child: _Child) -> None:
    """Kill everything the child started; pass or fail, nothing of a run outlives it."""
    try:
        os.killpg(child.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.proc.wait()
    if child.uid is not None:  # the namespace's processes die with its pid 1, but asynchronously: wait for it
        deadline = time.monotonic() + 5
        while _count_processes(child.uid) and time.monotonic() < deadline:
            _kill_uid(child.uid)
            time.sleep(0.01)


def _writable_for_removal(base: str) -> None:
    """Files a per-run uid created are removed with the directory; make sure we may."""
    for root, dirs, _files in os.walk(base):
        for d in dirs:
            try:
                os.chmod(os.path.join(root, d), 0o700)
            except OSError:
                pass


def _run(code: str, tests: str | None, timeout_s: float, memory_mb: int, *, layers: _Layers,
         packages: tuple[str, ...], probe: bool = False, audit: bool = True) -> SandboxResult:
    """One child runs ``code`` (then ``tests``, in the same process: for probes and the OS-layer tests)."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="evolforge-sandbox-") as base:
        try:
            child = _start(base, "program", {"code": code, "tests": tests or ""}, timeout_s, memory_mb, layers,
                           packages, probe=probe, audit=audit)
        except OSError as e:
            return SandboxResult(False, "error", f"could not start the sandbox: {e}", None, 0.0)
        try:
            child.proc.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _end(child)
        stderr = child.stderr()
        child.err.close()
        _writable_for_removal(base)
    rc = None if timed_out else child.proc.returncode
    status = _status(rc, timed_out, stderr)
    return SandboxResult(status == "passed", status, stderr, rc, round(time.monotonic() - start, 3))


def _run_checked(code: str, tests: str, setup: str, calls: tuple[str, ...] | None, timeout_s: float,
                 memory_mb: int, *, layers: _Layers, packages: tuple[str, ...],
                 audit: bool = True) -> SandboxResult:
    """The program in a worker, the tests in a checker; passed only when the checker's nonce arrives."""
    start, nonce = time.monotonic(), secrets.token_hex(16)
    calls_to, answers_to, verdict = os.pipe(), os.pipe(), os.pipe()  # (read end, write end) each
    children: list[_Child] = []
    with tempfile.TemporaryDirectory(prefix="evolforge-sandbox-") as base:
        try:
            children.append(_start(base, "worker", {"code": code, "read_fd": calls_to[0],
                                                    "write_fd": answers_to[1]}, timeout_s, memory_mb, layers,
                                   packages, pass_fds=(calls_to[0], answers_to[1]), audit=audit))
            checker_settings = {"tests": tests, "setup": setup, "calls": None if calls is None else list(calls),
                                "nonce": nonce, "read_fd": answers_to[0], "write_fd": calls_to[1],
                                "result_fd": verdict[1]}
            children.append(_start(base, "checker", checker_settings, timeout_s, memory_mb, layers, packages,
                                   pass_fds=(answers_to[0], calls_to[1], verdict[1]), audit=audit))
        except OSError as e:
            for child in children:
                _end(child)
            return SandboxResult(False, "error", f"could not start the sandbox: {e}", None, 0.0)
        finally:  # the children hold their ends now; ours would keep a dead peer's pipe open
            for fd in (*calls_to, *answers_to, verdict[1]):
                os.close(fd)
        worker, checker = children
        try:
            checker.proc.wait(timeout=max(0.0, timeout_s - (time.monotonic() - start)))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        said = _read_verdict(verdict[0])
        passed = not timed_out and checker.proc.returncode == 0 and said == nonce.encode()
        worker_rc = None
        if not passed and not timed_out:  # why not: the worker's own end (it leaves once the checker is gone)
            try:
                worker_rc = worker.proc.wait(timeout=WORKER_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        for child in children:
            _end(child)
        program_err, tests_err = worker.stderr(), checker.stderr()
        for child in children:
            child.err.close()
        _writable_for_removal(base)
    rc = None if timed_out else checker.proc.returncode
    status = "passed" if passed else _checked_status(rc, worker_rc, timed_out, program_err, tests_err)
    stderr = (program_err + "\n[evolforge-sandbox: the tests]\n" + tests_err)[-STDERR_TAIL_CHARS:]
    return SandboxResult(passed, status, stderr, rc, round(time.monotonic() - start, 3))


def _read_verdict(fd: int) -> bytes:
    """What the checker wrote on its verdict pipe (it has ended: nothing more will come)."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 256)
    except BlockingIOError:
        return b""
    finally:
        os.close(fd)


def _checked_status(rc: int | None, worker_rc: int | None, timed_out: bool, program_err: str,
                    tests_err: str) -> str:
    """Why a run with tests did not pass, from both children's ends (never "passed": that is the nonce's)."""
    if timed_out:
        return "timeout"
    if EXIT_SETUP in (rc, worker_rc):
        return "error"
    if worker_rc not in (None, 0):
        worker_status = _status(worker_rc, False, program_err)
        if worker_status in ("blocked", "memory", "timeout"):
            return worker_status
    if "MemoryError" in program_err or "MemoryError" in tests_err:
        return "memory"
    if rc in (-signal.SIGXCPU, -signal.SIGKILL, EXIT_BLOCKED, -signal.SIGSYS):
        return _status(rc, False, tests_err)
    return "failed"
