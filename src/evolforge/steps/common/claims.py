"""What an answer's code says of itself: a call of one of its own functions with literal arguments, and the value a
comment beside it says the call gives. An answer whose code runs against its own example states something false,
whatever its function does right, so the checks that run an answer's code (a seed's Python tests, verify's code
tests) run these examples too.

>>> claimed_examples("def f(n):\\n    return 2 * n\\nprint(f(3))  # Output: 6\\nf(4)  # -> 8\\nf(x)  # -> 2")
['assert f(3) == 6', 'assert f(4) == 8']
>>> claimed_examples("def f(s):\\n    return s[::-1]\\nprint(f('ab'))  # Output: ba")  # no literal to compare
[]
"""

from __future__ import annotations

import ast
import re

# a line that ends in a comment stating a value: "# Output: 6", "# returns 6", "# -> 6", "# Expected output: 6"
_CLAIM = re.compile(r"^(?P<expr>[^#]+?)\s*#\s*(?:(?:expected\s+)?(?:output|outputs|result|returns?|prints?|gives)"
                    r"\s*[:=]?|->|=>|==>|→|➞)\s*(?P<want>.+)$", re.I)


def top_level_functions(code: str) -> list[str]:
    """The names of the functions ``code`` defines at its top level, in order ([] for code that does not parse)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return []
    return [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def literal_text(text: str) -> str | None:
    """``text`` (a trailing comment, period or comma cut) when it is a Python literal, else None."""
    text = re.split(r"\s+#", text.strip())[0].strip().rstrip(".,;").strip()
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return text


def literal_call(source: str, names: str | tuple[str, ...]) -> bool:
    """``source`` is one call of a function in ``names`` whose arguments are all Python literals."""
    names = (names,) if isinstance(names, str) else names
    try:
        call = ast.parse(source.strip(), mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in names):
            return False
        for arg in [*call.args, *(k.value for k in call.keywords)]:
            ast.literal_eval(arg)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return True


def claimed_examples(code: str, names: tuple[str, ...] | None = None) -> list[str]:
    """The examples ``code`` states for its own functions (``names``; None: its top-level ones), as assert lines:
    ``print(f(args))  # Output: value`` or ``f(args)  # -> value`` (also ``returns``, ``result``, ``=>``), the
    arguments and the value Python literals. A value printed without quotes (a string) is no literal: not a claim."""
    names = tuple(top_level_functions(code)) if names is None else names
    found: dict[str, None] = {}
    for line in code.splitlines():
        claim = _CLAIM.match(line.strip())
        if not names or not claim:
            continue
        expr = claim["expr"].strip()
        printed = re.fullmatch(r"print\((?P<inner>.+)\)", expr)
        call = printed["inner"] if printed else expr
        if literal_call(call, names) and (want := literal_text(claim["want"])) is not None:
            found.setdefault(_assertion(call.strip(), want), None)
    return list(found)


def _assertion(call: str, want: str) -> str:
    """``call == want``; a float written with d decimals holds within half a unit of its last digit (a comment
    that rounds, ``# Output: 3.33`` for 3.3333..., states nothing false).

    >>> _assertion("f(1)", "6"), _assertion("f(1)", "3.33")
    ('assert f(1) == 6', 'assert abs(f(1) - 3.33) <= 0.005')
    """
    value = ast.literal_eval(want)
    if isinstance(value, float) and re.fullmatch(r"-?\d+\.\d+", want):
        return f"assert abs({call} - {want}) <= {0.5 * 10 ** -len(want.split('.')[1]):g}"
    return f"assert {call} == {want}"
