"""Numeric answers recomputed: self-consistency (more sampled answers, their final numbers compared) and program
of thought (the model writes Python that computes the answer; the sandbox runs it and its printed number counts).

The values the greedy answer states (:func:`stated_values`: its final number, and every number of the last
sentence that holds one, so "38 and 12" states both) are compared with the others' final numbers
(:func:`compare_values`): ``right`` when more than half of the recomputations asked for agree with one of them
(one that gave no number counts as not agreeing: one sample of two that agrees is not a majority), ``wrong`` when
two or more agree on another value and outnumber those that agree (the values are recorded), ``unsure``
otherwise. The confidence is the share of all values, the answer's counted once and every recomputation asked for
counted, that agree with it: less evidence, less confidence.

>>> compare_values([12.0], [19.0, 19.0, 19.0], 1e-4)[:2]
('wrong', 0.25)
>>> compare_values([12.0], [12.0, 12.0, None], 1e-4)[:2]
('right', 0.75)
>>> compare_values([12.0], [12.0, 19.0, None], 1e-4)[:2]
('unsure', 0.5)
>>> stated_values("So it takes 500 / 30 = 16.67 minutes. It empties in about 16.67 minutes, from 500 litres to 0.")
[0.0, 16.67, 500.0]
>>> is_numeric_task("The sum of two numbers is 50 and their difference is 12. What are the numbers?", "38 and 12.")
True
"""

from __future__ import annotations

import json
import math
import re
import secrets
from typing import Sequence

from evolforge.eval.sandbox import run_untrusted
from evolforge.core.text import numbers
from evolforge.steps.common.answer_check import final_number

PROGRAM_TEMPLATE = "verify/program.j2"
_ASKS_NUMBER = re.compile(
    r"\b(how (many|much|long|far|old)|calculate|compute|what is|what are|find|total|sum|difference|product|"
    r"average|percent(age)?|cost|price|solve|how fast|rate|remain(s|ing)?|left)\b", re.I)
# runs the model's program with its output captured, then writes one tagged line (the only stream back is stderr)
_HARNESS = '''
import io as _io, json as _json, os as _os, sys as _sys
_buf = _io.StringIO()
_sys.stdout = _buf
try:
    exec(compile({code!r}, "<program>", "exec"), {{"__name__": "__main__"}})
    _status = "ok"
except BaseException as _e:
    _status = type(_e).__name__ + ": " + str(_e)[:160]
_os.write(2, ({tag!r} + " " + _json.dumps({{"status": _status, "stdout": _buf.getvalue()[-400:]}}) + "\\n").encode())
'''


def is_numeric_task(task: str, answer: str | None) -> bool:
    """A question with numbers in it that asks for a quantity, and an answer that ends in a number."""
    return (bool(re.search(r"\d", task)) and bool(_ASKS_NUMBER.search(task))
            and final_number(answer or "") is not None)


def stated_values(answer: str | None) -> list[float]:
    """The values an answer gives as its result: its final number and the numbers of its last sentence with one."""
    final = final_number(answer or "")
    if final is None:
        return []
    sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", answer.strip()) if numbers(s)]
    return sorted({final, *(numbers(sentences[-1]) if sentences else [])})


def same(a: float, b: float, tolerance: float) -> bool:
    return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)


def compare_values(stated: Sequence[float], others: Sequence[float | None],
                   tolerance: float) -> tuple[str, float | None, str]:
    """(verdict, confidence, why) of the values the greedy answer states against the recomputed values (one per
    recomputation asked for; None: it gave no number)."""
    values = [v for v in others if v is not None]
    if not stated:
        return "unsure", None, "the answer gives no number"
    if not values:
        return "unsure", None, "no other value to compare"
    agrees = [any(same(v, s, tolerance) for s in stated) for v in values]
    agree = sum(agrees)
    confidence = (agree + 1) / (len(others) + 1)
    rivals = [v for v, a in zip(values, agrees) if not a]
    best = max((sum(same(r, v, tolerance) for r in rivals) for v in rivals), default=0)
    if agree * 2 > len(others):
        return "right", confidence, f"{agree} of {len(values)} recomputed values agree"
    if best >= 2 and best > agree:
        return "wrong", confidence, f"{best} recomputed values agree on another number"
    return "unsure", confidence, "the recomputed values disagree"


def program_value(code: str | None, timeout_s: float, memory_mb: int) -> tuple[float | None, str]:
    """The last number a program prints, run in the sandbox; (None, why) when there is none."""
    if code is None:
        return None, "no program"
    tag = "pot-" + secrets.token_hex(8)
    result = run_untrusted(_HARNESS.format(code=code, tag=tag), timeout_s=timeout_s, memory_mb=memory_mb)
    line = next((ln for ln in reversed(result.stderr.splitlines()) if ln.startswith(tag + " ")), None)
    if line is None:
        return None, f"program {result.status}"
    report = json.loads(line[len(tag) + 1:])
    if report["status"] != "ok":
        return None, f"program raised {report['status']}"
    value = final_number(report["stdout"])
    return value, "printed " + report["stdout"].strip()[-80:]


def numeric_evidence(greedy: float | None, stated: Sequence[float], samples: Sequence[float | None],
                     program: float | None, program_note: str | None, why: str, skipped: int = 0) -> str:
    """The evidence of a numeric verdict; ``skipped``: samples not drawn, the verdict being certain without them."""
    return json.dumps({"answer_value": greedy, "answer_values": list(stated), "sample_values": list(samples),
                       "samples_skipped": skipped, "program_value": program, "program": program_note, "why": why},
                      sort_keys=True)
