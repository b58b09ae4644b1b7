"""The verify step: every answer that could be selected is checked, by the cheapest method that fits it.

Per item, in this order (:func:`choose_method`):

- ``none``: verification is off (``verify.enabled``), or the item fails one of select's guards (an incomplete
  answer, never selected) under ``only_selectable``: recorded unverified, at no cost;
- ``answer_check``: the seed carries a check (a number, Python tests) that the respond step already ran: its result
  (an AutoIF item's check is its constraint's: a failed one is the verdict, a passed one says nothing of the
  content, which the methods below check: :mod:`evolforge.steps.verify.constraint`);
- ``code_tests``: a code task answered with a Python function: tests written for the instruction, cross-checked
  with independent solutions in the sandbox (:mod:`evolforge.steps.verify.code_tests`);
- ``numeric``: a question asking for a quantity, answered with a number: self-consistency and program of thought
  (:mod:`evolforge.steps.verify.numeric`);
- ``judge``: everything else, the judge role's correctness verdict (:mod:`evolforge.steps.verify.correctness`).

Columns written (:data:`evolforge.io.columns.VERIFIED`): ``verify_method``, ``verify_verdict`` (right | wrong |
unsure), ``verify_evidence`` (JSON: tests and which passed, the values compared, the judge's P(right) and reason)
and ``verify_confidence`` (the estimated probability that the answer is right; null where none was measured). An
AutoIF item whose constraint passed takes its content check's verdict, and its evidence holds both.
A method's batch that fails on what a batch can really fail on (:data:`BATCH_FAULTS`: the sandbox's OS errors, text
that does not parse) leaves its items ``unsure`` with the error as their evidence, the other methods' items go on, and
each such item counts as a failure of the role that answered it toward ``llm.max_failure_rate``. A refusal (a
setting the backend cannot honour), a spent ``llm.budget``, a request error (a bad key, URL or model) and a bug
stop the stage, as in every other stage.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

from evolforge.config.bounds import ParamsError, Refusal
from evolforge.config.data import DataSettings
from evolforge.core.prompts import PromptLibrary
from evolforge.core.stage import Outputs
from evolforge.eval.sandbox import isolation, require_sandbox
from evolforge.io import validation
from evolforge.io.columns import VERIFIED
from evolforge.io.records import SETTINGS, TABLE, VERSIONS, output_versions
from evolforge.io.stream import (check_chunks, iter_chunks, read_spilled, spilled, table_file, table_schema,
                                 write_output_chunks)
from evolforge.llm.cached import LLM
from evolforge.llm.types import ControlsError
from evolforge.steps.common.guards import guard_reason
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.common.responses import RESPONSE_TEMPLATE, response_sampling
from evolforge.steps.respond.settings import RespondSettings
from evolforge.steps.verify.code_tests import SOLUTION_TEMPLATE, TESTS_TEMPLATE, is_code_task
from evolforge.steps.verify.correctness import CORRECTNESS_TEMPLATE, REASON_TEMPLATE
from evolforge.steps.verify.constraint import content_item, form_passed, kind_question, with_constraint
from evolforge.steps.verify.methods import (Item, Result, Runner, code_requests, number_requests, verify_code,
                                           verify_judged, verify_numbers)
from evolforge.steps.verify.numeric import PROGRAM_TEMPLATE, is_numeric_task
from evolforge.steps.verify.settings import VerifySettings

METHODS = ("none", "answer_check", "code_tests", "numeric", "judge")
# What a method's batch can really fail on: the sandbox's OS errors (no process, no temporary folder) and
# model-written text that does not parse. A Refusal or ControlsError is a ValueError too, but a setting to fix.
BATCH_FAULTS = (OSError, ValueError, SyntaxError, RecursionError)
REFUSALS = (Refusal, ControlsError)
VERIFY_ERROR = "verify_error"  # the failure reason an item left unsure by its batch's error counts under
VERDICTS = ("right", "wrong", "unsure")
TEMPLATES = (TESTS_TEMPLATE, SOLUTION_TEMPLATE, PROGRAM_TEMPLATE, CORRECTNESS_TEMPLATE, REASON_TEMPLATE,
             RESPONSE_TEMPLATE)


def choose_method(row: dict[str, Any], guard: str | None, settings: VerifySettings) -> str:
    """The method for one item (module docstring), from its instruction, input, answer, guard and check."""
    if not settings.enabled or (settings.only_selectable and guard is not None):
        return "none"
    if row.get("answer_check_passed") is not None and not form_passed(row):
        return "answer_check"
    task = kind_question(row)
    if is_code_task(task, row.get("output")):
        return "code_tests"
    return "numeric" if is_numeric_task(task, row.get("output")) else "judge"


def _free(method: str, row: dict[str, Any], guard: str | None) -> Result:
    """The results that cost no call: unverified items, and seeds whose answer check already ran."""
    if method == "none":
        return Result("none", "unsure", json.dumps({"not_verified": guard or "verify.enabled is false"}), None)
    passed = bool(row["answer_check_passed"])
    return Result("answer_check", "right" if passed else "wrong",
                  json.dumps({"check": row.get("answer_check"), "detail": row.get("answer_check_detail")}),
                  1.0 if passed else 0.0)


def _guarded(method: str, run: Any, items: list[Item], llm: LLM) -> list[Result]:
    """``run(items)``, or every item ``unsure`` with the error when the batch failed on one of
    :data:`BATCH_FAULTS`; those items count as failures of ``llm`` (the role that answered them) toward
    ``llm.max_failure_rate``. Anything else propagates: a refusal, a spent budget, a request error, a bug."""
    if not items:
        return []
    try:
        return run(items)
    except REFUSALS:
        raise
    except BATCH_FAULTS as err:  # one bad batch is recorded on its items; the other methods' items go on
        why = f"{type(err).__name__}: {str(err)[:300]}"
        llm.account.record_item_failures(VERIFY_ERROR, len(items), f"verify {method}: {why}")
        return [Result(method, "unsure", json.dumps({"error": why}), None) for _ in items]


def _first_round(code: list[Item], numbers: list[Item], responder: LLM, prompts: PromptLibrary,
                 settings: VerifySettings, sampling: dict[str, Any]) -> dict[str, Any]:
    """The code items' tests and solutions and the number items' first samples and programs, asked in one call:
    the backend keeps its sequences busy across both (each alone ends with some of them idle, and the second waited
    for the first's last answer). Per method: its answers, in its requests' order, or the error the call raised, for
    :func:`_guarded` to raise again on that method's items."""
    code_asked = code_requests(code, responder, prompts, settings)
    requests = code_asked + number_requests(numbers, responder, prompts, settings, sampling)
    try:
        answers = responder.complete(requests, desc="verify code and numbers") if requests else []
    except REFUSALS:
        raise
    except BATCH_FAULTS as err:
        return {"code_tests": err, "numeric": err}
    return {"code_tests": answers[:len(code_asked)], "numeric": answers[len(code_asked):]}


def _given(texts: Any) -> Any:
    """A method's answers from :func:`_first_round`, or the error its call raised, raised here."""
    if isinstance(texts, BaseException):
        raise texts
    return texts


def verify(table: pl.DataFrame, responder: LLM, judge: LLM, prompts: PromptLibrary, settings: VerifySettings,
           sampling: dict[str, Any], runner: Runner | None = None) -> pl.DataFrame:
    """The verification columns (:data:`evolforge.io.columns.VERIFIED`) of every row of ``table``, in order."""
    rows = table.to_dicts()
    guards = guard_reason(table).to_list() if table.height else []
    methods = [choose_method(r, g, settings) for r, g in zip(rows, guards)]
    results: list[Result | None] = [None] * len(rows)
    for k, (method, row, guard) in enumerate(zip(methods, rows, guards)):
        if method in ("none", "answer_check"):
            results[k] = _free(method, row, guard)
    picked = {method: [k for k, m in enumerate(methods) if m == method]
              for method in ("code_tests", "numeric", "judge")}
    items = {method: [content_item(rows[k], method) for k in ks] for method, ks in picked.items()}
    texts = _first_round(items["code_tests"], items["numeric"], responder, prompts, settings, sampling)
    batches = {"code_tests": lambda xs: verify_code(xs, responder, prompts, settings, runner,
                                                    _given(texts["code_tests"])),
               "numeric": lambda xs: verify_numbers(xs, responder, prompts, settings, sampling,
                                                    _given(texts["numeric"])),
               "judge": lambda xs: verify_judged(xs, judge, prompts, settings)}
    for method, run in batches.items():
        for k, result in zip(picked[method], _guarded(method, run, items[method],
                                                      judge if method == "judge" else responder)):
            results[k] = with_constraint(result, rows[k]) if form_passed(rows[k]) else result
    return pl.DataFrame({"id": table["id"], "round": table["round"].cast(pl.Int32),
                         "verify_method": [r.method for r in results], "verify_verdict": [r.verdict for r in results],
                         "verify_evidence": [r.evidence for r in results],
                         "verify_confidence": [r.confidence for r in results]}, schema=VERIFIED)


def counts(written: Path) -> dict[str, Any]:
    """Items per method and verdict, and per verdict, from the written table's two small columns; and the AutoIF
    items whose constraint passed per verdict of their content check (their evidence names the constraint)."""
    table = pl.read_parquet(written, columns=["verify_method", "verify_verdict"])
    pairs = Counter(zip(table["verify_method"].to_list(), table["verify_verdict"].to_list()))
    per_method = {m: {v: pairs.get((m, v), 0) for v in VERDICTS} for m in METHODS}
    constrained = (pl.scan_parquet(written)
                   .filter(pl.col("verify_evidence").str.json_path_match("$.constraint.passed") == "true")
                   .group_by("verify_verdict").len().collect())
    by_content = dict(constrained.iter_rows())
    return {"items": table.height, "per_method": per_method,
            "per_verdict": {v: sum(per_method[m][v] for m in METHODS) for v in VERDICTS},
            "verified": table.height - sum(per_method["none"].values()),
            "constraint_passed_by_content": {v: by_content.get(v, 0) for v in VERDICTS}}


def run(items: str | Path, out: str | Path, cfg: VerifySettings, respond: RespondSettings, data: DataSettings,
        llms: RoleLLMs, prompts: PromptLibrary) -> Outputs:
    """The verify stage over the table ``items``, ``data.chunk_rows`` at a time (each item's checks are its own),
    with ``llms["responder"]`` and ``llms["judge"]``, sampling as ``respond`` asks; the columns spilled beside
    ``out`` and streamed into it, as the judge stage writes."""
    if cfg.enabled:  # code answers and programs of thought run in the sandbox
        require_sandbox("verify (code answers against their tests, programs of thought)")
    sampling = response_sampling(respond)
    source, rows = table_file(items), data.chunk_rows
    check_chunks(source, validation.item_columns(["id", "round", "instruction", "input", "output"])
                 + validation.unique("id"), rows)
    responder, judge = llms["responder"], llms["judge"]
    if cfg.enabled and cfg.probabilities:  # refused before any call, naming the setting that asks for it
        refused = judge.role.ranking_problems("verify.probabilities", judge.control_backend)
        if refused:
            raise ParamsError(refused)

    def verified(chunk: pl.DataFrame) -> pl.DataFrame:
        return verify(chunk, responder, judge, prompts, cfg, sampling)

    meta = {VERSIONS: output_versions(), "model": responder.label, "model_identity": responder.identity,
            "judge_model": judge.label, "template_hashes": {t: prompts.hash(t) for t in TEMPLATES},
            SETTINGS: dataclasses.asdict(cfg)}
    out = Path(out)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-work-", dir=out.absolute().parent) as work:
        files = spilled(map(verified, iter_chunks(source, rows)), work)
        empty = verified(pl.DataFrame(schema=table_schema(source)))
        write_output_chunks(out, {TABLE: (empty.schema, read_spilled(files))}, meta=meta)
    metrics = counts(table_file(out)) | {
        "sandbox": isolation() if cfg.enabled else None,
        "calls": responder.stats["calls"] + judge.stats["calls"],
        "cache_hits": responder.stats["cache_hits"] + judge.stats["cache_hits"],
        "llm": {"responder": responder.stats, "judge": judge.stats}}
    return Outputs(metrics, f"verify: {metrics['verified']} of {metrics['items']} items verified; verdicts "
                            f"{metrics['per_verdict']}", peak_rss=True)
