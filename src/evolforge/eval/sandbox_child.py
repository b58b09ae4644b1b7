"""The sandbox's child process: locks itself down, then plays one role. Not imported by the parent.

:mod:`evolforge.eval.sandbox` passes ``sandbox_roles.py``'s and ``sandbox_os_layers.py``'s text followed by this
file's to ``python -I -B -c``, and the settings plus the code on stdin (JSON). The OS layers are
``sandbox_os_layers``'s (:func:`_lock_down`); this file adds the audit hook and runs the role. Everything here
runs before untrusted code and holds no secret.
Roles: ``program`` (a run without tests: it runs the code off the main thread and exits 0 only once the code's
last statement completed, see ``_run_program``), ``worker`` and ``checker`` (a run with tests: see ``sandbox_roles``;
there the verdict is the checker's nonce, never an exit status).
"""

import json
import os
import sys

# the audit hook's tables; it binds them when made, so a worker's program that rebinds these names changes nothing
_BLOCK_PREFIXES = ("ctypes.", "socket.", "os.exec", "os.spawn", "os.posix_spawn", "cpython.")
_BLOCK = frozenset({"os.fork", "os.forkpty", "os.system", "os.kill", "os.killpg", "subprocess.Popen", "gc.get_objects",
                    "gc.get_referrers", "gc.get_referents", "sys._current_frames", "sys._current_exceptions",
                    "sys.settrace", "sys.setprofile", "code.__new__", "os.startfile", "pty.spawn", "sys.addaudithook"})
_PATH_EVENTS = frozenset({"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                          "os.truncate", "os.link", "os.symlink", "os.utime", "os.setxattr", "os.removexattr",
                          "shutil.rmtree", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
                          "shutil.move", "shutil.chown", "os.chflags", "os.lchflags", "os.mkfifo", "os.mknod"})
_NO_IMPORT = frozenset({"ctypes", "_ctypes", "_cffi_backend", "cffi", "_testcapi",
                        "_testinternalcapi", "_xxsubinterpreters", "_testmultiphase", "_ctypes_test"})


def _audit_hook(work, read_dirs, read_files, list_dirs, exit_blocked, exit_now, write2, getcwd):
    """A Python-level guard that the program cannot remove (PEP 578): clear statuses for what the OS layers
    also stop, and the closing of the introspection routes that could reach the verdict's machinery."""
    readable = tuple(read_dirs) + tuple(list_dirs) + (work,)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    # bound now: the program may rebind the builtins and this module's names, never these names
    str_, bytes_, int_, isinstance_, any_, getattr_, callable_ = str, bytes, int, isinstance, any, getattr, callable
    block_prefixes, block, no_import, path_events = _BLOCK_PREFIXES, _BLOCK, _NO_IMPORT, _PATH_EVENTS
    permission_error = PermissionError

    def norm(path):  # string-only normalisation: nothing the program can patch runs here
        if isinstance_(path, bytes_):
            path = path.decode("utf-8", "surrogateescape")
        if not isinstance_(path, str_):
            path = getattr_(path, "__fspath__", None)
            return None if path is None else norm(path() if callable_(path) else path)
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        out = []
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if out:
                    out.pop()
            else:
                out.append(part)
        return "/" + "/".join(out)

    def under(path, roots):
        return path is None or any_(path == r or path.startswith(r + "/") for r in roots)

    def blocked(what):
        write2(2, ("evolforge-sandbox: blocked " + what + "\n").encode("utf-8", "replace"))
        exit_now(exit_blocked)

    def hook(event, args):
        if event in block or event.startswith(block_prefixes):
            blocked(event)
        elif event == "import" and args[0].split(".")[0] in no_import:  # as if not installed: fallbacks work
            raise ModuleNotFoundError("evolforge-sandbox: no module named " + repr(args[0]))
        elif event == "open":
            path, mode, flags = args
            if isinstance_(path, int_):
                return
            real = norm(path)
            writes = (isinstance_(mode, str_) and any_(c in mode for c in "wax+")) or (
                isinstance_(flags, int_) and flags & write_flags)
            if writes and not under(real, (work,)):
                blocked("write to " + repr(path))
            if not (under(real, readable) or real in read_files):
                raise permission_error(13, "evolforge-sandbox: reading outside the sandbox", path)
        elif event in path_events:
            paths = args[1:2] if event == "os.symlink" else args
            for p in paths:
                if isinstance_(p, (str_, bytes_)) and not under(norm(p), (work,)):
                    blocked(event + "(" + repr(p) + ")")
    return hook


def _guard_exits(_imp, posix, audit):
    """Without tests the exit status says "ran to its end": make every ``_exit`` the program can find a blocked
    operation. First every builtin module is made to exist, so that nothing can make a fresh copy of one later
    (a fresh posix would hand out an unguarded _exit); then the program loses the ways to build or reload them.
    (A worker or checker needs none of it: their exit status is no verdict.)"""
    for name in sys.builtin_module_names:
        if name not in ("xxsubtype",):
            __import__(name)

    def no_builtin_modules(*args):
        raise ImportError("evolforge-sandbox: no new builtin modules")
    _imp.create_builtin = _imp.exec_builtin = no_builtin_modules
    real_exit = posix._exit
    fake_exit = lambda *args: audit("os.exec", "_exit")  # noqa: E731
    for mod in list(sys.modules.values()):
        for key, value in list(getattr(mod, "__dict__", {}).items()):
            if value is real_exit:
                setattr(mod, key, fake_exit)

def _run_program(program, tests, flushes, _thread, collections, exit_now, write2):
    """The ``program`` role: clear this module's names (then look none up), run ``program``, then ``tests``."""
    for name in [k for k in globals() if not k.startswith("__")]:  # nothing for `import __main__` to find
        del globals()[name]
    # The program runs in a thread whose stack holds no frame of ours (deque and map are C), so that no frame
    # it can see leads here; it cannot install signal handlers (main thread only). `done` is released by a
    # statement that runs only once the program's last statement completed; nothing the program can reach
    # refers to it. The main thread decides: exit 0 if it was released, 1 once the program's threads ended.
    # `started` is released by a first statement in that thread: a thread is counted only once it runs, so
    # the count is read only after it (on a busy machine a new thread may wait long to be scheduled).
    done, started = _thread.allocate_lock(), _thread.allocate_lock()
    done.acquire()
    started.acquire()
    # the tests are compiled on their own: the program cannot swallow them (an unclosed string, a block)
    namespace = {"__name__": "candidate", "__builtins__": __builtins__}
    run = map(exec, [compile("started()", "<evolforge-start>", "exec"), program, tests,
                     compile("release()", "<evolforge-end>", "exec")],
              [{"__builtins__": {}, "started": started.release}, namespace, namespace,
               {"__builtins__": {}, "release": done.release}])
    del program, tests, namespace
    acquire, alive = done.acquire, _thread._count

    def finish(status):
        for flush in flushes:
            try:
                flush()
            except BaseException:  # noqa: BLE001 - a closed stream must not change the verdict
                pass
        exit_now(status)
    try:
        _thread.start_new_thread(collections.deque, (run, 0))
        del run
        started.acquire()
        del started
        while True:
            if acquire(True, 0.02):
                finish(0)
            if alive() == 0:
                if acquire(False):
                    finish(0)
                break
    except BaseException:  # noqa: BLE001 - e.g. an interrupt the program sent to the main thread
        pass
    write2(2, b"evolforge-sandbox: the program did not run to its end\n")
    finish(1)


def _main():
    cfg = json.loads(sys.stdin.buffer.read())
    os.close(0)
    import _imp
    import _thread
    import collections
    import posix
    import resource
    import traceback

    exit_now, write2, getcwd = posix._exit, posix.write, posix.getcwd
    work = os.path.realpath(cfg["work"])
    _lock_down(cfg, work, resource, exit_now, write2)
    if cfg["role"] == "program":  # its exit status is its status: guard the ways to a clean early exit
        _guard_exits(_imp, posix, sys.audit)
    for mod in [m for m in list(sys.modules) if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[mod]
    if cfg["audit"]:  # off only in tests that show what the OS layers hold on their own
        sys.addaudithook(_audit_hook(work, cfg["read_dirs"], cfg["read_files"], cfg["list_dirs"],
                                     cfg["exit_blocked"], exit_now, write2, getcwd))
    if cfg["role"] != "program":  # a run with tests: the program's worker, or the tests' checker
        _run_role(cfg, traceback, exit_now)
    flushes = (sys.stdout.flush, sys.stderr.flush)  # the original streams, whatever the program rebinds
    try:
        program = compile(cfg["code"], "<candidate>", "exec")
    except BaseException:  # noqa: BLE001 - a syntax error (or a too deep one) fails the program
        traceback.print_exc()
        exit_now(1)
    try:
        tests = compile(cfg["tests"], "<tests>", "exec")
    except BaseException:  # noqa: BLE001 - broken tests are the caller's error, still not a pass
        traceback.print_exc()
        exit_now(cfg["exit_setup"])
    del cfg
    _run_program(program, tests, flushes, _thread, collections, exit_now, write2)


_main()
