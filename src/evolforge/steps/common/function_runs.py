"""Model-written functions run in the sandbox (:func:`evolforge.eval.sandbox.run_untrusted`): one process per
function, every input in order, one verdict per input (:class:`FunctionRun`). AutoIF runs its verification
functions on their cases with it; the verify step runs an answer's code (wrapped in an ``evaluate``) on
model-written asserts. :func:`run_all` runs many such calls ``workers`` at a time.

>>> read_verdicts('t {"setup": "ok"}\\nt {"i": 0, "result": true}\\nnoise', "t", 2, "passed").results
(True, None)
"""

from __future__ import annotations

import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from evolforge.config.sandbox_limits import CASE_TIMEOUT_S, MEMORY_MB
from evolforge.eval.sandbox import run_untrusted

# One program per function: it defines the function, calls it on every input in order and writes one verdict
# line per input to stderr (the only stream the sandbox returns), each prefixed by a random tag so the
# function's own output is never taken for a verdict. The sandbox runs programs off the main thread, so no
# signal can interrupt one case (the reference code's per-case SIGALRM); the sandbox keeps the limit instead,
# from outside: once the harness has said it started, the process may stay silent at most case_timeout_s (the
# function's definition, then each case), and the whole run takes at most STARTUP_S + case_timeout_s per input.
# A case that loops past its limit stops the run: it and the inputs after it, left without a line, take the
# sandbox's status (timeout). Lines written before the sandbox stops the process (time limit, blocked socket)
# still count.
_HARNESS = '''
import io as _io, json as _json, os as _os, sys as _sys
_TAG = {tag!r}
_INPUTS = _json.loads({inputs!r})
def _say(obj):
    _os.write(2, (_TAG + " " + _json.dumps(obj) + "\\n").encode())
_say({{"started": True}})
_sys.stdout = _sys.stderr = _io.StringIO()
_ns = {{"__name__": "verification"}}
try:
    exec(compile({func!r}, "<evaluate>", "exec"), _ns)
    _fn = _ns.get("evaluate")
    _say({{"setup": "ok"}} if callable(_fn) else {{"setup": "no_evaluate"}})
except BaseException as _e:
    _fn = None
    _say({{"setup": "exec_error", "detail": type(_e).__name__ + ": " + str(_e)[:200]}})
for _i, _x in enumerate(_INPUTS if _fn is not None else []):
    try:
        _r = _fn(_x)
        if isinstance(_r, bool) or type(_r).__name__ == "bool_":
            _v = {{"i": _i, "result": bool(_r)}}
        else:
            _v = {{"i": _i, "error": "not_bool", "detail": type(_r).__name__}}
    except BaseException as _e:
        _v = {{"i": _i, "error": "raised", "detail": type(_e).__name__ + ": " + str(_e)[:120]}}
    _say(_v)
'''

STARTUP_S = 5.0  # wall-clock allowance for the interpreter's start, before the harness's first line


@dataclass(frozen=True)
class FunctionRun:
    """One function run on a list of inputs. ``status``: ``ok`` when the function was defined and every
    input got a verdict; else ``exec_error``, ``no_evaluate`` or the sandbox's status (``timeout``,
    ``blocked``, ``memory``, ``failed``, ``error``). ``results[i]`` is None where input i gave no bool."""

    status: str
    results: tuple[bool | None, ...]
    errors: tuple[str | None, ...]
    detail: str = ""


def harness(func: str, inputs: Sequence[str], tag: str) -> str:
    return _HARNESS.format(tag=tag, inputs=json.dumps(list(inputs)), func=func)


def run_function(func: str, inputs: Sequence[str], case_timeout_s: float = CASE_TIMEOUT_S,
                 memory_mb: int = MEMORY_MB) -> FunctionRun:
    """Run ``evaluate`` from ``func`` on every input, in one sandboxed process."""
    tag = "verdict-" + secrets.token_hex(8)
    limit = STARTUP_S + case_timeout_s * max(1, len(inputs))
    result = run_untrusted(harness(func, inputs, tag), timeout_s=limit, memory_mb=memory_mb, quiet_s=case_timeout_s)
    return read_verdicts(result.stderr, tag, len(inputs), result.status)


def read_verdicts(stderr: str, tag: str, n: int, sandbox_status: str) -> FunctionRun:
    """Assemble a :class:`FunctionRun` from the harness's tagged lines and the sandbox's status."""
    setup, detail = None, ""
    results: list[bool | None] = [None] * n
    errors: list[str | None] = [sandbox_status] * n  # inputs that never got a line: why the process stopped
    for line in stderr.splitlines():
        if not line.startswith(tag + " "):
            continue
        try:
            verdict = json.loads(line[len(tag) + 1:])
        except json.JSONDecodeError:
            continue
        if "setup" in verdict:
            setup, detail = verdict["setup"], verdict.get("detail", "")
        elif 0 <= verdict.get("i", -1) < n:
            i = verdict["i"]
            results[i] = verdict.get("result")
            errors[i] = verdict.get("error")
            detail = detail or verdict.get("detail", "")
    if setup in ("exec_error", "no_evaluate"):
        status, errors = setup, [setup] * n
    elif setup is None or sandbox_status != "passed":
        status = "timeout" if sandbox_status == "passed" else sandbox_status
        untagged = [ln for ln in stderr.splitlines() if not ln.startswith(tag + " ")]
        detail = detail or "\n".join(untagged)[-300:]
    else:
        status = "ok"
    return FunctionRun(status, tuple(results), tuple(errors), detail)


Runner = Callable[[str, Sequence[str]], FunctionRun]


R = TypeVar("R")


def run_all(run: Callable[..., R], calls: Sequence[tuple[Any, ...]], workers: int) -> list[R]:
    """``run(*call)`` for every call, ``workers`` at a time, the results in the calls' order.

    Threads are enough: each call waits on its own sandbox process. A function that fails (raises, loops, runs out
    of memory) says so in its result (:class:`FunctionRun` status, a program's note), so one bad function never
    stops the others; an exception out of ``run`` itself is a bug, raised once the calls under way have ended.

    >>> run_all(pow, [(2, 3), (3, 2)], workers=2)
    [8, 9]
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda call: run(*call), calls))
