"""Answer checks: a seed whose answer can be checked says how, and each answer is checked against it.

A seed record may carry a ``check`` field (docs/how-to/seeds.md "Checkable seeds"), one of::

    {"kind": "number", "value": 42}                      # the answer's final number equals 42
    {"kind": "number", "value": 0.5, "tolerance": 1e-3}  # within an absolute tolerance (default 1e-6)
    {"kind": "python_tests", "tests": "assert f(2) == 4"}  # the answer's code passes these tests
    {"kind": "python_tests", "tests": "...", "timeout_s": 10}

:func:`parse_check` validates one (a :class:`DataError` naming the file, the row and the field otherwise) and
returns it in a canonical form; the seed table keeps it as JSON text in ``answer_check``. :func:`check_answer`
judges an answer by it, without any LLM: a number by value (the answer's final number:
:func:`final_number`), code by running it in the project's sandbox with the tests
(:func:`evolforge.eval.sandbox.run_untrusted`: the tests run in another process than the answer's code).

Which items a check applies to: the ones whose instruction it was written for, the seeds (round 0). An evolved
item never inherits its root's check: a rewrite changes the question (adds a constraint, deepens it, or in
breadth asks another), so the root's number or tests are no longer the answer's measure; a check on an evolved
item would judge the rewrite against the wrong question.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from evolforge.config.sandbox_limits import MEMORY_MB, PROGRAM_TIMEOUT_S
from evolforge.core.text import NUMBER, number, numbers
from evolforge.eval.sandbox import run_untrusted
from evolforge.io.validation import DataError
from evolforge.steps.common.claims import claimed_examples

KINDS = ("number", "python_tests")
FIELD = "check"  # the seed record's field
DEFAULT_TOLERANCE = 1e-6
MAX_TIMEOUT_S = 60.0


def parse_check(value: Any, file: str = "<check>", row: int | None = None) -> dict | None:
    """A seed record's ``check`` value -> its canonical form (a dict with every key), or None for no check
    (null). Anything else is refused with a :class:`DataError` naming ``file``, ``row`` and the field.

    >>> parse_check({"kind": "number", "value": 42})
    {'kind': 'number', 'value': 42.0, 'tolerance': 1e-06}
    >>> parse_check(None) is None
    True
    """
    rows = [row] if row is not None else None

    def refuse(rule: str, detail: str) -> DataError:
        return DataError(file, f"{FIELD}: {rule}", rows, detail)

    if value is None:
        return None
    if isinstance(value, str):  # a table (Parquet, CSV) holds it as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise refuse("is an object (or its JSON text)", f"not JSON: {err.msg} at character {err.pos + 1}") from None
        if value is None:
            return None
    if not isinstance(value, dict):
        example = '{"kind": "number", "value": 42}'
        raise refuse("is an object", f"got {type(value).__name__} {str(value)[:40]!r}; e.g. {example}")
    kind = value.get("kind")
    if kind not in KINDS:
        raise refuse(f"{FIELD}.kind is one of {', '.join(KINDS)}", f"got {kind!r}")
    allowed = {"number": {"kind", "value", "tolerance"}, "python_tests": {"kind", "tests", "timeout_s"}}[kind]
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise refuse(f"a {kind} check has only the fields {', '.join(sorted(allowed))}",
                     f"unknown: {', '.join(unknown)}")
    if kind == "number":
        number = value.get("value")
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise refuse(f"{FIELD}.value is a finite number", f"got {number!r}")
        tolerance = value.get("tolerance", DEFAULT_TOLERANCE)
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < math.inf:
            raise refuse(f"{FIELD}.tolerance is a number >= 0", f"got {tolerance!r}")
        return {"kind": kind, "value": float(number), "tolerance": float(tolerance)}
    tests = value.get("tests")
    if not isinstance(tests, str) or not tests.strip():
        raise refuse(f"{FIELD}.tests is non-empty Python text", f"got {tests!r}")
    try:
        ast.parse(tests)
    except SyntaxError as err:
        raise refuse(f"{FIELD}.tests is valid Python", f"line {err.lineno}: {err.msg}") from None
    timeout = value.get("timeout_s", PROGRAM_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT_S:
        raise refuse(f"{FIELD}.timeout_s is a number in (0, {MAX_TIMEOUT_S:g}]", f"got {timeout!r}")
    return {"kind": kind, "tests": tests, "timeout_s": float(timeout)}


def check_json(check: dict | None) -> str | None:
    """The canonical check as the tables keep it (sorted keys), or None."""
    return None if check is None else json.dumps(check, sort_keys=True, ensure_ascii=False)


# phrases that announce the final answer; the number after the last of them is the answer
_ANNOUNCED = re.compile(
    rf"(?:final answer|answer)\s*(?:\*\*)?\s*(?:is|:|=|would be|will be)\s*[:=]?\s*(?:\*\*)?\s*"
    rf"(?:approximately\s+|about\s+)?"
    rf"[$€£]?\s*({NUMBER})|\\boxed\{{\s*[$]?({NUMBER})|####\s*[$]?({NUMBER})", re.IGNORECASE)


def final_number(answer: str) -> float | None:
    """The number an answer gives as its result: the one after its last "answer is" / "answer:" /
    ``\\boxed{}`` / ``####``, else its last number. Thousands commas, a currency sign and a trailing
    ".0" or "%" are read as the number ("$1,200.00" -> 1200).

    >>> final_number("The answer is 42.")
    42.0
    >>> final_number("So she has 12 apples left. Total: $1,250.50")
    1250.5
    >>> final_number("No digits here") is None
    True
    """
    if not answer:
        return None
    announced = list(_ANNOUNCED.finditer(answer))
    if announced:
        last = announced[-1]
        return number(next(g for g in last.groups() if g is not None))
    found = numbers(answer)
    return found[-1] if found else None


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n([\s\S]*?)(?:```|\Z)")


def extract_code(answer: str) -> str | None:
    """The Python program in an answer: its fenced blocks tagged python/py (or untagged) joined in order, the
    blocks that do not parse as Python left out; without a fence, the whole answer when it parses as Python
    (None otherwise).

    >>> extract_code("Here:\\n```python\\ndef f(x):\\n    return 2 * x\\n```\\nDone.")
    'def f(x):\\n    return 2 * x'
    """
    if not answer:
        return None
    blocks = [(tag.lower(), body.strip("\n")) for tag, body in _FENCE.findall(answer)]
    code = [body for tag, body in blocks if tag in ("python", "py", "python3", "") and body.strip() and _parses(body)]
    if code:
        return "\n\n".join(code)
    if not blocks and _parses(answer):
        return answer.strip("\n")
    return None


def _parses(text: str) -> bool:
    try:
        ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    detail: str  # what was compared, or why it failed


def check_number(answer: str, value: float, tolerance: float = DEFAULT_TOLERANCE) -> CheckResult:
    """The answer's final number (:func:`final_number`) equals ``value`` within ``tolerance`` (absolute)."""
    got = final_number(answer)
    if got is None:
        return CheckResult(False, f"no number in the answer; expected {value:g}")
    ok = abs(got - value) <= tolerance
    return CheckResult(ok, f"answer's number {got:g} {'=' if ok else '!='} expected {value:g}")


def check_python(answer: str, tests: str, timeout_s: float = PROGRAM_TIMEOUT_S,
                 memory_mb: int = MEMORY_MB) -> CheckResult:
    """The answer's code (:func:`extract_code`) passes ``tests`` in the sandbox, and the examples it states for its
    own functions (:func:`~evolforge.steps.common.claims.claimed_examples`: ``print(f(3))  # Output: 9``) hold."""
    code = extract_code(answer)
    if code is None:
        return CheckResult(False, "no Python code in the answer (a fenced block that parses)")
    claims = claimed_examples(code)
    if claims:
        said = [f"{c}, {'the answer states ' + c.removeprefix('assert ')!r}" for c in claims]  # named if it fails
        tests = tests.rstrip("\n") + "\n# the answer's own examples\n" + "\n".join(said) + "\n"
    result = run_untrusted(code, timeout_s=timeout_s, memory_mb=memory_mb, tests=tests)
    if result.passed:
        return CheckResult(True, "tests passed")
    tail = result.stderr.strip().splitlines()[-1:] if result.stderr.strip() else []
    return CheckResult(False, f"tests {result.status}" + (f": {tail[0][:200]}" if tail else ""))


def check_answer(check: dict | str | None, answer: str | None) -> CheckResult | None:
    """``answer`` judged by ``check`` (canonical dict or its JSON); None where there is no check. No answer (a
    failed call) fails."""
    if isinstance(check, str):
        check = json.loads(check)
    if check is None:
        return None
    if answer is None or not answer.strip():
        return CheckResult(False, "no answer")
    if check["kind"] == "number":
        return check_number(answer, check["value"], check.get("tolerance", DEFAULT_TOLERANCE))
    if check["kind"] == "python_tests":
        return check_python(answer, check["tests"], check.get("timeout_s", PROGRAM_TIMEOUT_S))
    raise ValueError(f"answer check: unknown kind {check['kind']!r}")
