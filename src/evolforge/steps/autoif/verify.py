"""AutoIF steps 2 and 3 (the ``autoif_verify`` stage): each constraint's sampled answers parsed into a
verification function and test cases (:mod:`evolforge.steps.autoif.forms`: the paper's JSON form or the lines
form), every function run on every case in the sandbox and cross-validated
(:func:`evolforge.steps.common.cross_validation.cross_validate`, :func:`verify_constraints`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import polars as pl

from evolforge.io import validation
from evolforge.core.prompts import PromptLibrary
from evolforge.io.records import FAILED, SETTINGS, make_id, read_table
from evolforge.steps.autoif.settings import AutoIFSettings
from evolforge.steps.common.llms import RoleLLMs
from evolforge.core.stage import Outputs
from evolforge.eval.sandbox import isolation, require_sandbox
from evolforge.llm.cached import LLM
from evolforge.steps.autoif.shared import COPIED, KEPT, VERIFICATION_TEMPLATE, first_by_hash, usable_constraints
from evolforge.steps.autoif.forms import (EXAMPLES_FILE, LINES_TEMPLATES, Copies, Demonstration,
                                          Verification, join_answers,
                                          load_demonstrations, parse_verification, parser_for,
                                          verification_conversations)
from evolforge.steps.common.cross_validation import CrossValidation, cross_validate
from evolforge.steps.common.function_runs import FunctionRun, Runner, run_all, run_function


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


_FUNCTION_SCHEMA = {"constraint_id": pl.String, "sample_index": pl.Int64, "function_id": pl.String, "func": pl.String,
                    "raw": pl.String, "run_status": pl.String, "run_detail": pl.String, "case_errors": pl.String,
                    "accuracy": pl.Float64, "status": pl.String, "failure_reason": pl.String}
_CASE_SCHEMA = {"constraint_id": pl.String, "case_id": pl.String, "input": pl.String, "expected": pl.Boolean,
                "status": pl.String, "failure_reason": pl.String}
_COUNT_SCHEMA = {"samples": pl.Int64, "functions": pl.Int64, "functions_runnable": pl.Int64,
                 "functions_kept": pl.Int64, "cases": pl.Int64, "cases_kept": pl.Int64}  # appended to the constraints'


@dataclass
class _Plan:
    """One constraint's samples, parsed: the functions to run, the samples dropped before running, the cases."""
    functions: list[tuple[int, str, str]]  # (sample index, func, raw answer), distinct and not copied
    failures: list[tuple[int, str | None, str]]  # (sample index, raw answer or None, failure reason)
    cases: list[tuple[str, bool]]  # distinct (input, expected), in the order first seen
    copied_cases: list[tuple[str, bool]]  # cases recognised as a demonstration's, never run


@dataclass
class _Verdict:
    """One constraint's cross-validation: which of its functions ran and which were kept."""
    runs: dict[int, FunctionRun]  # function position -> its run (absent: no case to run on)
    usable: list[int]  # positions of the functions whose run is ``ok``
    cv: CrossValidation
    accuracy: dict[int, float | None]  # function position -> accuracy, for the usable ones
    kept: set[int]  # positions of the kept functions


def verify_constraints(constraints: pl.DataFrame, raw_samples: Sequence[Sequence[str | None]], settings: AutoIFSettings,
                       runner: Runner | None = None, parse: Parser | None = None,
                       copies: CopyCheck | None = None) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Parse each constraint's samples (``parse``: the paper's JSON form by default), run every function on
    every case, cross-validate. A function or case that ``copies`` recognises as a demonstration's is dropped
    (``copied_demonstration``) before anything runs; a sample the LLM failed to return (None) is ``no_output``.

    Returns (constraints with status / failure_reason and counts, functions table, cases table)."""
    runner = runner or (lambda func, inputs: run_function(func, inputs, settings.case_timeout_s, settings.memory_mb))
    parse, copies = parse or parse_verification, copies or _NoCopies()
    plans = [_plan(samples, parse, copies) for samples in raw_samples]
    runs = _run_functions(plans, runner, settings.workers)
    c_rows, f_rows, k_rows = [], [], []
    for pos, (row, plan) in enumerate(zip(constraints.iter_rows(named=True), plans)):
        cid = row["id"]
        verdict = _cross_validate_plan(plan, runs.get(pos, {}), settings.min_accuracy)
        f_rows += _function_rows(cid, plan, verdict)
        k_rows += _case_rows(cid, plan, verdict.cv)
        reason = _constraint_failure(plan, verdict, settings)
        c_rows.append({**row, "status": KEPT if reason is None else FAILED, "failure_reason": reason,
                       "samples": len(plan.functions) + len(plan.failures), "functions": len(plan.functions),
                       "functions_runnable": len(verdict.usable), "functions_kept": len(verdict.kept),
                       "cases": len(plan.cases), "cases_kept": sum(verdict.cv.cases_kept)})
    return (pl.DataFrame(c_rows, schema={**constraints.schema, **_COUNT_SCHEMA}),
            pl.DataFrame(f_rows, schema=_FUNCTION_SCHEMA), pl.DataFrame(k_rows, schema=_CASE_SCHEMA))


def _plan(samples: Sequence[str | None], parse: Parser, copies: CopyCheck) -> _Plan:
    """Parse one constraint's samples; a sample whose function is unparsable, copied or already seen is a
    failure, though its cases still count (cases are pooled across samples, deduplicated)."""
    funcs, failures, cases, seen_funcs, copied_cases = [], [], {}, set(), {}
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
            seen_funcs.add(parsed.func)
            funcs.append((k, parsed.func, raw))
        for case in parsed.cases:
            (copied_cases if copies.case(case[0]) else cases).setdefault(case, None)  # a dict: ordered set
    return _Plan(funcs, failures, list(cases), list(copied_cases))


def _run_functions(plans: Sequence[_Plan], runner: Runner, workers: int) -> dict[int, dict[int, FunctionRun]]:
    """Every function of every plan run on its constraint's case inputs (none for a plan without cases).
    Returns constraint position -> function position -> run."""
    jobs = [(pos, f, func, [c[0] for c in plan.cases])
            for pos, plan in enumerate(plans) if plan.cases for f, (_, func, _) in enumerate(plan.functions)]
    outcomes = run_all(runner, [(func, inputs) for _, _, func, inputs in jobs], workers)
    runs: dict[int, dict[int, FunctionRun]] = {}
    for (pos, f, _, _), run in zip(jobs, outcomes):
        runs.setdefault(pos, {})[f] = run
    return runs


def _cross_validate_plan(plan: _Plan, runs: dict[int, FunctionRun], min_accuracy: float) -> _Verdict:
    """Cross-validate the functions that ran ``ok`` against the plan's cases."""
    usable = [f for f in range(len(plan.functions)) if runs.get(f) is not None and runs[f].status == "ok"]
    cv = cross_validate([runs[f].results for f in usable], [c[1] for c in plan.cases], min_accuracy)
    kept = {f for f, k in zip(usable, cv.functions_kept) if k}
    return _Verdict(runs, usable, cv, dict(zip(usable, cv.accuracy)), kept)


def _function_rows(cid: str, plan: _Plan, verdict: _Verdict) -> list[dict[str, Any]]:
    """The functions table's rows of one constraint: the samples dropped before running, then each function
    with its run and why it was dropped (None when kept)."""
    rows: list[dict[str, Any]] = [
        {"constraint_id": cid, "sample_index": k, "function_id": make_id(cid, "sample", k), "func": None,
         "raw": raw, "run_status": None, "accuracy": None, "status": FAILED, "failure_reason": reason}
        for k, raw, reason in plan.failures]
    for f, (k, func, raw) in enumerate(plan.functions):
        run = verdict.runs.get(f)
        reason = None
        if run is None:
            reason = "no_cases"
        elif run.status != "ok":
            reason = f"run_{run.status}"
        elif f not in verdict.kept:
            reason = "no_kept_cases" if verdict.accuracy[f] is None else "low_accuracy"
        rows.append({"constraint_id": cid, "sample_index": k, "function_id": make_id(cid, func),
                     "func": func, "raw": raw,
                     "run_status": run.status if run else None, "run_detail": run.detail if run else None,
                     "case_errors": _error_counts(run), "accuracy": verdict.accuracy.get(f),
                     "status": KEPT if f in verdict.kept else FAILED, "failure_reason": reason})
    return rows


def _case_rows(cid: str, plan: _Plan, cv: CrossValidation) -> list[dict[str, Any]]:
    """The cases table's rows of one constraint: the cross-validated cases, then the copied ones."""
    rows = [{"constraint_id": cid, "case_id": make_id(cid, inp, exp), "input": inp, "expected": exp,
             "status": KEPT if kept else FAILED, "failure_reason": None if kept else "no_function_agrees"}
            for (inp, exp), kept in zip(plan.cases, cv.cases_kept)]
    rows += [{"constraint_id": cid, "case_id": make_id(cid, inp, exp), "input": inp, "expected": exp,
              "status": FAILED, "failure_reason": COPIED} for inp, exp in plan.copied_cases]
    return rows


def _constraint_failure(plan: _Plan, verdict: _Verdict, settings: AutoIFSettings) -> str | None:
    """Why a constraint is dropped (the first rule it breaks, in the order checked), or None when verified."""
    n_cases_kept = sum(verdict.cv.cases_kept)
    if not plan.functions:
        return "no_parsable_sample"
    if not plan.cases:
        return "no_cases"
    if not verdict.usable:
        return "no_runnable_function"
    if n_cases_kept == 0:
        return "no_case_reproduced"
    outcomes_kept = {exp for (_, exp), k in zip(plan.cases, verdict.cv.cases_kept) if k}
    if settings.both_outcomes and len(outcomes_kept) < 2:  # a constant function would pass one-sided cases
        return "one_sided_cases"
    if not verdict.kept:
        return "no_accurate_function"
    if len(verdict.kept) < settings.min_functions:
        return "too_few_functions"
    if n_cases_kept < settings.min_cases:
        return "too_few_cases"
    return None


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


def sample_verifications(llm: LLM, constraints: pl.DataFrame, settings: AutoIFSettings, prompts: PromptLibrary,
                         demos: Sequence[Demonstration]) -> list[list[str | None]]:
    """Per constraint, ``functions_per_constraint`` sampled answers: one conversation per sample (form paper)
    or two (form lines: the function, then the cases), whose answers are joined into the sample's text."""
    k = settings.functions_per_constraint
    conversations = [verification_conversations(settings.form, c, prompts, demos, sample_index=i)
                     for c in constraints["constraint"].to_list() for i in range(k)]
    n = len(conversations[0])
    requests = [llm.request(turns, temperature=settings.temperature, top_p=settings.top_p,
                            max_tokens=settings.max_tokens,
                            seed=settings.seed, sample_index=i % k)
                for i, sample in enumerate(conversations) for turns in sample]
    answers = llm.complete(requests, desc="autoif verification functions")
    texts = [join_answers(answers[j:j + n]) for j in range(0, len(answers), n)]
    return [texts[i:i + k] for i in range(0, len(texts), k)]


def run(constraints_dir: str | Path, cfg: AutoIFSettings, llms: RoleLLMs, prompts: PromptLibrary) -> Outputs:
    """The autoif_verify stage: verification functions and test cases sampled from ``llms["evolver"]`` for (at
    most ``max_constraints`` of) the usable constraints and cross-validated in the sandbox; empty tables marked
    skipped unless ``scenario: autoif``."""
    table = read_table(constraints_dir)
    validation.check(table,
                     validation.item_columns(["id", "status", "constraint"]) + validation.unique("id"), constraints_dir)
    active = cfg.scenario == "autoif"
    if active:
        require_sandbox("autoif_verify (the verification functions)")
    constraints = first_by_hash(usable_constraints(table), cfg.max_constraints, cfg.seed) if active else table.clear()
    demos = load_demonstrations(prompts) if active and cfg.form == "lines" else []
    samples: list[list[str | None]] = []
    meta: dict[str, Any] = {"skipped": not active}
    stats: dict = {}  # the LLM's tokens, failures and cost, per role (none when nothing was asked)
    if active and constraints.height:
        llm = llms["evolver"]
        samples = sample_verifications(llm, constraints, cfg, prompts, demos)
        meta |= {"model": llm.label, "model_identity": llm.identity, "calls": llm.stats["calls"],
                 "cache_hits": llm.stats["cache_hits"]}
        stats = {"evolver": llm.stats}
    verified, functions, cases = verify_constraints(constraints, samples, cfg, parse=parser_for(cfg.form),
                                                    copies=Copies.of(demos))
    metrics = verify_summary(verified, functions, cases) | {"skipped": not active,
                                                            "sandbox": isolation() if active else None,
                                                           "calls": meta.get("calls", 0),
                                                            "cache_hits": meta.get("cache_hits", 0),
                                                           "llm": stats}
    templates = [*LINES_TEMPLATES, EXAMPLES_FILE] if cfg.form == "lines" else [VERIFICATION_TEMPLATE]
    meta |= {SETTINGS: dataclasses.asdict(cfg), "form": cfg.form, "template_hash": prompts.hash(templates[0]),
             "template_hashes": {t: prompts.hash(t) for t in templates}}
    return Outputs(metrics,
                   f"autoif_verify: {metrics['constraints_verified']}/{metrics['constraints']} constraints verified, "
                            f"{metrics['functions_kept']}/{metrics['samples']} functions kept; dropped "
                            f"{metrics['constraints_dropped']}",
                   table=verified, meta=meta, tables={"functions.parquet": functions, "cases.parquet": cases})
