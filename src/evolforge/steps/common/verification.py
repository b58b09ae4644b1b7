"""How an item's verification reads for people: one line from its method and evidence (the verify step's
``verify_evidence`` JSON), as the dataset card and the report page show it beside the verdict.

>>> evidence_line("numeric", '{"answer_value": 12.0, "sample_values": [19.0, 19.0], "program_value": 19.0}')
'answer 12; samples 19, 19; program 19'
>>> evidence_line("numeric", '{"answer_value": 10.0, "sample_values": [8.75, 8.75], "program_value": 8.75, '
...               '"constraint": {"passed": true, "detail": "AutoIF: 2 of 2 functions accept it"}}')
'constraint passed; content: answer 10; samples 8.75, 8.75; program 8.75'
>>> evidence_line("code_tests", '{"tests": 4, "kept_tests": 3, "answer_passed": 3, "programs": 3}')
'passed 3 of 3 kept tests (4 written, 2 independent solutions)'
>>> evidence_line("code_tests", '{"tests": 6, "examples": 2, "kept_tests": 5, "answer_passed": 4, "programs": 3, '
...               '"why": "an example fails"}')
'passed 4 of 5 kept tests (2 stated in the task, 4 written, 2 independent solutions); an example fails'
"""

from __future__ import annotations

import json

COLUMNS = ("verify_method", "verify_verdict", "verify_evidence", "verify_confidence")
# the methods that check an answer's content; their verdict decides over an answer check of the form only (an AutoIF
# item's constraint), which otherwise vouches for an item (steps/select/selection.py)
CONTENT_METHODS = ("code_tests", "numeric", "judge")
DESCRIPTIONS = {
    "verify_method": "how the answer was checked: code_tests, numeric, judge, answer_check, none (not verified)",
    "verify_verdict": "right, wrong or unsure",
    "verify_evidence": "what the verdict rests on (JSON): tests and which passed, values compared, the judge's reason",
    "verify_confidence": "estimated probability that the answer is right (null: not measured)",
}


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def evidence_line(method: str | None, evidence: str | None) -> str:
    """A short reading of ``evidence`` for ``method`` (the raw text where it is not the JSON expected); an AutoIF
    item's constraint verdict first, where its evidence holds one."""
    try:
        e = json.loads(evidence or "{}")
    except json.JSONDecodeError:
        return (evidence or "")[:200]
    if not isinstance(e, dict):
        return str(e)[:200]
    if isinstance(e.get("constraint"), dict):
        constraint = e.pop("constraint")
        said = "passed" if constraint.get("passed") else "failed"
        return f"constraint {said}; content: {_content_line(method, e)}"[:300]
    return _content_line(method, e)


def _content_line(method: str | None, e: dict) -> str:
    if "error" in e:
        return f"not verified: {e['error']}"[:200]
    if method == "code_tests":
        if "kept_tests" not in e:
            return f"{e.get('why', 'no verdict')} ({e.get('tests', 0)} tests written)"
        stated = e.get("examples") or 0
        written = f"{stated} stated in the task, {e['tests'] - stated} written" if stated else f"{e['tests']} written"
        why = f"; {e['why']}" if e.get("why") else ""
        return (f"passed {e['answer_passed']} of {e['kept_tests']} kept tests ({written}, "
                f"{e['programs'] - 1} independent solutions){why}")[:300]
    if method == "numeric":
        samples = ", ".join(_number(v) for v in e.get("sample_values") or []) or "-"
        stated = " / ".join(_number(v) for v in e.get("answer_values") or [e.get("answer_value")])
        return f"answer {stated}; samples {samples}; program {_number(e.get('program_value'))}"
    if method == "judge":
        p = e.get("p_right")
        return (f"P(right) {p:.2f}" if isinstance(p, (int, float)) else "no P(right)") + (
            f": {e['reason']}" if e.get("reason") else "")
    if method == "answer_check":
        return f"seed's check: {e.get('detail') or '-'}"
    return f"not verified ({e.get('not_verified', '-')})"
