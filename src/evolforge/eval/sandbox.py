"""Run untrusted, model-written Python in a throwaway, resource-limited, offline child process.

HumanEval and MBPP are scored by executing the code a model wrote. ``run_untrusted`` runs one program
(candidate + its tests) per call, each in a fresh interpreter, and reports whether it ran to the end::

    >>> run_untrusted("def add(a, b):\\n    return a + b\\nassert add(2, 3) == 5").status
    'passed'
    >>> run_untrusted("while True:\\n    pass", timeout_s=1).status
    'timeout'

Layers, outermost first (each one is used when the machine offers it; ``isolation()`` says which are on):

- **process**: its own session (the whole group is killed at the wall-clock limit), ``RLIMIT_AS`` (memory,
  MiB), ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (16 MiB per written file), no core dumps, a scrubbed environment,
  ``python -I -B`` (no user site, no ``PYTHON*`` variables, no bytecode writes);
- **network**: a fresh, empty network namespace (``unshare -n`` as root, ``unshare -r -n`` through a user
  namespace otherwise), Landlock denying TCP bind/connect (Linux >= 6.7), and inside the child
  ``socket.socket`` and friends replaced so that creating a socket ends the run as ``blocked``;
- **filesystem**: the working directory, ``HOME`` and ``TMPDIR`` are a ``tempfile.TemporaryDirectory`` removed
  afterwards; Landlock (Linux >= 5.13, unprivileged) allows writes, deletions and new files only beneath
  it; when run as root the child also drops to the ``nobody`` user, which owns only that directory; and a
  Python-level guard on ``open``, ``os.open``, ``os.remove``, ``os.rename``, ... ends the run as ``blocked``
  on any write outside it, and on ``os.system``, ``subprocess``, ``fork``, ``exec*``, ``kill``.

The Python guard gives clear statuses; the OS layers are what hold when code bypasses Python (``ctypes``
is unimportable for the candidate, but the OS layers do not rely on that). A run passes only when the
program reaches its end: ``exit(0)`` half way through is a failure, not a pass.
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
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Exit codes the child uses to say why it stopped (chosen to not collide with Python's own 0/1/2).
EXIT_BLOCKED = 86
EXIT_MEMORY = 87
EXIT_SETUP = 88  # an isolation layer that was asked for could not be set up
NOBODY = 65534
STDERR_TAIL_CHARS = 4000

STATUSES = ("passed", "failed", "timeout", "memory", "blocked", "error")


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    status: str  # one of STATUSES
    stderr: str  # the last STDERR_TAIL_CHARS characters the program wrote to stderr
    returncode: int | None  # None when it was killed at the time limit
    duration_s: float  # wall clock, seconds


# The child: reads its settings and the program from stdin, locks itself down, then runs the program.
_CHILD = r'''
import json, os, resource, sys
cfg = json.loads(sys.stdin.read())
sys.stdin.close()
_exit, _write = os._exit, os.write

mem = cfg["memory_mb"] * 1024 * 1024
for lim, val in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cfg["cpu_s"]),
                 (resource.RLIMIT_FSIZE, 16 * 1024 * 1024), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(lim, (val, val))

def _landlock(root):
    """Writes only beneath root; no TCP bind/connect; no signals or abstract sockets outside. Best effort."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return 0
    fs = 0b1_1111_1111_0010  # WRITE_FILE, REMOVE_DIR/FILE, MAKE_CHAR/DIR/REG/SOCK/FIFO/BLOCK/SYM
    if abi >= 2: fs |= 1 << 13   # REFER (link/rename across directories)
    if abi >= 3: fs |= 1 << 14   # TRUNCATE
    net = 0b11 if abi >= 4 else 0        # BIND_TCP, CONNECT_TCP
    scoped = 0b11 if abi >= 6 else 0     # abstract unix sockets, signals
    attr = (ctypes.c_uint64 * 3)(fs, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    rs = libc.syscall(444, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if rs < 0:
        return 0
    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]
    fd = os.open(root, os.O_PATH | os.O_CLOEXEC)
    rule = PathBeneath(fs, fd)
    ok = libc.syscall(445, rs, 1, ctypes.byref(rule), ctypes.c_uint32(0)) == 0
    os.close(fd)
    ok = ok and libc.prctl(38, 1, 0, 0, 0) == 0 and libc.syscall(446, rs, ctypes.c_uint32(0)) == 0
    os.close(rs)
    return abi if ok else 0

root = os.path.realpath(cfg["workdir"])
if cfg["landlock"] and not _landlock(root):
    _write(2, b"evolforge-sandbox: Landlock is not available\n")
    _exit(cfg["exit_setup"])
if cfg["drop_to"] is not None:
    os.setgroups([])
    os.setgid(cfg["drop_to"])
    os.setuid(cfg["drop_to"])
os.chdir(root)

def _violation(what):
    try:
        _write(2, ("evolforge-sandbox: blocked " + what + "\n").encode())
    finally:
        _exit(cfg["exit_blocked"])

def _real(path, dir_fd=None):
    if isinstance(path, int):  # an already-open descriptor: its opening was checked
        return None
    path = os.fsdecode(path)
    if dir_fd is not None and not os.path.isabs(path):
        path = os.path.join(os.readlink("/proc/self/fd/" + str(dir_fd)), path)
    return os.path.realpath(path)

def _inside(path, dir_fd=None):
    real = _real(path, dir_fd)
    return real is None or real == root or real.startswith(root + os.sep)

import builtins, io, posix  # os re-exports posix's functions: guard them in both places
_open = builtins.open
def _guarded_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+") and not _inside(file):
        _violation("write to " + repr(file))
    return _open(file, mode, *args, **kwargs)
builtins.open = io.open = _guarded_open

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_os_open = os.open
def _guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
    if flags & _WRITE_FLAGS and not _inside(path, dir_fd):
        _violation("write to " + repr(path))
    return _os_open(path, flags, mode, dir_fd=dir_fd)
os.open = posix.open = _guarded_os_open

def _guard_one(name):  # f(path, ..., dir_fd=None)
    real = getattr(os, name, None)
    def guarded(path, *args, **kwargs):
        if not _inside(path, kwargs.get("dir_fd")):
            _violation(name + "(" + repr(path) + ")")
        return real(path, *args, **kwargs)
    if real is not None:
        setattr(os, name, guarded)
        setattr(posix, name, guarded)

def _guard_two(name):  # f(src, dst, ..., src_dir_fd=None, dst_dir_fd=None); symlink's dst uses dir_fd
    real = getattr(os, name, None)
    def guarded(src, dst, *args, **kwargs):
        src_ok = name == "symlink" or _inside(src, kwargs.get("src_dir_fd"))
        if not (src_ok and _inside(dst, kwargs.get("dst_dir_fd", kwargs.get("dir_fd")))):
            _violation(name + "(" + repr(src) + ", " + repr(dst) + ")")
        return real(src, dst, *args, **kwargs)
    if real is not None:
        setattr(os, name, guarded)
        setattr(posix, name, guarded)

for _name in ("remove", "unlink", "rmdir", "mkdir", "chmod", "chown", "lchown", "truncate", "utime",
              "mkfifo", "mknod", "setxattr", "removexattr"):
    _guard_one(_name)
for _name in ("rename", "replace", "link", "symlink"):
    _guard_two(_name)

def _forbid(module, name):
    if hasattr(module, name):
        setattr(module, name, lambda *a, **k: _violation(name))

for _name in ("system", "popen", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execl", "execle",
              "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp",
              "spawnlpe", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "_exit"):
    _forbid(os, _name)
    _forbid(posix, _name)
import subprocess
for _name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
    _forbid(subprocess, _name)

import socket, _socket
class _NoSocket(socket.socket):
    def __init__(self, *args, **kwargs):
        _violation("socket")
socket.socket = socket.SocketType = _socket.socket = _NoSocket
for _name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo", "gethostbyname"):
    _forbid(socket, _name)
for _name in ("ctypes", "_ctypes", "multiprocessing", "_posixsubprocess"):
    sys.modules[_name] = None

try:
    exec(compile(cfg["code"], "<candidate>", "exec"), {"__name__": "candidate", "__builtins__": builtins})
except MemoryError:
    _write(2, b"evolforge-sandbox: MemoryError\n")
    _exit(cfg["exit_memory"])
except BaseException:  # the program failed: print why, exit non-zero (SystemExit included: no early pass)
    import traceback
    traceback.print_exc()
    sys.stderr.flush()
    _exit(1)
try:
    sys.stdout.flush()
    sys.stderr.flush()
finally:
    _write(cfg["token_fd"], cfg["token"].encode())
    _exit(0)
'''


def _probe(prefix: tuple[str, ...], drop_to: int | None, landlock: bool) -> bool:
    """Does a small program that imports from the standard library run and pass with these settings?"""
    try:
        result = _run("import fractions, heapq, json\nassert json.loads('[1]') == [1]", 20.0, 256,
                      prefix=prefix, drop_to=drop_to, landlock=landlock)
    except OSError:
        return False
    return result.passed


@dataclass(frozen=True)
class _Layers:
    prefix: tuple[str, ...]  # command that puts the child in a fresh network namespace, or ()
    drop_to: int | None  # uid/gid the child switches to (root only)
    landlock: bool


@functools.lru_cache(maxsize=1)
def _layers() -> _Layers:
    """Probe once per process, each layer with a real run, which OS-level layers this machine offers."""
    candidates = []
    if sys.platform == "linux" and shutil.which("unshare"):
        if os.geteuid() == 0:
            candidates.append(("unshare", "-n", "--"))
        candidates.append(("unshare", "-r", "-n", "--"))  # through a user namespace, for non-root users
    prefix = next((c for c in candidates if _probe(c, None, landlock=False)), ())
    # dropping to nobody needs real root (not root inside a user namespace) and a python nobody can read
    drop_to = NOBODY if os.geteuid() == 0 and "-r" not in prefix and _probe(prefix, NOBODY, False) else None
    landlock = sys.platform == "linux" and _probe(prefix, None, landlock=True)
    if not prefix:
        log.warning("sandbox: no network namespace (unshare unavailable); only Landlock (if any) and the "
                    "in-process socket guard keep untrusted code offline")
    if not landlock and drop_to is None:
        log.warning("sandbox: neither Landlock nor a privilege drop is available; writes outside the working "
                    "directory are stopped only by the in-process Python guard")
    return _Layers(prefix, drop_to, landlock)


def isolation() -> dict:
    """The OS-level layers in use here, for logs and metrics: {"network_namespace", "drop_to_uid", "landlock"}."""
    layers = _layers()
    return {"network_namespace": " ".join(layers.prefix[:-1]) or None, "drop_to_uid": layers.drop_to,
            "landlock": layers.landlock}


def run_untrusted(code: str, timeout_s: float = 10.0, memory_mb: int = 512) -> SandboxResult:
    """Run ``code`` in a fresh sandboxed interpreter; passed only if it runs to its end within the limits.

    ``timeout_s`` is wall-clock seconds for the whole run; ``memory_mb`` caps the address space (MiB), which
    must leave room for the interpreter itself (about 30 MiB).
    """
    layers = _layers()
    return _run(code, timeout_s, memory_mb, prefix=layers.prefix, drop_to=layers.drop_to, landlock=layers.landlock)


def _run(code: str, timeout_s: float, memory_mb: int, *, prefix: tuple[str, ...], drop_to: int | None,
         landlock: bool) -> SandboxResult:
    token = secrets.token_hex(16)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="evolforge-sandbox-") as workdir, tempfile.TemporaryFile() as err:
        if drop_to is not None:
            os.chown(workdir, drop_to, drop_to)
        read_fd, write_fd = os.pipe()
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cfg = {"code": code, "workdir": workdir, "memory_mb": int(memory_mb), "cpu_s": int(timeout_s) + 1,
               "drop_to": drop_to, "landlock": landlock, "token": token, "token_fd": write_fd,
               "exit_blocked": EXIT_BLOCKED, "exit_memory": EXIT_MEMORY, "exit_setup": EXIT_SETUP}
        try:
            proc = subprocess.Popen([*prefix, sys.executable, "-I", "-B", "-c", _CHILD], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=err, cwd=workdir, env=env,
                                    pass_fds=(write_fd,), start_new_session=True)
        except OSError as e:
            os.close(read_fd)
            os.close(write_fd)
            return SandboxResult(False, "error", f"could not start the sandbox: {e}", None, 0.0)
        os.close(write_fd)
        try:
            proc.communicate(json.dumps(cfg).encode(), timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        os.set_blocking(read_fd, False)  # a stray process that kept the write end must not hang us
        with os.fdopen(read_fd, "rb") as pipe:
            finished = (pipe.read(64) or b"").decode(errors="replace") == token
        err.seek(0)
        stderr = err.read().decode(errors="replace")[-STDERR_TAIL_CHARS:]
    rc = None if timed_out else proc.returncode
    if timed_out or rc == -signal.SIGXCPU:
        status = "timeout"
    elif rc == EXIT_SETUP:
        status = "error"
    elif rc == EXIT_BLOCKED:
        status = "blocked"
    elif rc == EXIT_MEMORY or "MemoryError" in stderr:
        status = "memory"
    elif rc == 0 and finished:
        status = "passed"
    else:
        status = "failed"
    return SandboxResult(status == "passed", status, stderr, rc, round(time.monotonic() - start, 3))
