"""AutoIF steps 2 and 3 (the ``autoif_verify`` stage): each constraint's sampled answers parsed into a
verification function and test cases (:func:`parse_verification`, the paper's JSON form), every function run
on every case in the sandbox and cross-validated (:func:`cross_validate`, :func:`verify_constraints`).

>>> cross_validate([[True, False], [True, True]], [True, False], min_accuracy=0.8).functions_kept
[True, False]
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import polars as pl

from evolforge.core.records import FAILED, make_id
from evolforge.core.settings import AutoIFSettings
from evolforge.steps.autoif import COPIED, KEPT
from evolforge.steps.autoif_sandbox import FunctionRun, Runner, run_function


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


@dataclass
class CrossValidation:
    cases_kept: list[bool]
    accuracy: list[float | None]  # per function, on the kept cases; None when no case was kept
    functions_kept: list[bool]


def cross_validate(matrix: Sequence[Sequence[bool | None]], expected: Sequence[bool],
                   min_accuracy: float = 0.8) -> CrossValidation:
    """``matrix[f][c]``: what function f returned on case c (None: no bool). A case is kept if any function
    reproduces its expected result; a function if its accuracy on the kept cases is >= ``min_accuracy``."""
    cases_kept = [any(row[c] is exp for row in matrix) for c, exp in enumerate(expected)]
    kept_idx = [c for c, k in enumerate(cases_kept) if k]
    accuracy = [sum(row[c] is expected[c] for c in kept_idx) / len(kept_idx) if kept_idx else None for row in matrix]
    return CrossValidation(cases_kept, accuracy, [a is not None and a >= min_accuracy for a in accuracy])


Parser = Callable[[str], "tuple[Verification | None, str | None]"]


class CopyCheck(Protocol):
    """Tells whether a function or a case was copied from a few-shot demonstration (see autoif_forms.Copies)."""

    def func(self, func: str) -> bool: ...

    def case(self, text: str) -> bool: ...


class _NoCopies:
    def func(self, func: str) -> bool:
        return False

    def case(self, text: str) -> bool:
        return False


def verify_constraints(constraints: pl.DataFrame, raw_samples: Sequence[Sequence[str | None]], settings: AutoIFSettings,
                       runner: Runner | None = None, parse: Parser | None = None,
                       copies: CopyCheck | None = None) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Parse each constraint's samples (``parse``: the paper's JSON form by default), run every function on
    every case, cross-validate. A function or case that ``copies`` recognises as a demonstration's is dropped
    (``copied_demonstration``) before anything runs; a sample the LLM failed to return (None) is ``no_output``.

    Returns (constraints with status / failure_reason and counts, functions table, cases table)."""
    runner = runner or (lambda func, inputs: run_function(func, inputs, settings.case_timeout_s, settings.memory_mb))
    parse, copies = parse or parse_verification, copies or _NoCopies()
    plans = []  # per constraint: (functions [(sample, func, raw)], parse failures, cases [(input, expected)], copied cases)
    jobs = []  # (constraint position, function position, func, inputs)
    for pos, samples in enumerate(raw_samples):
        funcs, failures, cases, seen_funcs, copied_cases = [], [], {}, {}, {}
        for k, raw in enumerate(samples):
            parsed, reason = parse(raw) if raw is not None else (None, "no_output")
            if parsed is None:
                failures.append((k, raw, reason))
                continue
            if copies.func(parsed.func):
                failures.append((k, raw, COPIED))
            elif parsed.func in seen_funcs:
                failures.append((k, raw, "duplicate_function"))
            else:
                seen_funcs[parsed.func] = k
                funcs.append((k, parsed.func, raw))
            for case in parsed.cases:
                (copied_cases if copies.case(case[0]) else cases).setdefault(case, None)
        cases_list = list(cases)
        plans.append((funcs, failures, cases_list, list(copied_cases)))
        for f, (_, func, _) in enumerate(funcs):
            if cases_list:
                jobs.append((pos, f, func, [c[0] for c in cases_list]))
    with ThreadPoolExecutor(max_workers=settings.workers) as pool:  # each job waits on its own subprocess
        outcomes = list(pool.map(lambda job: runner(job[2], job[3]), jobs))
    runs = {(pos, f): run for (pos, f, _, _), run in zip(jobs, outcomes)}

    c_rows, f_rows, k_rows = [], [], []
    for pos, (row, (funcs, failures, cases, copied_cases)) in enumerate(zip(constraints.iter_rows(named=True), plans)):
        cid = row["id"]
        usable = [f for f in range(len(funcs)) if runs.get((pos, f)) is not None and runs[(pos, f)].status == "ok"]
        cv = cross_validate([runs[(pos, f)].results for f in usable], [c[1] for c in cases], settings.min_accuracy)
        acc = dict(zip(usable, cv.accuracy))
        kept = {f for f, k in zip(usable, cv.functions_kept) if k}
        for k, raw, reason in failures:
            f_rows.append({"constraint_id": cid, "sample_index": k, "function_id": make_id(cid, "sample", k), "func": None,
                           "raw": raw, "run_status": None, "accuracy": None, "status": FAILED, "failure_reason": reason})
        for f, (k, func, raw) in enumerate(funcs):
            run = runs.get((pos, f))
            reason = None
            if run is None:
                reason = "no_cases"
            elif run.status != "ok":
                reason = f"run_{run.status}"
            elif f not in kept:
                reason = "no_kept_cases" if acc[f] is None else "low_accuracy"
            f_rows.append({"constraint_id": cid, "sample_index": k, "function_id": make_id(cid, func), "func": func, "raw": raw,
                           "run_status": run.status if run else None, "run_detail": run.detail if run else None,
                           "case_errors": _error_counts(run),
                           "accuracy": acc.get(f), "status": KEPT if f in kept else FAILED, "failure_reason": reason})
        for c, (inp, exp) in enumerate(cases):
            k_rows.append({"constraint_id": cid, "case_id": make_id(cid, inp, exp), "input": inp, "expected": exp,
                           "status": KEPT if cv.cases_kept[c] else FAILED,
                           "failure_reason": None if cv.cases_kept[c] else "no_function_agrees"})
        for inp, exp in copied_cases:
            k_rows.append({"constraint_id": cid, "case_id": make_id(cid, inp, exp), "input": inp, "expected": exp,
                           "status": FAILED, "failure_reason": COPIED})
        n_cases_kept = sum(cv.cases_kept)
        outcomes_kept = {exp for (_, exp), k in zip(cases, cv.cases_kept) if k}
        if not funcs:
            reason = "no_parsable_sample"
        elif not cases:
            reason = "no_cases"
        elif not usable:
            reason = "no_runnable_function"
        elif n_cases_kept == 0:
            reason = "no_case_reproduced"
        elif settings.both_outcomes and len(outcomes_kept) < 2:  # a constant function would pass one-sided cases
            reason = "one_sided_cases"
        elif not kept:
            reason = "no_accurate_function"
        elif len(kept) < settings.min_functions:
            reason = "too_few_functions"
        elif n_cases_kept < settings.min_cases:
            reason = "too_few_cases"
        else:
            reason = None
        c_rows.append({**row, "status": KEPT if reason is None else FAILED, "failure_reason": reason,
                       "samples": len(funcs) + len(failures), "functions": len(funcs), "functions_runnable": len(usable),
                       "functions_kept": len(kept), "cases": len(cases), "cases_kept": n_cases_kept})
    f_schema = {"constraint_id": pl.String, "sample_index": pl.Int64, "function_id": pl.String, "func": pl.String,
                "raw": pl.String, "run_status": pl.String, "run_detail": pl.String, "case_errors": pl.String,
                "accuracy": pl.Float64,
                "status": pl.String, "failure_reason": pl.String}
    k_schema = {"constraint_id": pl.String, "case_id": pl.String, "input": pl.String, "expected": pl.Boolean,
                "status": pl.String, "failure_reason": pl.String}
    c_schema = {**constraints.schema, "samples": pl.Int64, "functions": pl.Int64, "functions_runnable": pl.Int64,
                "functions_kept": pl.Int64, "cases": pl.Int64, "cases_kept": pl.Int64}
    return (pl.DataFrame(c_rows, schema=c_schema), pl.DataFrame(f_rows, schema=f_schema),
            pl.DataFrame(k_rows, schema=k_schema))


def _error_counts(run: FunctionRun | None) -> str | None:
    """Why cases gave no bool, e.g. ``{"case_timeout": 2}`` (JSON), or None when every case answered."""
    if run is None or not any(run.errors):
        return None
    counts: dict[str, int] = {}
    for e in run.errors:
        if e:
            counts[e] = counts.get(e, 0) + 1
    return json.dumps(counts, sort_keys=True)


def verify_summary(constraints: pl.DataFrame, functions: pl.DataFrame, cases: pl.DataFrame) -> dict[str, Any]:
    def by_reason(t: pl.DataFrame) -> dict[str, int]:
        failed = t.filter(pl.col("status") == FAILED)
        return {r: int(n) for r, n in failed.group_by("failure_reason").len().sort("failure_reason").iter_rows()}

    return {"constraints": constraints.height, "constraints_verified": int((constraints["status"] == KEPT).sum()),
            "constraints_dropped": by_reason(constraints),
            "samples": functions.height, "functions_kept": int((functions["status"] == KEPT).sum()),
            "functions_dropped": by_reason(functions),
            "cases": cases.height, "cases_kept": int((cases["status"] == KEPT).sum()),
            "cases_dropped": by_reason(cases)}
