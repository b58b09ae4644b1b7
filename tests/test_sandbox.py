"""The code-execution sandbox: correct code passes; loops, memory hogs, escapes and sockets are stopped."""

from __future__ import annotations

import os

import pytest

from evolforge.eval import sandbox
from evolforge.eval.sandbox import isolation, run_untrusted

ADD = "def add(a, b):\n    return a + b\n"


@pytest.mark.parametrize(
    "code, status",
    [
        (ADD + "assert add(2, 3) == 5", "passed"),
        ("import numpy as np\nassert int(np.arange(4).sum()) == 6", "passed"),  # third-party imports work
        ("open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'", "passed"),
        ("import os, tempfile\nassert os.path.realpath(os.getcwd()) == os.path.realpath(os.environ['HOME'])\n"
         "tempfile.NamedTemporaryFile().write(b'x')", "passed"),  # HOME and TMPDIR are the throwaway cwd
        ("def add(a, b):\n    return a * b\nassert add(2, 3) == 5", "failed"),
        ("def add(a, b) return a", "failed"),  # syntax error
        (ADD + "import sys\nsys.exit(0)\nassert add(2, 3) == 6", "failed"),  # leaving early is not passing
        ("while True:\n    pass", "timeout"),
        ("x = bytearray(2 * 1024 ** 3)", "memory"),
        ("x = [0] * 10 ** 9", "memory"),
        ("import socket\nsocket.socket().connect(('1.1.1.1', 80))", "blocked"),
        ("import socket\nsocket.create_connection(('example.com', 80))", "blocked"),
        ("import _socket\n_socket.socket()", "blocked"),
        ("import urllib.request\nurllib.request.urlopen('http://example.com')", "blocked"),
        ("import subprocess\nsubprocess.run(['ls'])", "blocked"),
        ("import os\nos.system('ls')", "blocked"),
        ("import posix\nposix.fork()", "blocked"),  # the functions os re-exports are guarded at the source too
    ],
)
def test_outcomes(code, status):
    result = run_untrusted(code, timeout_s=2, memory_mb=512)
    assert result.status == status, result.stderr
    assert result.passed is (status == "passed")


def test_timeout_is_enforced_promptly():
    result = run_untrusted("import time\ntime.sleep(60)", timeout_s=1)
    assert (result.status, result.returncode) == ("timeout", None)
    assert result.duration_s < 10


WRITES_THEN = "import os, time\nos.write(2, b'begun\\n')\n"


@pytest.mark.parametrize("code, status, within_s", [
    (WRITES_THEN + "while True:\n    pass", "timeout", 20),  # silent after its first line: stopped at quiet_s
    (WRITES_THEN + "time.sleep(60)", "timeout", 20),
    ("import os, time\nfor _ in range(6):\n    time.sleep(0.4)\n    os.write(2, b'step\\n')", "passed", None),
    ("import os, time\ntime.sleep(2)\nos.write(2, b'begun\\n')", "passed", None),  # the clock starts at a write
])
def test_quiet_s_limits_the_silence_after_a_write(code, status, within_s):
    result = run_untrusted(code, timeout_s=60, quiet_s=1.5)
    assert result.status == status, result.stderr
    if within_s is not None:  # well inside its 60 s: the silence ended it, not the whole run's limit
        assert result.duration_s < within_s


def test_quiet_s_never_lengthens_the_run():
    result = run_untrusted("import os\nwhile True:\n    os.write(2, b'.')", timeout_s=1, quiet_s=30)
    assert (result.status, result.returncode) == ("timeout", None)


def test_quiet_s_is_refused_with_tests():
    with pytest.raises(ValueError, match="without tests"):
        run_untrusted(ADD, tests="assert add(1, 1) == 2", quiet_s=1)


@pytest.mark.parametrize(
    "template",
    [
        "open({path!r}, 'w').write('escaped')",
        "from pathlib import Path\nPath({path!r}).write_text('escaped')",
        "import os\nfd = os.open({path!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'escaped')",
        "import shutil\nopen('here.txt', 'w').write('escaped')\nshutil.copy('here.txt', {path!r})",
        "import os, posix\nposix.open({path!r}, os.O_WRONLY | os.O_CREAT)",
        "import os\nos.symlink('/etc/passwd', 'link')\nos.rename('link', {path!r})",
    ],
)
def test_writes_outside_the_working_directory_are_blocked(tmp_path, template):
    target = tmp_path / "escaped.txt"
    result = run_untrusted(template.format(path=str(target)), timeout_s=5)
    assert result.status == "blocked", result.stderr
    assert not target.exists()


def test_deleting_outside_the_working_directory_is_blocked(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    result = run_untrusted(f"import os\nos.remove({str(victim)!r})", timeout_s=5)
    assert result.status == "blocked"
    assert victim.read_text() == "precious"


def test_os_layer_stops_writes_that_bypass_the_python_guard(tmp_path):
    if not (isolation()["landlock"] or isolation()["drop_to_uid"] is not None):
        pytest.skip("no OS-level write restriction (Landlock or privilege drop) on this machine")
    target = tmp_path / "escaped.txt"
    # with the in-process audit hook off: only the OS layers are left to refuse it
    code = f"import _io\n_io.FileIO({str(target)!r}, 'w').write(b'escaped')"
    result = sandbox._run(code, None, 5, 512, layers=sandbox._layers(), packages=(), audit=False)
    assert not result.passed
    # Landlock refuses it; under /tmp the host's folder is not even there (the run has a private, empty /tmp)
    assert "PermissionError" in result.stderr or "FileNotFoundError" in result.stderr, result.stderr
    assert not target.exists()


def test_no_network_even_past_the_python_guard():
    if isolation()["network_namespace"] is None and not isolation()["landlock"]:
        pytest.skip("no OS-level network isolation on this machine")
    # reloading the socket module restores the real socket class; the namespace / Landlock must still hold
    code = ("import importlib, socket\nsocket = importlib.reload(socket)\n"
            "s = socket.socket()\ns.settimeout(2)\ns.connect(('1.1.1.1', 80))")
    result = sandbox._run(code, None, 5, 512, layers=sandbox._layers(), packages=(), audit=False)
    assert not result.passed
    assert result.status in ("failed", "blocked")


def test_working_directory_is_thrown_away():
    code = "import os\nopen('left_behind.txt', 'w').write('x')\nprint(os.getcwd())"
    first = run_untrusted(code + "\nimport sys\nsys.stderr.write(os.getcwd())")
    assert first.passed
    workdir = first.stderr.strip().splitlines()[-1]
    assert not os.path.exists(workdir)
