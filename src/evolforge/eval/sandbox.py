"""Run untrusted, model-written Python in throwaway, resource-limited, offline child processes.

HumanEval and MBPP are scored by executing the code a model wrote; AutoIF runs model-written verification
functions. ``run_untrusted`` runs one program per call in a fresh interpreter::

    >>> run_untrusted("def add(a, b):\\n    return a + b", tests="assert add(2, 3) == 5").status
    'passed'
    >>> run_untrusted("def add(a, b):\\n    return a - b", tests="assert add(2, 3) == 5").status
    'failed'
    >>> run_untrusted("while True:\\n    pass", timeout_s=1).status
    'timeout'

**The verdict, with tests**, is never the program's to give: the program runs in one child (the *worker*), which
can only answer calls with plain data (JSON-like values; ``sandbox_roles.py`` states the rule for floats,
tuples, sets); the tests run in a second child (the *checker*) that never runs the program's code, gets those
values as plain Python objects, and writes a nonce, which the worker never sees, to this process once the tests'
last statement completed. ``passed`` needs that nonce: no exit status, finalizer, gc callback, signal handler,
``os._exit`` or ctypes call in the program's process, and no object with a lying ``__eq__``, can make one.
**Without tests**, ``passed`` means the program's last statement completed, as its own process reports (exit 0
after a lock only the end of the program releases): a status, not a verdict a hostile program cannot fake.

**Layers**, each used when the machine offers it (``isolation()`` says which are on; a missing one is logged
as a warning once per process, never silently). See ``docs/explanation/sandbox.md`` for what each one holds and when.

- namespaces (``unshare``): no network, its own pid namespace (every process of the run dies with it), its
  own mount namespace (fresh ``/proc``; empty ``/tmp``, ``/run``, ``/dev/shm``, so no host Unix socket there;
  the work directory a ``noexec`` tmpfs of ``WORK_QUOTA_MB`` / ``WORK_QUOTA_FILES``: the disk quota);
- an unprivileged, per-run uid when started as root, with ``RLIMIT_NPROC``; directories the uid may not
  traverse (a mode-700 ``/root`` holding the interpreter) are replaced, inside the mount namespace, by a
  tmpfs that holds only the interpreter's trees;
- Landlock: reads only of the interpreter, the allowed packages and system libraries; writes only in the
  work directory; no exec, no TCP, no signals out;
- seccomp: no new processes (threads only), no exec, no sockets at all (``socketpair`` only);
- rlimits (address space, CPU, file size, no core dumps) and a scrubbed environment (an allow-list);
- a PEP 578 audit hook: clear ``blocked`` statuses, and the introspection routes closed (gc, other threads'
  frames, tracing, ctypes, fresh builtin modules).

Every limit of a run, the defaults of those a caller sets and the fixed ones, is declared in
:mod:`evolforge.config.sandbox_limits`.
"""

from __future__ import annotations

import functools
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

from evolforge.config.bounds import Refusal
from evolforge.config.sandbox_limits import MEMORY_MB, PROGRAM_TIMEOUT_S
from evolforge.eval.sandbox_process import (DEFAULT_PACKAGES, ENV_ALLOWED, EXIT_BLOCKED, EXIT_SETUP, STDERR_TAIL_CHARS,
                                            UID_BASE, WORKER_GRACE_S, _Child, _end, _Layers, _start, _status,
                                            _writable_for_removal)

log = logging.getLogger(__name__)

STATUSES = ("passed", "failed", "timeout", "memory", "blocked", "error")
QUIET_POLL_S = 0.05  # how often a run with ``quiet_s`` looks at its stderr's size


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    status: str  # one of STATUSES
    stderr: str  # the last STDERR_TAIL_CHARS characters of stderr (with tests: the program's, then the tests')
    returncode: int | None  # None when it was killed at the time limit
    duration_s: float  # wall clock, seconds


# The isolation the sandbox is built on (network and pid namespaces, Landlock, seccomp) is Linux's; elsewhere
# model-written code is not run at all rather than run with rlimits and an audit hook alone.
SANDBOX_PLATFORMS = ("linux",)


def require_sandbox(purpose: str, platform: str = sys.platform) -> None:
    """Refuse, before any work, to run model-written code where the sandbox's isolation does not exist.

    >>> try:
    ...     require_sandbox("evaluate (humaneval)", platform="darwin")
    ... except Refusal as refused:
    ...     print(str(refused)[:71])
    evaluate (humaneval) runs model-written code, which evolforge runs only
    """
    if platform not in SANDBOX_PLATFORMS:
        raise Refusal(f"{purpose} runs model-written code, which evolforge runs only in its Linux sandbox (namespaces,"
                      f" Landlock, seccomp); this machine is {platform}: run this stage on Linux (a Linux VM or "
                      "container works)")


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
    require_sandbox("the code sandbox")
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


def run_untrusted(code: str, timeout_s: float = PROGRAM_TIMEOUT_S, memory_mb: int = MEMORY_MB, *,
                  tests: str | None = None, setup: str = "", calls: tuple[str, ...] | None = None,
                  packages: tuple[str, ...] = DEFAULT_PACKAGES, quiet_s: float | None = None) -> SandboxResult:
    """Run ``code`` in a fresh sandboxed interpreter; with ``tests``, judge it by them, outside its process.

    Without ``tests``: ``passed`` means the program's last statement completed within the limits. The program's
    own process says so, so it is no verdict that a hostile program could not fake (``docs/explanation/sandbox.md``).

    With ``tests``: the program runs in one child (the worker); the trusted ``setup``, then ``tests``, run in
    another (the checker), where each name in ``calls`` (default: each callable of the program that the tests
    name, unless a builtin or the setup binds that name) is a proxy that calls the program's function in the
    worker and gets back plain data only. ``passed`` only when the tests' last statement completed in the
    checker, which then writes a nonce that the program's process never sees.

    ``timeout_s`` is wall-clock seconds for the whole run; ``memory_mb`` caps each process's address space (MiB),
    which must leave room for the interpreter itself (about 30 MiB); ``packages`` are the third-party packages
    the program may import (everything else in site-packages is unreadable).

    ``quiet_s`` (without tests only): once the program has written to stderr, the longest it may then go without
    writing there; a run silent for longer stops as a ``timeout``. A program that writes a line per step (the
    verdict lines of :func:`evolforge.steps.common.function_runs.run_function`) so gets a time limit per step as
    well as ``timeout_s`` for the whole run, kept from outside its process (one that keeps writing is held by
    ``timeout_s`` alone).

        >>> run_untrusted("import os\\nos.write(2, b'begun\\\\n')\\nwhile True:\\n    pass", timeout_s=60,
        ...               quiet_s=1).duration_s < 30
        True
    """
    if tests is None:
        return _run(code, None, timeout_s, memory_mb, layers=_layers(), packages=packages, quiet_s=quiet_s)
    if quiet_s is not None:
        raise ValueError("quiet_s limits a program run without tests: with tests its stderr is the worker's")
    return _run_checked(code, tests, setup, calls, timeout_s, memory_mb, layers=_layers(), packages=packages)

def _run(code: str, tests: str | None, timeout_s: float, memory_mb: int, *, layers: _Layers,
         packages: tuple[str, ...], probe: bool = False, audit: bool = True,
         quiet_s: float | None = None) -> SandboxResult:
    """One child runs ``code`` (then ``tests``, in the same process: for probes and the OS-layer tests)."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="evolforge-sandbox-") as base:
        try:
            child = _start(base, "program", {"code": code, "tests": tests or ""}, timeout_s, memory_mb, layers,
                           packages, probe=probe, audit=audit)
        except OSError as e:
            return SandboxResult(False, "error", f"could not start the sandbox: {e}", None, 0.0)
        try:
            timed_out = not _ended(child, timeout_s, quiet_s)
        finally:
            _end(child)
        stderr = child.stderr()
        child.err.close()
        _writable_for_removal(base)
    rc = None if timed_out else child.proc.returncode
    status = _status(rc, timed_out, stderr)
    return SandboxResult(status == "passed", status, stderr, rc, round(time.monotonic() - start, 3))


def _ended(child: _Child, timeout_s: float, quiet_s: float | None) -> bool:
    """Wait for ``child`` to end: False when it ran past ``timeout_s``, or stayed silent on stderr for longer than
    ``quiet_s`` once it had written there (its stderr is a file: its size says when it last wrote)."""
    if quiet_s is None:
        try:
            child.proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    end = time.monotonic() + timeout_s
    size, heard = 0, None
    while True:
        now = time.monotonic()
        grown = os.fstat(child.err.fileno()).st_size
        if grown != size:
            size, heard = grown, now
        limit = end if heard is None else min(end, heard + quiet_s)
        if now >= limit:
            return False
        try:
            child.proc.wait(timeout=min(limit - now, QUIET_POLL_S))
            return True
        except subprocess.TimeoutExpired:
            pass


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
            _end(*children)
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
        _end(*children)
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
