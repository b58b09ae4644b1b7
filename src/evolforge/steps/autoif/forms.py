"""How AutoIF's verification step asks for a function and its test cases: the paper's JSON form or a form a
135M model can follow.

``autoif.form: paper`` is the reference prompt (``prompts/autoif/verification.j2``): one zero-shot user turn
asking for a single JSON object with ``func`` and ``cases``. SmolLM2-135M-Instruct answers it with a Python block
and never with the cases (docs/how-to/autoif.md), so nothing can be cross-validated.

``autoif.form: lines`` (the default) asks for the same two things in a form small models copy reliably:

- **two short calls per sample** -- one asks for the function alone (``verification_function.j2``), the other
  for the test cases alone (``verification_cases.j2``); their answers are joined into the sample's text. A
  135M model asked for both at once copies the examples' cases under its function far more often;
- **few-shot demonstrations** -- worked examples (``prompts/autoif/verification_examples.yaml``) go before each
  question as earlier user/assistant turns, rotated by the sample index so that the K samples of one
  constraint do not all see the same example last (small models copy the nearest one);
- **marked lines instead of a JSON blob** -- the function in a ```python block, the cases as
  ``FOLLOWS: <response>`` (keeps the instruction) and ``BREAKS: <response>`` (breaks it) lines
  (:func:`parse_lines`): no quoting, escaping or brackets to get right.

Cross-validation is the same in both forms. What the demonstrations could leak is kept out:
a demonstration whose instruction equals the constraint is left out of that prompt, and a function or case
copied verbatim from a demonstration is dropped as ``copied_demonstration`` (:class:`Copies`).

>>> parse_lines("```python\\ndef evaluate(response):\\n    return '!' not in response\\n```\\n"
...             "FOLLOWS: Fine.\\nBREAKS: No!")
(Verification(func="def evaluate(response):\\n    return '!' not in response", cases=(('Fine.', True), ('No!', False))),
None)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import yaml

from evolforge.core.prompts import PromptError, PromptLibrary
from evolforge.core.text import FENCED_CODE
from evolforge.steps.autoif.shared import VERIFICATION_TEMPLATE, constraint_key

FORMS = ("lines", "paper")
FUNCTION_TEMPLATE = "autoif/verification_function.j2"
CASES_TEMPLATE = "autoif/verification_cases.j2"
LINES_TEMPLATES = (FUNCTION_TEMPLATE, CASES_TEMPLATE)
EXAMPLES_FILE = "autoif/verification_examples.yaml"


# --- the paper's form: one JSON object ---------------------------------------------------------------

@dataclass(frozen=True)
class Verification:
    func: str
    cases: tuple[tuple[str, bool], ...]  # (response text, expected result of evaluate)


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_BOOL_WORDS = {"true": True, "false": False}


def extract_json(text: str, key: str | None = None) -> tuple[Any | None, str | None]:
    """The first JSON object in ``text`` (holding ``key`` when given): fenced blocks first, then the whole
    text, trying each ``{`` in turn. Returns (object, None) or (None, reason): ``no_json`` (no brace),
    ``invalid_json`` (nothing decodes), ``missing_<key>`` (objects decode, none holds ``key``).

    Control characters inside strings are allowed (models often put raw newlines in ``func``)."""
    decoder = json.JSONDecoder(strict=False)
    candidates = [m.group(1).strip() for m in _FENCE.finditer(text)] + [text]
    saw_brace = decoded = False
    for chunk in candidates:
        for start in [i for i, c in enumerate(chunk) if c == "{"]:
            saw_brace = True
            try:
                obj, _ = decoder.raw_decode(chunk, start)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                decoded = True
                if key is None or key in obj:
                    return obj, None
    if decoded:
        return None, f"missing_{key}"
    return None, "invalid_json" if saw_brace else "no_json"


_PY_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)```", re.DOTALL)


def python_function(text: str) -> str | None:
    """``evaluate`` written as plain Python instead of inside the JSON: the first fenced block that defines
    it (imports and helpers included), else the unfenced ``def evaluate`` and its indented body."""
    for match in _PY_FENCE.finditer(text):
        if re.search(r"^\s*def evaluate\s*\(", match.group(1), re.M):
            return match.group(1).strip()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"def evaluate\s*\(", line):
            body = [line]
            for nxt in lines[i + 1:]:
                if nxt.strip() and not nxt[0].isspace():
                    break
                body.append(nxt)
            return "\n".join(body).strip()
    return None


def parse_verification(text: str) -> tuple[Verification | None, str | None]:
    """(function + cases, None) or (None, reason). Expected results may be JSON booleans or "true"/"false".

    The JSON object the prompt asks for comes first. Small models often write the function as a Python block
    instead; that function is used when a JSON object with ``cases`` stands elsewhere in the answer, and the
    sample fails with ``function_without_cases`` when none does (a function alone cannot be cross-validated)."""
    obj, reason = extract_json(text, key="func")
    if obj is None:
        func = python_function(text)
        if func is None:
            return None, reason
        cases_obj, _ = extract_json(text, key="cases")
        if cases_obj is None:
            return None, "function_without_cases"
        obj = {"func": func, "cases": cases_obj["cases"]}
    func = obj["func"]
    if not isinstance(func, str) or not func.strip():
        return None, "missing_func"
    if "\n" not in func and "\\n" in func:  # the reference prompt asks for "\n" escapes written literally
        func = func.replace("\\n", "\n")
    if "def evaluate" not in func:
        return None, "no_evaluate_function"
    cases = []
    for case in obj.get("cases") or []:
        if not isinstance(case, dict) or not isinstance(case.get("input"), str):
            continue
        expected = case.get("output")
        if isinstance(expected, str):
            expected = _BOOL_WORDS.get(expected.strip().lower())
        if isinstance(expected, bool):
            cases.append((case["input"], expected))
    if not cases:
        return None, "no_valid_cases"
    return Verification(func.strip(), tuple(cases)), None


# --- the lines form -------------------------------------------------------------------------------------

_CASE_LINE = re.compile(r"^\s*(?:[-*]\s*)?\**(FOLLOWS|BREAKS)\**\s*:\s*\**\s*(.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class Demonstration:
    """One worked example: an instruction, its function, a response that follows it and one that breaks it."""

    constraint: str
    func: str
    follows: str
    breaks: str

    def function_answer(self) -> str:
        """The assistant turn of the function call, as :func:`parse_lines` reads it back."""
        return f"```python\n{self.func}\n```"

    def cases_answer(self) -> str:
        """The assistant turn of the cases call."""
        return f"FOLLOWS: {self.follows}\nBREAKS: {self.breaks}"

    def answer(self) -> str:
        """The whole sample, as the two answers are joined (:func:`join_answers`)."""
        return join_answers([self.function_answer(), self.cases_answer()])


def load_demonstrations(prompts: PromptLibrary, name: str = EXAMPLES_FILE) -> list[Demonstration]:
    """The worked examples file: a YAML list of {constraint, func, follows, breaks}, all non-empty strings
    (a `PromptError` naming the file and the example otherwise).
    Each one must parse back to itself (so the examples show exactly the form the parser accepts)."""
    where = f"{prompts.root / name}"
    try:
        rows = yaml.safe_load(prompts.source(name))
    except yaml.YAMLError as err:
        raise PromptError(f"{where}: not valid YAML ({err})") from None
    if not isinstance(rows, list) or not rows:
        raise PromptError(f"{where}: expected a non-empty list of examples")
    fields = ("constraint", "func", "follows", "breaks")
    demos = []
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or set(row) != set(fields) or not all(isinstance(row[f], str)
                                                                           and row[f].strip() for f in fields):
            raise PromptError(f"{where}: example {i}: needs exactly the keys {', '.join(fields)}, each a "
                              f"non-empty string")
        demo = Demonstration(**{f: row[f].strip() for f in fields})
        parsed, reason = parse_lines(demo.answer())
        if parsed is None or parsed.cases != ((demo.follows, True), (demo.breaks, False)):
            raise PromptError(f"{where}: example {i}: does not parse back in the lines form "
                              f"({reason or 'cases differ'}); "
                             "func must define evaluate(response), follows/breaks must be one line each")
        demos.append(demo)
    return demos


def verification_conversations(form: str, constraint: str, prompts: PromptLibrary, demos: Sequence[Demonstration] = (),
                               sample_index: int = 0) -> list[list[dict[str, str]]]:
    """The chat conversations of one verification sample, whose answers :func:`join_answers` makes its text.

    ``paper``: one, the reference prompt alone. ``lines``: two, the function call and the cases call, each
    after the demonstrations for other instructions (rotated by ``sample_index``)."""
    if form == "paper":
        return [[{"role": "user", "content": prompts.render(VERIFICATION_TEMPLATE, constraint=constraint)}]]
    if form != "lines":
        raise ValueError(f"autoif.form: {form!r} is not one of {FORMS}")
    usable = [d for d in demos if constraint_key(d.constraint) != constraint_key(constraint)]
    shift = sample_index % len(usable) if usable else 0
    rotated = usable[shift:] + usable[:shift]
    conversations = []
    for template, answer in ((FUNCTION_TEMPLATE, Demonstration.function_answer),
                             (CASES_TEMPLATE, Demonstration.cases_answer)):
        turns = []
        for demo in rotated:
            turns += [{"role": "user", "content": prompts.render(template, constraint=demo.constraint)},
                      {"role": "assistant", "content": answer(demo)}]
        conversations.append(turns + [{"role": "user", "content": prompts.render(template, constraint=constraint)}])
    return conversations


def join_answers(answers: Sequence[str | None]) -> str | None:
    """One sample's text from its calls' answers (None when any call failed: nothing is made up for it)."""
    return None if any(a is None for a in answers) else "\n".join(answers)


def parse_lines(text: str) -> tuple[Verification | None, str | None]:
    """(function + cases, None) or (None, reason) for an answer in the ``lines`` form.

    The function is the first ```python block defining ``evaluate`` (or an unfenced ``def evaluate``); cases
    are the lines starting ``FOLLOWS:`` (expected True) or ``BREAKS:`` (expected False), case-insensitive, a
    list marker or markdown bold allowed before the mark. Reasons: ``no_evaluate_function`` (no function),
    ``no_valid_cases`` (a function, but no marked line with text after the mark)."""
    func = python_function(text)
    if func is None:
        return None, "no_evaluate_function"
    body = FENCED_CODE.sub("", text)  # a FOLLOWS line inside the function's block is code, not a case
    cases = []
    for line in body.splitlines():
        match = _CASE_LINE.match(line)
        if match and match.group(2).strip():
            cases.append((match.group(2).strip(), match.group(1).upper() == "FOLLOWS"))
    if not cases:
        return None, "no_valid_cases"
    return Verification(func, tuple(dict.fromkeys(cases))), None


def parser_for(form: str) -> Callable[[str], tuple[Verification | None, str | None]]:
    """The sample parser of a form: :func:`parse_lines` or the paper form's JSON reader."""
    return parse_lines if form == "lines" else parse_verification


def _normal(code: str) -> str:
    return re.sub(r"\s+", " ", code).strip()


@dataclass(frozen=True)
class Copies:
    """What the demonstrations wrote: function bodies (whitespace-normalised) and case texts."""

    funcs: frozenset[str] = frozenset()
    cases: frozenset[str] = frozenset()

    @classmethod
    def of(cls, demos: Sequence[Demonstration]) -> "Copies":
        """The copy check for samples written after ``demos`` (nothing is a copy when there are none)."""
        return cls(frozenset(_normal(d.func) for d in demos),
                   frozenset(c for d in demos for c in (d.follows, d.breaks)))

    def func(self, func: str) -> bool:
        return _normal(func) in self.funcs

    def case(self, text: str) -> bool:
        return text.strip() in self.cases

