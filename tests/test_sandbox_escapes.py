"""Escape attempts against the sandbox: each is contained, scored as a failure, and leaves nothing behind.

The tests given to every forging attempt fail (``assert 1 == 2``): a "passed" would be a forged verdict.
Loops are bounded; sockets go to loopback only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from evolforge.eval import sandbox
from processes import descendants as _descendants, sandbox_uid_processes as _sandbox_uid_processes
from evolforge.eval.sandbox import isolation, run_untrusted
from evolforge.eval.sandbox_process import ENV_ALLOWED

pytestmark = pytest.mark.usefixtures("sandbox_checks_alone")  # conftest.py

FAILING_TESTS = "assert 1 == 2\n"

FORGERIES = {
    # the reported attack: the old harness's globals through __main__
    "main_globals": "import __main__, os\ncfg = getattr(__main__, 'cfg', None)\n"
                    "if cfg: os.write(cfg['token_fd'], cfg['token'].encode())\n"
                    "for name in dir(__main__):\n"
                    "    if 'exit' in name: getattr(__main__, name)(0)\n",
    "main_module_dict": "import sys\nfor v in list(vars(sys.modules['__main__']).values()):\n"
                        "    if callable(v) and getattr(v, '__name__', '') == '_exit': v(0)\n",
    "os_exit": "import os\nos._exit(0)",
    "posix_reimport": "import sys\ndel sys.modules['posix']\nimport posix\nposix._exit(0)",
    "import_module": "import sys, importlib\ndel sys.modules['posix']\nimportlib.import_module('posix')._exit(0)",
    "reload": "import importlib, posix\nimportlib.reload(posix)._exit(0)",
    "create_builtin": "import _imp, importlib.machinery as m\n_imp.create_builtin(m.ModuleSpec('posix', None))._exit(0)",
    "sys_exit": "import sys\nsys.exit(0)",
    "raise_systemexit_rebound": "import builtins\nbuiltins.BaseException = int\nraise SystemExit(0)",
    "frames_upward": "import sys\nf = sys._getframe()\nwhile f.f_back is not None:\n    f = f.f_back\n"
                     "for v in list(f.f_globals.values()):\n    if callable(v) and 'release' in repr(v): v()\n",
    "gc_scan": "import gc\nfor o in gc.get_objects():\n    if isinstance(o, dict) and 'release' in o: o['release']()\n",
    "other_threads_frames": "import sys\nfor f in sys._current_frames().values():\n"
                            "    f.f_locals.get('exit_now', print)(0)\n",
    "trace_skips_assert": "import sys\ndef t(frame, event, arg):\n"
                          "    if event == 'line' and frame.f_code.co_filename == '<tests>': frame.f_lineno += 1\n"
                          "    return t\nsys.settrace(t)\n",
    "signal_handler_exit": "import signal, sys\nsignal.signal(signal.SIGALRM, lambda *a: sys.exit(0))\n"
                           "signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)\n",
    "interrupt_main": "import _thread, time\n_thread.interrupt_main()\ntime.sleep(0.5)",
    "atexit_exit": "import atexit, os\natexit.register(os._exit, 0)",
    "exec_true": "import os\nos.execv('/bin/true', ['true'])",
    "ctypes_exit": "import ctypes\nctypes.CDLL(None)._exit(0)",
    "swallow_tests": "x = '''",
    "write_every_fd": "import os\nfor fd in range(3, 64):\n    try: os.write(fd, b'0' * 32)\n    except OSError: pass\n",
    "subinterpreter": "import _xxsubinterpreters as i\ni.run_string(i.create(), 'import os; os._exit(0)')",
}


BEFORE: set[int] = set()  # filled by the autouse fixture: children that other tests left running


@pytest.fixture(autouse=True)
def _earlier_children():
    """Children this process already had (another module's local server, say) are not the run's survivors."""
    BEFORE.clear()
    BEFORE.update(_descendants())


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_a_failing_program_cannot_forge_a_pass(name):
    result = run_untrusted(FORGERIES[name], tests=FAILING_TESTS, timeout_s=5)
    assert not result.passed, (name, result)
    assert result.status in ("failed", "blocked"), result
    assert not _descendants() - BEFORE


SECRET_PROBE = r'''
import glob, os
found = []
for path in [{token!r}, os.path.expanduser("~/.cache/huggingface/token"), "/root/.cache/huggingface/token",
             f"/proc/{{os.getppid()}}/environ", "/proc/1/environ", *glob.glob("/proc/*/environ")]:
    try:
        found.append(open(path, "rb").read().decode(errors="replace"))
    except OSError as e:
        found.append(type(e).__name__)
found.append(repr(dict(os.environ)))
import sys
sys.stderr.write("\n".join(found))
assert "sk-dummy" in "".join(found) or "hf_dummy" in "".join(found)
'''


def test_secrets_of_the_parent_do_not_reach_the_program(tmp_path):
    # the parent runs in a process of its own, started with the secrets, so that /proc/<pid>/environ has them
    home = tmp_path / "home"
    token = home / ".cache" / "huggingface" / "token"
    token.parent.mkdir(parents=True)
    token.write_text("hf_dummyTOKEN0123456789")
    token.chmod(0o600)
    driver = ("import json, sys\nfrom evolforge.eval.sandbox import run_untrusted\n"
              "r = run_untrusted(sys.stdin.read(), timeout_s=10)\n"
              "print(json.dumps({'status': r.status, 'stderr': r.stderr}))")
    env = {**os.environ, "HOME": str(home), "OPENAI_API_KEY": "sk-dummyKEY0123456789",
           "HF_TOKEN": "hf_dummyTOKEN0123456789", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", driver], input=SECRET_PROBE.format(token=str(token)), env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] in ("failed", "blocked"), result
    assert "dummy" not in result["stderr"], result["stderr"]
    assert "PermissionError" in result["stderr"] or result["status"] == "blocked"


@pytest.mark.parametrize("audit", [True, False], ids=["all-layers", "os-layers-only"])
def test_writes_outside_are_refused(tmp_path, audit):
    target = tmp_path / "escaped.txt"
    tmp_path.chmod(0o777)  # only the sandbox's own layers may stop it, not this directory's mode
    code = f"import _io\n_io.FileIO({str(target)!r}, 'w').write(b'escaped')"
    result = sandbox._run(code, None, 5, 512, layers=sandbox._layers(), packages=(), audit=audit)
    assert not result.passed and not target.exists(), result


@pytest.mark.parametrize("audit", [True, False], ids=["all-layers", "os-layers-only"])
@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_sockets_to_loopback_reach_nothing(kind, audit):
    family = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, family) as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        if kind == "tcp":
            server.listen(1)
        server.settimeout(0.5)
        send = "s.connect(addr)\ns.sendall(b'x')" if kind == "tcp" else "s.sendto(b'x', addr)"
        code = (f"import importlib, socket\nsocket = importlib.reload(socket)\naddr = ('127.0.0.1', {port})\n"
                f"s = socket.socket(socket.AF_INET, socket.{'SOCK_STREAM' if kind == 'tcp' else 'SOCK_DGRAM'})\n"
                f"s.settimeout(1)\n{send}\n")
        result = sandbox._run(code, None, 5, 512, layers=sandbox._layers(), packages=(), audit=audit)
        assert not result.passed, result
        with pytest.raises(TimeoutError):
            server.accept() if kind == "tcp" else server.recvfrom(16)


FORK_BOMBS = {
    "os_fork": "import os\nfor _ in range(64):\n    os.fork()",
    "posix_reimport_fork": "import sys\ndel sys.modules['posix']\nimport posix\nfor _ in range(64):\n    posix.fork()",
    "posix_spawn": "import os\nfor _ in range(64):\n    os.posix_spawn('/bin/sleep', ['sleep', '30'], {})",
    "subprocess": "import subprocess\nfor _ in range(64):\n    subprocess.Popen(['sleep', '30'])",
    "threads": "import threading, time\nfor _ in range(64):\n    threading.Thread(target=time.sleep, args=(30,)).start()",
}


@pytest.mark.parametrize("audit", [True, False], ids=["all-layers", "os-layers-only"])
@pytest.mark.parametrize("name", sorted(FORK_BOMBS))
def test_fork_bombs_are_contained_and_nothing_survives(name, audit):
    result = sandbox._run(FORK_BOMBS[name], None, 5, 512, layers=sandbox._layers(), packages=(), audit=audit)
    assert not result.passed, result
    assert result.duration_s < 8  # threads that sleep on hold the run until its time limit, no longer
    assert not _descendants() - BEFORE
    assert not _sandbox_uid_processes()


def test_nothing_survives_a_passing_run():
    code = "import threading, time\nthreading.Thread(target=time.sleep, args=(30,), daemon=False).start()"
    result = run_untrusted(code, tests="assert True", timeout_s=5)
    assert result.passed, result
    assert not _descendants() - BEFORE and not _sandbox_uid_processes()


@pytest.mark.parametrize("code, status", [
    ("x = bytearray(2 * 1024 ** 3)", "memory"),
    ("while True:\n    pass", "timeout"),
    ("import time\ntime.sleep(30)", "timeout"),
    ("import sys\nsys.exit(0)", "failed"),
    ("quit()", "failed"),
])
def test_limits_and_early_exits(code, status):
    result = run_untrusted(code, tests="assert True", timeout_s=2)
    assert result.status == status, result
    assert result.duration_s < 8


def test_isolation_reports_its_layers():
    layers = isolation()
    assert set(layers) >= {"network_namespace", "pid_namespace", "drop_to_uid", "landlock", "seccomp", "env"}
    assert "OPENAI_API_KEY" not in layers["env"] and "HOME" not in ENV_ALLOWED
