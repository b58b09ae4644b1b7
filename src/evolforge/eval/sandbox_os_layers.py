"""The sandbox child's OS layers: private mounts, rlimits, the drop to a per-run uid, Landlock and seccomp.

Not imported by the parent: :mod:`evolforge.eval.sandbox` passes ``sandbox_roles.py``'s text, then this file's,
then ``sandbox_child.py``'s to ``python -I -B -c``; the child calls :func:`_lock_down` before anything else. Each
layer is set up only where the parent's settings ask for it (the parent probed which ones this machine offers),
and one that was asked for and cannot be set up ends the process.
"""

import os


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
                     (resource.RLIMIT_FSIZE, cfg["file_mb"] * 1024 * 1024), (resource.RLIMIT_CORE, 0),
                     (resource.RLIMIT_NOFILE, cfg["open_files"]), (resource.RLIMIT_NPROC, cfg["nproc"])):
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
