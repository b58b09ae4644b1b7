"""Values, not objects: the wire format between the program's worker and the tests' checker, and the checker's
rules (which names are the program's, what crosses back), through ``run_untrusted`` with tests."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from evolforge.eval.sandbox import isolation, run_untrusted
from evolforge.eval.sandbox_roles import WIRE_DEPTH, _decode, _encode
from evolforge.eval.tasks import code_scoring


def _round_trip(value):
    return _decode(json.loads(json.dumps(_encode(value))))


@pytest.mark.parametrize("value", [
    None, True, False, 0, -7, 2 ** 200, 0.1, -0.0, 1e308, float("inf"), "", "naïve \udcff", b"\x00\xff",
    [1, [2, (3, 4)]], (1,), (), {"a": 1, 2: [3], (4, 5): None}, {1, 2}, frozenset({(1, 2)}), set(), 1 + 2j,
])
def test_plain_values_cross_unchanged(value):
    back = _round_trip(value)
    assert back == value and type(back) is type(value)
    if isinstance(value, float):
        assert math.copysign(1, back) == math.copysign(1, value)


def test_nan_crosses_as_nan_and_dict_order_is_kept():
    assert math.isnan(_round_trip(float("nan")))
    assert list(_round_trip({"b": 1, "a": 2})) == ["b", "a"]
    assert type(_round_trip([(1, 2)])[0]) is tuple and type(_round_trip(bytearray(b"x"))) is bytes


def test_subclasses_and_numpy_become_their_plain_value():
    class Liar(int):
        def __eq__(self, other):
            return True
        __hash__ = int.__hash__

    class Text(str):
        pass

    assert type(_round_trip(Liar(3))) is int and _round_trip(Liar(3)) != 4
    assert type(_round_trip(Text("x"))) is str
    assert _round_trip(np.float64(0.5)) == 0.5 and type(_round_trip(np.float64(0.5))) is float
    assert _round_trip(np.arange(3)) == [0, 1, 2] and _round_trip(np.bool_(True)) is True


@pytest.mark.parametrize("value", [object(), (x for x in ()), print, type])
def test_objects_are_not_data(value):
    with pytest.raises(TypeError):
        _encode(value)


def test_depth_is_bounded():
    nested: list = []
    nested.append(nested)
    with pytest.raises(TypeError, match="deeper"):
        _encode(nested)
    deep = 0
    for _ in range(WIRE_DEPTH - 1):
        deep = [deep]
    assert _round_trip(deep) == deep


@pytest.mark.parametrize("data", ['{"t": [1], "s": [2]}', '{"x": 1}', '{"d": [[[1], 2]]}'])
def test_malformed_wire_data_is_refused(data):
    with pytest.raises((ValueError, TypeError)):
        _decode(json.loads(data))


@pytest.mark.parametrize("program, tests, passed", [
    ("def f():\n    return [1, 2]", "assert f() == [1, 2]", True),
    ("def f():\n    return [1, 2]", "assert f() != (1, 2)", True),  # a list is no tuple on the wire either
    ("def f():\n    return {3, 1}", "assert f() == {1, 3} and isinstance(f(), set)", True),
    ("def f():\n    return 0.1 + 0.2", "assert f() == 0.30000000000000004", True),
    ("def f(x):\n    x.append(1)\n    return None", "a = []\nf(a)\nassert a == [1]", True),  # in place, copied back
    ("def f(x):\n    raise ValueError('no')", "try:\n    f(1)\nexcept ValueError as e:\n    assert str(e) == 'no'", True),
    ("def f(x, y=0):\n    return x - y", "assert f(5, y=2) == 3", True),
    ("import numpy as np\ndef f():\n    return np.array([1.5, 2])", "assert f() == [1.5, 2.0]", True),
    ("def f():\n    return object()", "f()", False),
    ("def f():\n    return 1\nraise RuntimeError('half loaded')", "assert True", False),  # never ran to its end
    ("def g():\n    return 1", "assert f() == 1", False),  # the tests' function is not the program's
])
def test_checked_runs(program, tests, passed):
    result = run_untrusted(program, tests=tests, timeout_s=10)
    assert result.passed is passed, result
    assert result.status == ("passed" if passed else "failed"), result


def test_the_setup_is_trusted_and_only_calls_cross():
    # HumanEval: helpers in the prompt (poly) are the tests' own; the program may redefine them in vain
    setup = "def poly(x):\n    return x * x\ndef root(n):\n    pass\n"
    program = "def poly(x):\n    return 0\ndef root(n):\n    return 7\n"
    tests = "assert poly(root(1)) == 0"
    assert not run_untrusted(program, tests=tests, setup=setup, calls=("root",), timeout_s=10).passed
    assert run_untrusted(program, tests="assert poly(3) == 9 and root(1) == 7", setup=setup, calls=("root",),
                         timeout_s=10).passed


def test_builtins_are_never_the_program_s_by_default():
    program = "def len(x):\n    return 3\ndef f():\n    return [1]"
    assert not run_untrusted(program, tests="assert len(f()) == 3", timeout_s=10).passed
    assert run_untrusted(program, tests="assert len(f()) == 1", timeout_s=10).passed


def test_memory_error_in_a_call_is_memory():
    program = "def f():\n    return bytearray(4 * 1024 ** 3)"
    result = run_untrusted(program, tests="f()", timeout_s=10, memory_mb=256)
    assert result.status == "memory", result


def test_disk_quota_holds_in_the_work_folder():
    if not isolation()["pid_namespace"]:
        pytest.skip("no mount namespace here: no per-run tmpfs quota (RLIMIT_FSIZE only)")
    program = ("import os\nwritten = 0\ntry:\n    for i in range(1000):\n"
               "        with open('f%d' % i, 'wb') as f:\n            f.write(b'x' * (4 << 20))\n"
               "        written += 4 << 20\nexcept OSError as e:\n    err = e.errno\n"
               "def f():\n    return [written, err]")
    result = run_untrusted(program, tests="w, e = f()\nimport sys\nprint(w, e, file=sys.stderr)\nassert False",
                           timeout_s=20)
    written, errno = _last_numbers(result.stderr)
    assert written <= 64 << 20 and errno in (27, 28)  # EFBIG or ENOSPC


def _last_numbers(stderr: str) -> tuple[int, int]:
    for line in reversed(stderr.splitlines()):
        parts = line.split()
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            return int(parts[0]), int(parts[1])
    raise AssertionError(stderr)


MBPP_AREA = {"code": "import math\ndef circle_area(r):\n    return math.pi * r * r",
             "test_list": ["assert math.isclose(circle_area(2), 12.566, rel_tol=0.001)"], "test_setup_code": ""}


@pytest.fixture
def scoring(monkeypatch):
    monkeypatch.setenv(code_scoring.ALLOW_ENV, "1")


def test_mbpp_tests_get_the_reference_s_imports_not_the_program_s(scoring):
    right = "import math\ndef circle_area(r):\n    return math.pi * r ** 2"
    # a wrong program that rebinds what the tests call beside its function: math.isclose, or isclose itself
    spoof_module = "import math\nmath.isclose = lambda *a, **k: True\ndef circle_area(r):\n    return 0"
    spoof_name = "from math import isclose\nisclose = lambda *a, **k: True\nmath = None\ndef circle_area(r):\n    return 0"
    assert code_scoring.mbpp_process_results(MBPP_AREA, [[right]]) == {"pass@1": 1.0}
    assert code_scoring.mbpp_process_results(MBPP_AREA, [[spoof_module]]) == {"pass@1": 0.0}
    assert code_scoring.mbpp_process_results(MBPP_AREA, [[spoof_name]]) == {"pass@1": 0.0}
    spoof_tests = {**MBPP_AREA, "code": "from math import isclose, pi\ndef circle_area(r):\n    return pi * r * r",
                   "test_list": ["assert isclose(circle_area(2), 12.566, rel_tol=0.001)"]}
    assert code_scoring.mbpp_process_results(spoof_tests, [[spoof_name]]) == {"pass@1": 0.0}


def test_reference_imports_and_functions():
    assert code_scoring.reference_imports_and_functions("import re\nfrom math import pi as p\ndef f(): pass\n"
                                                        "class C: pass\ndef g(): pass") == (
        "import re\nfrom math import pi as p", ("f", "g"))
    assert code_scoring.reference_imports_and_functions("def (") == ("", None)
