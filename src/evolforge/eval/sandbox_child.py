"""The sandbox's child process: locks itself down, then plays one role. Not imported by the parent.

:mod:`evolforge.eval.sandbox` passes ``sandbox_roles.py``'s text followed by this file's to ``python -I -B -c``,
and the settings plus the code on stdin (JSON). Everything here runs before untrusted code and holds no secret.
Roles: ``program`` (a run without tests: it runs the code off the main thread and exits 0 only once the code's
last statement completed, see ``_run_program``), ``worker`` and ``checker`` (a run with tests: see ``sandbox_roles``;
there the verdict is the checker's nonce, never an exit status).
"""

import json
import os
import sys


def _libc():
    import ctypes
    return ctypes, ctypes.CDLL(None, use_errno=True)


def _mount(src, target, fstype, flags, data=None):
    ctypes, libc = _libc()
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    if libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        raise OSError(ctypes.get_errno(), f"mount {src} -> {target}: {os.strerror(ctypes.get_errno())}")


MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_BIND, MS_MOVE, MS_REC = 4096, 8192, 16384


HOST_SHARED_DIRS = ("/tmp", "/var/tmp", "/run", "/var/run", "/dev/shm")  # where host processes keep sockets


def _private_dirs(work, owner, quota_mb, files, keep=()):
    """Cover the host's shared directories with empty tmpfs (no Unix socket of the host is reachable by path)
    and make the work directory a fresh tmpfs of at most ``quota_mb`` MiB and ``files`` inodes (the disk quota),
    without exec, owned by ``owner`` (None: the current user). All of it lives in this mount namespace only.
    A shared directory holding one of the ``keep`` trees (the interpreter or its packages, e.g. a virtual
    environment under /tmp) stays as it is: seccomp still refuses every socket, so none of its sockets can be
    connected, and Landlock still limits reads to the read roots."""
    for path in HOST_SHARED_DIRS:
        if any(root == path or root.startswith(path + "/") for root in keep):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=64k,nr_inodes=64")
    try:
        os.makedirs(work, 0o755)
    except FileExistsError:
        pass
    ids = "" if owner is None else ",uid=%d,gid=%d" % (owner, owner)
    _mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           "mode=0700,size=%dm,nr_inodes=%d%s" % (quota_mb, files, ids))


def _expose(roots, stage):
    """Make ``roots`` reachable for an unprivileged user when an ancestor (e.g. a mode-700 ``/root``) is not.

    In this process's private mount namespace, each such ancestor is covered with an empty tmpfs (mode 755) and
    only the roots are bound back at their own paths: the interpreter keeps its paths, everything else that the
    ancestor held (a home directory's caches, tokens, keys) is simply absent for the program.
    """
    blocked = {}
    for root in roots:
        parts = root.strip("/").split("/")
        for i in range(1, len(parts)):
            anc = "/" + "/".join(parts[:i])
            if not os.stat(anc).st_mode & 0o001:  # others may not traverse it
                blocked.setdefault(anc, []).append(root)
                break
    for i, (anc, inner) in enumerate(sorted(blocked.items())):
        staged = []
        for j, root in enumerate(inner):
            where = os.path.join(stage, f"{i}-{j}")
            os.mkdir(where)
            _mount(root, where, None, MS_BIND | MS_REC)
            staged.append((root, where))
        _mount("tmpfs", anc, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
        for root, where in staged:
            os.makedirs(root, 0o755, exist_ok=True)
            _mount(where, root, None, MS_MOVE)
    return sorted(blocked)


def _landlock(work, read_dirs, read_files, list_dirs):
    """Reads only beneath ``read_dirs`` / of ``read_files``, every write beneath ``work``, no exec, no TCP,
    no signals or abstract unix sockets outside. Returns the Landlock ABI used, 0 when unavailable."""
    ctypes, libc = _libc()
    abi = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return 0
    execute, write, read_file, read_dir = 1, 2, 4, 8
    fs = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
    fs |= (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    net = 0b11 if abi >= 4 else 0  # BIND_TCP, CONNECT_TCP: no rule allows any port
    scoped = 0b11 if abi >= 6 else 0  # abstract unix sockets, signals
    attr = (ctypes.c_uint64 * 3)(fs, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    rs = libc.syscall(444, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if rs < 0:
        return 0

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    file_rights = execute | write | read_file | (1 << 14 if abi >= 3 else 0) | (1 << 15 if abi >= 5 else 0)
    rules = [(work, fs & ~execute)] + [(d, read_file | read_dir) for d in read_dirs]
    rules += [(d, read_dir) for d in list_dirs] + [(f, read_file | (write if f == "/dev/null" else 0))
                                                   for f in read_files]
    for path, access in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # not on this machine: nothing to allow
        if not os.path.isdir(path):
            access &= file_rights
        rule = PathBeneath(access, fd)
        ok = libc.syscall(445, rs, 1, ctypes.byref(rule), ctypes.c_uint32(0)) == 0
        os.close(fd)
        if not ok:
            return 0
    ok = libc.prctl(38, 1, 0, 0, 0) == 0 and libc.syscall(446, rs, ctypes.c_uint32(0)) == 0
    os.close(rs)
    return abi if ok else 0


# seccomp: syscall numbers per architecture (audit arch id, then name -> number)
_ARCHES = {
    "x86_64": (0xC000003E, {"fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "clone": 56, "clone3": 435,
                            "socket": 41, "seccomp": 317, "ptrace": 101, "process_vm_readv": 310,
                            "process_vm_writev": 311, "memfd_create": 319, "io_uring_setup": 425, "mount": 165,
                            "umount2": 166, "unshare": 272, "setns": 308, "bpf": 321, "perf_event_open": 298,
                            "userfaultfd": 323, "keyctl": 250, "add_key": 248, "request_key": 249,
                            "pidfd_getfd": 438, "personality": 135}),
    "aarch64": (0xC00000B7, {"execve": 221, "execveat": 281, "clone": 220, "clone3": 435, "socket": 198,
                             "seccomp": 277, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
                             "memfd_create": 279, "io_uring_setup": 425, "mount": 40, "umount2": 39,
                             "unshare": 97, "setns": 268, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
                             "keyctl": 219, "add_key": 217, "request_key": 218, "pidfd_getfd": 438,
                             "personality": 92}),
}
_KILL_PROCESS, _ALLOW, _ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
_EPERM, _ENOSYS, _EAFNOSUPPORT = 1, 38, 97


def _seccomp():
    """No new processes (threads only), no exec, no sockets (socketpair only), none of the kernel's sharper tools.

    Process creation and exec kill the whole process (SIGSYS); the rest fail with an errno. Returns success."""
    ctypes, libc = _libc()
    arch = _ARCHES.get(os.uname().machine)
    if arch is None:
        return False
    audit_arch, nr = arch
    ld_w, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
    prog = [(ld_w, 0, 0, 4), (jeq, 1, 0, audit_arch), (ret, 0, 0, _KILL_PROCESS), (ld_w, 0, 0, 0)]
    for name in ("fork", "vfork", "execve", "execveat"):
        if name in nr:
            prog += [(jeq, 0, 1, nr[name]), (ret, 0, 0, _KILL_PROCESS)]
    for name in ("seccomp", "ptrace", "process_vm_readv", "process_vm_writev", "memfd_create", "io_uring_setup",
                 "mount", "umount2", "unshare", "setns", "bpf", "perf_event_open", "userfaultfd", "keyctl",
                 "add_key", "request_key", "pidfd_getfd", "personality"):
        prog += [(jeq, 0, 1, nr[name]), (ret, 0, 0, _ERRNO | _EPERM)]
    # clone3 hides its flags in memory: refuse it so that the C library falls back to clone for threads
    prog += [(jeq, 0, 1, nr["clone3"]), (ret, 0, 0, _ERRNO | _ENOSYS)]
    prog += [(jeq, 0, 4, nr["clone"]), (ld_w, 0, 0, 16), (jset, 0, 1, 0x00010000),  # CLONE_THREAD
             (ret, 0, 0, _ALLOW), (ret, 0, 0, _KILL_PROCESS)]
    # no socket of any family: a filesystem Unix socket of the host cannot be connected without one (the
    # network namespace does not cover those, nor does Landlock); socketpair() still works
    prog += [(ld_w, 0, 0, 0), (jeq, 0, 1, nr["socket"]), (ret, 0, 0, _ERRNO | _EAFNOSUPPORT)]
    prog += [(ret, 0, 0, _ALLOW)]

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Filter))]

    filters = (Filter * len(prog))(*[Filter(*ins) for ins in prog])
    fprog = Prog(len(prog), filters)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    return libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


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


def _lock_down(cfg, work, resource, exit_now, write2):
    """The OS layers ``cfg`` asks for, in this order; one that cannot be set up ends the process (``exit_setup``)."""
    def fail_setup(what):
        write2(2, ("evolforge-sandbox: could not set up " + what + "\n").encode())
        exit_now(cfg["exit_setup"])

    if cfg["mounts"]:  # a private mount namespace (root, or root of a user namespace)
        try:
            if cfg["drop_to"] is not None:
                _expose(cfg["expose"], cfg["stage"])
            _private_dirs(work, cfg["drop_to"], cfg["quota_mb"], cfg["quota_files"],
                          [os.path.realpath(p) for p in (*cfg["expose"], *cfg["read_dirs"])])
        except OSError as e:
            fail_setup(f"mounts: {e}")
    mem = cfg["memory_mb"] * 1024 * 1024
    for lim, val in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cfg["cpu_s"]),
                     (resource.RLIMIT_FSIZE, 16 * 1024 * 1024), (resource.RLIMIT_CORE, 0),
                     (resource.RLIMIT_NOFILE, 256), (resource.RLIMIT_NPROC, cfg["nproc"])):
        resource.setrlimit(lim, (val, val))
    if cfg["drop_to"] is not None:
        try:
            os.setgroups([])
            os.setgid(cfg["drop_to"])
            os.setuid(cfg["drop_to"])
        except OSError as e:
            fail_setup(f"the drop to uid {cfg['drop_to']}: {e}")
    os.chdir(work)
    read_dirs, read_files, list_dirs = cfg["read_dirs"], cfg["read_files"], cfg["list_dirs"]  # the parent's read_roots
    if cfg["landlock"] and not _landlock(work, read_dirs, read_files, list_dirs):
        fail_setup("Landlock")
    if cfg["seccomp"] and not _seccomp():
        fail_setup("seccomp")
    if cfg["expect_uid"] is not None and os.getuid() != cfg["expect_uid"]:
        fail_setup(f"uid {cfg['expect_uid']} (running as {os.getuid()})")


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
