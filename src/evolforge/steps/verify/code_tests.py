"""Code answers checked by tests they did not write (CodeT's dual agreement over AutoIF's cross-validation).

For an instruction whose answer is Python code, the model writes ``test_sets`` sets of assert lines for the
*instruction* (it never sees the answer: :data:`TESTS_TEMPLATE`) and ``solutions`` independent solutions
(:data:`SOLUTION_TEMPLATE`). Every program -- the answer's and the peers' -- runs every test in the sandbox, one
process per program (:func:`evolforge.steps.common.function_runs.run_function`: the program wrapped in an
``evaluate(test)`` that execs one assert). Then:

1. AutoIF's rule (:func:`evolforge.steps.common.cross_validation.cross_validate`, every test expected to pass): a test
   no program passes is dropped as a wrong test; a program's accuracy is its share of the kept tests;
2. CodeT's dual agreement: programs that pass the same kept tests form a group scored
   ``programs x tests passed``; the top group is the consensus.

The task's own examples come first (:func:`stated_examples`: a doctest ``>>> name(...)`` and the line after it,
or a line ``name(...) == / => / -> / ➞ value``, arguments and value Python literals), then those the answer's code
states for its own function (:func:`answer_examples`: ``print(name(3))  # Output: 9``): tests never dropped, and an
answer that fails one is ``wrong`` whatever the other tests say.

The answer is ``right`` when it passes ``min_pass`` of the kept tests (the examples included), or, with
``consensus`` (CodeT's rule), when it belongs to a top group (one wrong test does not sink it); ``wrong`` when it
fails an example, or a group it is not in outscores its own, or (without ``consensus``) when it falls below
``min_pass``; ``unsure`` without a kept test. Without ``consensus`` programs that share one bug cannot vouch for
each other: on the HumanEval bench (docs/explanation/verification.md) every right answer passed all its kept
tests, and the top-group rule let wrong ones through.

The function the tests call is named from the instruction (``def name(`` or ```name(```), else ``solution``;
an answer whose functions carry another name gets that name bound to its last top-level function.

>>> function_name("Complete it:\\ndef add(a, b):\\n    '''Sum.'''")
'add'
>>> parse_tests("```python\\nassert add(1, 2) == 3\\n1. assert add(0, 0) == 0\\nassert add(\\n```", "add")
['assert add(1, 2) == 3', 'assert add(0, 0) == 0']
>>> consensus([[True, True], [True, False], [True, True]])
([0, 2], 4)
>>> stated_examples("def add(a, b):\\n    >>> add(1, 2)\\n    3\\n    add(x, 1) == 2\\n    add(0, 0) ➞ 0", "add")
['assert add(1, 2) == 3', 'assert add(0, 0) == 0']
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Sequence

from evolforge.steps.common.answer_check import extract_code
from evolforge.steps.common.claims import claimed_examples, literal_call, literal_text, top_level_functions
from evolforge.steps.common.cross_validation import cross_validate
from evolforge.steps.common.function_runs import FunctionRun

TESTS_TEMPLATE = "verify/tests.j2"
SOLUTION_TEMPLATE = "verify/solution.j2"
DEFAULT_NAME = "solution"
_DEF = re.compile(r"^\s*def\s+([A-Za-z_]\w*)\s*\(", re.M)
_NAMED = re.compile(r"`([A-Za-z_]\w*)\s*\(")
_CODE_WORDS = re.compile(r"\b(python|function|program|script|code|implement|method|class|algorithm)\b", re.I)
_FENCED = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n([\s\S]*?)(?:```|\Z)")
_LIST_MARK = re.compile(r"^(?:[-*]\s+|\d+[.)]\s+)")
_STATED = re.compile(r"^(?:>>>\s*)?(?P<call>[A-Za-z_]\w*\(.*\))\s*(?:==>|==|=>|->|➞|→)\s*(?P<want>.+)$")
# the wrapper every program runs under: one assert per call, True when it holds, False on any exception
EVALUATE = '''

def evaluate(_test):
    try:
        exec(_test, globals())
    except Exception:
        return False
    return True
'''


def function_name(task: str) -> str:
    """The function name the task asks for (its ``def`` line, or a backquoted call), else ``solution``."""
    found = _DEF.findall(task) or _NAMED.findall(task)
    return found[-1] if found else DEFAULT_NAME


def is_code_task(task: str, answer: str | None) -> bool:
    """A task about code whose answer holds a Python program with a top-level function."""
    code = extract_code(answer or "")
    return code is not None and bool(top_level_functions(code)) and bool(_CODE_WORDS.search(task))


def program_for(answer: str | None, name: str, task: str = "") -> str | None:
    """The answer's code with ``name`` bound to its function, plus :data:`EVALUATE`; None without a function.
    A task that gives the signature (HumanEval's prompt) and an answer that gives only the body: the two joined."""
    code = extract_code(answer or "")
    if (code is None or not top_level_functions(code)) and _DEF.search(task):
        fenced = _FENCED.search(answer or "")
        body = (fenced.group(1) if fenced else answer or "").strip("\n")
        code = extract_code(task.rstrip() + "\n" + body) if body.startswith((" ", "\t")) else None
    functions = top_level_functions(code) if code else []
    if not functions:
        return None
    alias = "" if name in functions else f"\n\n{name} = {own_function(functions)}\n"
    return code + alias + EVALUATE


def own_function(functions: list[str]) -> str:
    """The answer's own function among its top-level ones: the last, a demo's main() or a test_ function left aside."""
    return ([f for f in functions if f != "main" and not f.startswith("test")] or functions)[-1]


def answer_examples(answer: str | None, name: str) -> list[str]:
    """The examples the answer's code states for its own function (:func:`~evolforge.steps.common.claims.
    claimed_examples`), as assert lines on ``name``: the function :func:`program_for` binds ``name`` to."""
    code = extract_code(answer or "")
    functions = top_level_functions(code) if code else []
    if not functions:
        return []
    own = own_function(functions)
    claims = claimed_examples(code, (name, own))
    return [re.sub(rf"^assert {re.escape(own)}\(", f"assert {name}(", c) for c in claims]


def stated_examples(task: str, name: str) -> list[str]:
    """The examples the task itself states for ``name``, as assert lines: a doctest (``>>> name(...)`` and the
    line after it) or a line ``name(...) == value`` (or ``=>``, ``->``, ``➞``, ``→``), literals only."""
    found: dict[str, None] = {}
    lines = task.splitlines()
    for k, line in enumerate(lines):
        text = line.strip()
        if text.startswith(">>>"):
            source, following = text[3:].strip(), lines[k + 1].strip() if k + 1 < len(lines) else ""
            want = literal_text(following) if following and not following.startswith(">>>") else None
            if want is not None and literal_call(source, name):
                found.setdefault(f"assert {source} == {want}", None)
                continue
        stated = _STATED.match(text)
        if stated and literal_call(stated["call"], name) and (want := literal_text(stated["want"])) is not None:
            found.setdefault(f"assert {stated['call']} == {want}", None)
    return list(found)


def parse_tests(text: str | None, name: str) -> list[str]:
    """The distinct assert lines of a test set that call ``name`` and parse, in order (fences, bullets and
    numbering around them ignored)."""
    found: dict[str, None] = {}
    for line in (text or "").splitlines():
        line = _LIST_MARK.sub("", line.strip()).strip("` ")
        if not line.startswith("assert ") or f"{name}(" not in line:
            continue
        try:
            ast.parse(line)
        except (SyntaxError, ValueError):
            continue
        found.setdefault(line, None)
    return list(found)


def consensus(matrix: Sequence[Sequence[bool]]) -> tuple[list[int], int]:
    """CodeT's dual agreement: programs grouped by the tests they pass, each group scored (programs in it) x
    (tests it passes). Returns (the programs of the top groups, the top score)."""
    groups: dict[tuple[bool, ...], list[int]] = {}
    for p, row in enumerate(matrix):
        groups.setdefault(tuple(row), []).append(p)
    scores = {key: len(members) * sum(key) for key, members in groups.items()}
    top = max(scores.values(), default=0)
    return sorted(p for key, members in groups.items() if scores[key] == top for p in members), top


@dataclass
class CodeVerdict:
    verdict: str  # right | wrong | unsure
    confidence: float | None  # the answer's share of the kept tests passed
    evidence: dict = field(default_factory=dict)


def judge_runs(tests: Sequence[str], runs: Sequence[FunctionRun | None], min_pass: float, examples: int = 0,
               with_consensus: bool = True) -> CodeVerdict:
    """The verdict on the answer (``runs[0]``) from every program's run on ``tests`` (None: the program
    could not be built; its row fails every test). The first ``examples`` tests are the task's own (never
    dropped); ``with_consensus``: CodeT's top group vouches for an answer below ``min_pass``."""
    passed = [[bool(r is not None and r.results[t] is True) for t in range(len(tests))] for r in runs]
    evidence: dict = {"tests": len(tests), "examples": examples, "programs": len(runs),
                      "answer_run": runs[0].status if runs[0] is not None else "no_function"}
    if not tests:
        return CodeVerdict("unsure", None, evidence | {"why": "no test parsed"})
    cv = cross_validate(passed, [True] * len(tests), min_accuracy=min_pass)
    keep = [t < examples or k for t, k in enumerate(cv.cases_kept)]
    kept = [t for t, k in enumerate(keep) if k]
    evidence["results"] = [{"test": test[:160], "kept": k, "answer_passed": passed[0][t], "example": t < examples}
                           for t, (test, k) in enumerate(zip(tests, keep))]
    if not kept:
        return CodeVerdict("unsure", None, evidence | {"why": "no program passes any test"})
    top, top_score = consensus([[row[t] for t in kept] for row in passed])
    accuracy = sum(passed[0][t] for t in kept) / len(kept)
    evidence |= {"kept_tests": len(kept), "answer_passed": sum(passed[0][t] for t in kept),
                 "peer_accuracy": [round(sum(row[t] for t in kept) / len(kept), 3) for row in passed[1:]],
                 "consensus": {"top_score": top_score, "answer_in_top_group": 0 in top}}
    failed = [tests[t][:160] for t in range(examples) if not passed[0][t]]
    if failed:
        return CodeVerdict("wrong", accuracy, evidence | {"why": f"fails a stated example: {failed[0]}"})
    if accuracy >= min_pass or (with_consensus and 0 in top):
        return CodeVerdict("right", accuracy, evidence)
    if 0 not in top:
        return CodeVerdict("wrong", accuracy, evidence | {"why": "programs that agree on other tests outvote it"})
    return CodeVerdict("wrong", accuracy, evidence | {"why": f"passes {accuracy:.0%} of the kept tests, below "
                                                             f"verify.min_pass {min_pass:g}"})
