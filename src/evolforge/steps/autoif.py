"""AutoIF (the SLM paper's third scenario): verifiable constraints, checked by model-written code.

Four steps, each a stage:

1. **self-instruct** -- the seed constraints go into a prompt asking the evolver for new format (not style)
   constraints; the answer's list lines are parsed and deduplicated (:func:`parse_constraint_lines`,
   :func:`collect_constraints`);
2. **verification functions** -- per constraint, K samples each asking for one JSON object holding a Python
   ``evaluate(response) -> bool`` and test cases with expected results (:func:`parse_verification`);
3. **cross-validation** -- every function runs on every case in the sandbox, one process per function
   (:func:`run_function`); a case is kept if any function reproduces its expected result, a function if its
   accuracy on the kept cases reaches ``min_accuracy``; a constraint with no function left is dropped
   (:func:`cross_validate`);
4. **pairing** -- each verified constraint is paired with Q queries in the paper's "answer the query strictly
   following the instruction" layout and answered by the responder; optionally only responses that the
   constraint's kept functions accept are kept (:func:`verify_responses`).

Every dropped line, sample, function, case and constraint stays in an output table with its reason.

>>> parse_constraint_lines("Here you go:\\n- Use no commas.\\n2. End with 'Bye'.")
[('Here you go:', 'not_a_list_item'), ('Use no commas.', None), ("End with 'Bye'.", None)]
>>> cross_validate([[True, False], [True, True]], [True, False], min_accuracy=0.8).functions_kept
[True, False]
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import polars as pl

from evolforge.core.records import EVOLVED, FAILED, LINEAGE, SEED, make_id
from evolforge.core.roles import ChatRequest
from evolforge.llm import LLM
from evolforge.core.settings import QUERY_DEFAULTS, AutoIFSettings, QuerySource  # noqa: F401  (part of this module's API)

SELF_INSTRUCT_TEMPLATE = "autoif/self_instruct.j2"
VERIFICATION_TEMPLATE = "autoif/verification.j2"
RESPOND_TEMPLATE = "autoif/respond.j2"
METHOD = "autoif"
KEPT = "kept"  # status of a kept function, case or verified constraint in the intermediate tables
COPIED = "copied_demonstration"  # a function or case copied verbatim from a few-shot demonstration


# --- step 1: constraints -------------------------------------------------------------------------

_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d{1,3}[.)])\s+")


def read_seed_constraints(path: str | Path) -> list[str]:
    """The seed constraints: one per line, blank lines and ``#`` comments skipped."""
    from evolforge.core.jsonfiles import read_text
    from evolforge.core.validation import CONTROL_CHARACTERS, DataError

    lines = read_text(Path(path)).splitlines()
    seeds = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not seeds:
        raise DataError(path, "at least one seed constraint", detail="one per line; # starts a comment")
    control = [i for i, ln in enumerate(lines, start=1) if re.search(CONTROL_CHARACTERS, ln)]
    if control:  # an ANSI escape or a NUL would go into every prompt built on it
        raise DataError(path, "no control characters (NUL, ANSI escapes...; tab is fine)", control)
    return seeds


def parse_constraint_lines(text: str) -> list[tuple[str, str | None]]:
    """Each non-empty line as (text, reason): list items ("- x", "* x", "3. x") lose their marker and get
    reason None; other lines (preambles, sign-offs) are kept with reason ``not_a_list_item``."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _BULLET.match(line)
        out.append((line[match.end():].strip(), None) if match else (line.strip(), "not_a_list_item"))
    return out


def constraint_key(text: str) -> str:
    """What two constraints must share to be duplicates: case, spacing and end punctuation ignored."""
    return re.sub(r"\s+", " ", text).strip().strip(" .!").lower()


def collect_constraints(seeds: Sequence[str], outputs: Sequence[str], min_chars: int = 10,
                        max_chars: int = 300) -> pl.DataFrame:
    """One row per seed and per line of each self-instruct output, deduplicated; dropped lines keep a reason.

    Seeds come first (status ``seed``), then new lines in call order (status ``evolved``); a line equal to an
    earlier one under :func:`constraint_key` is ``failed`` with ``duplicate``."""
    rows, seen = [], set()

    def add(text: str, method: str, call: int | None, reason: str | None) -> None:
        key = constraint_key(text)
        if reason is None and not min_chars <= len(text) <= max_chars:
            reason = "too_short" if len(text) < min_chars else "too_long"
        if reason is None and key in seen:
            reason = "duplicate"
        if reason is None:
            seen.add(key)
        cid = make_id("autoif-constraint", key)
        status = FAILED if reason else (SEED if method == "seed_constraint" else EVOLVED)
        rows.append({"id": cid, "root_id": cid, "parent_id": None, "round": 0, "method": method,
                     "status": status, "failure_reason": reason, "constraint": text, "call_index": call})

    for seed in seeds:
        add(seed, "seed_constraint", None, None)
    for call, text in enumerate(outputs):
        for line, reason in parse_constraint_lines(text):
            add(line, "self_instruct", call, reason)
    table = pl.DataFrame(rows, schema={"id": pl.String, "root_id": pl.String, "parent_id": pl.String, "round": pl.Int32,
                                       "method": pl.String, "status": pl.String, "failure_reason": pl.String,
                                       "constraint": pl.String, "call_index": pl.Int64})
    # ids repeat for duplicates: give each failed row its own id (the line position) so ids stay unique
    return table.with_row_index("_pos").with_columns(
        id=pl.when(pl.col("status") == FAILED).then(
            pl.struct("id", "_pos").map_elements(lambda r: make_id(r["id"], r["_pos"]), return_dtype=pl.String))
        .otherwise(pl.col("id"))).drop("_pos")


def sampled_requests(llm: LLM, content: str, n: int, **sampling) -> list[ChatRequest]:
    """``n`` samples of one user turn: ``sample_index`` tells them apart in the cache and in the request seed."""
    base = llm.request([{"role": "user", "content": content}], **sampling)
    return [dataclasses.replace(base, sample_index=i) for i in range(n)]


def usable_constraints(table: pl.DataFrame) -> pl.DataFrame:
    return table.filter(pl.col("status") != FAILED)


def hash_sample(table: pl.DataFrame, n: int | None, seed: int) -> pl.DataFrame:
    """At most ``n`` rows chosen by a seeded hash of their id: adding rows never reshuffles the others."""
    if n is None or table.height <= n:
        return table
    order = table["id"].map_elements(lambda i: make_id(seed, i), return_dtype=pl.String)
    return table.with_columns(_order=order).sort("_order").head(n).drop("_order")


# --- step 2: verification functions and test cases -----------------------------------------------


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


# --- step 3: running functions in the sandbox, cross-validation -----------------------------------

# One program per function: it defines the function, calls it on every input in order and writes one verdict
# line per input to stderr (the only stream the sandbox returns), each prefixed by a random tag so the
# function's own output is never taken for a verdict. The sandbox runs programs off the main thread, so no
# signal can interrupt one case: the process as a whole gets STARTUP_S + case_timeout_s per input, and a case
# that loops past it stops the run -- the inputs left without a line take the sandbox's status (timeout).
# Lines written before the sandbox stops the process (time limit, blocked socket) still count.
_HARNESS = '''
import io as _io, json as _json, os as _os, sys as _sys
_TAG = {tag!r}
_INPUTS = _json.loads({inputs!r})
def _say(obj):
    _os.write(2, (_TAG + " " + _json.dumps(obj) + "\\n").encode())
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

STARTUP_S = 5.0  # wall-clock allowance for the interpreter and the function's imports


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


def run_function(func: str, inputs: Sequence[str], case_timeout_s: float = 5.0, memory_mb: int = 512) -> FunctionRun:
    """Run ``evaluate`` from ``func`` on every input, in one sandboxed process."""
    from evolforge.eval.sandbox import run_untrusted

    tag = "verdict-" + secrets.token_hex(8)
    limit = STARTUP_S + case_timeout_s * max(1, len(inputs))
    result = run_untrusted(harness(func, inputs, tag), timeout_s=limit, memory_mb=memory_mb)
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


Runner = Callable[[str, Sequence[str]], FunctionRun]


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


# --- step 4: queries, responses, response verification --------------------------------------------


def select_queries(queries: pl.DataFrame, source: QuerySource) -> pl.DataFrame:
    """Queries (id, query) from a seed-format table: instruction + "\\n" + input, within the length window
    (exclusive bounds, as the reference code's ``20 < len(q) < 300``)."""
    text = pl.when(pl.col("input") != "").then(pl.col("instruction") + "\n" + pl.col("input")).otherwise(pl.col("instruction"))
    out = queries.select(pl.col("id").alias("query_id"), text.alias("query"))
    return out.filter((pl.col("query").str.len_chars() > source.min_chars) & (pl.col("query").str.len_chars() < source.max_chars))


def pair_queries(constraints: pl.DataFrame, queries: pl.DataFrame, per_constraint: int, seed: int) -> pl.DataFrame:
    """Each constraint with ``per_constraint`` distinct queries, chosen by a seeded hash of (constraint, query):
    a constraint's queries do not change when other constraints come or go."""
    if queries.is_empty() and not constraints.is_empty():
        raise ValueError("params.yaml autoif.queries: no query within the length window (min_chars < len < max_chars)")
    rows = []
    for c in constraints.select("id", "constraint").iter_rows(named=True):
        ranked = sorted(queries.iter_rows(named=True), key=lambda q: make_id(seed, c["id"], q["query_id"]))
        for q in ranked[:per_constraint]:
            rows.append({"constraint_id": c["id"], "constraint": c["constraint"], **q})
    return pl.DataFrame(rows, schema=PAIR_SCHEMA)


PAIR_SCHEMA = {"constraint_id": pl.String, "constraint": pl.String, "query_id": pl.String, "query": pl.String}


def response_records(pairs: pl.DataFrame, outputs: Sequence[str], *, evolver_model: str, self_instruct_hash: str,
                     response_hash: str) -> pl.DataFrame:
    """The pairs as rows of the responses schema (``data/responses``): instruction = constraint, input =
    query (the reference code's record), lineage from the constraint, ``round`` 1, ``method`` autoif."""
    return pairs.with_columns(
        id=pl.struct("constraint_id", "query_id").map_elements(lambda r: make_id(METHOD, r["constraint_id"], r["query_id"]),
                                                            return_dtype=pl.String),
        root_id=pl.col("constraint_id"), parent_id=pl.col("constraint_id"), round=pl.lit(1, pl.Int32),
        method=pl.lit(METHOD), status=pl.lit(EVOLVED), failure_reason=pl.lit(None, pl.String),
        instruction=pl.col("constraint"), input=pl.col("query"), evolve_template_hash=pl.lit(self_instruct_hash),
        evolver_model=pl.lit(evolver_model), output=pl.Series(list(outputs), dtype=pl.String),
        response_template_hash=pl.lit(response_hash),
    ).select(LINEAGE + ["instruction", "input", "evolve_template_hash", "evolver_model", "output",
                        "response_template_hash", "constraint_id", "query_id"])


def verify_responses(table: pl.DataFrame, functions: pl.DataFrame, settings: AutoIFSettings,
                     runner: Runner | None = None) -> pl.DataFrame:
    """Add ``pass_rate`` (share of the constraint's kept functions returning True) and ``response_verified``;
    a response passes when ``pass_rate >= response_min_pass``. One sandbox process per (function, constraint)."""
    runner = runner or (lambda func, inputs: run_function(func, inputs, settings.case_timeout_s, settings.memory_mb))
    kept = functions.filter(pl.col("status") == KEPT)
    jobs = []
    for (cid,), part in table.group_by(["constraint_id"], maintain_order=True):
        for func in kept.filter(pl.col("constraint_id") == cid)["func"].to_list():
            jobs.append((part["id"].to_list(), func, part["output"].to_list()))
    with ThreadPoolExecutor(max_workers=settings.workers) as pool:
        outcomes = list(pool.map(lambda job: runner(job[1], job[2]), jobs))
    votes: dict[str, list[bool]] = {}
    for (ids, _, _), run in zip(jobs, outcomes):
        for item_id, result in zip(ids, run.results):
            votes.setdefault(item_id, []).append(result is True)
    rates = [sum(votes[i]) / len(votes[i]) if votes.get(i) else None for i in table["id"].to_list()]
    return table.with_columns(pass_rate=pl.Series(rates, dtype=pl.Float64)).with_columns(
        response_verified=pl.col("pass_rate") >= settings.response_min_pass)



# the scenario switch lives in evolforge.steps.scenario (pick_scenario imports it without the LLM layer)
from evolforge.steps.scenario import SCENARIOS, read_scenario  # noqa: E402,F401  (part of this module's API)
