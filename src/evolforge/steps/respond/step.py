"""Responses: answer instructions with the response template (the SLM paper's, one user turn).

``gather`` collects the surviving (``evolved``) items of the chosen rounds, plus the seeds if asked,
keeping every lineage column and the evolver's columns (``evolve_template_hash``, ``evolver_model``,
``instruction_finish_reason``); ``answer`` fills ``output`` and marks each response with ``response_status``:
``complete``, ``truncated`` (cut at ``max_tokens``), ``repetitive`` (loops) or ``empty``
(:func:`evolforge.steps.common.response_status`). Only complete responses are training material.
The answer is the one the round's response check got (``check_response``) when the respond stage's request
for the item has that answer's key (``check_request_key``: same responder, template, sampling and text),
else the responder's, through the call cache. The output's columns are :data:`evolforge.io.columns.RESPONSES`.
A call that failed (prompt too long, rejected, retries exhausted) keeps its row with a null ``output``
and the reason in ``response_failure_reason`` / ``response_failure_detail``: never an invented text.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterator, Mapping

import polars as pl

from evolforge.io import validation
from evolforge.io.columns import RESPONSES
from evolforge.steps.evolve.settings import EvolveRound
from evolforge.steps.respond.settings import RespondSettings
from evolforge.core.prompts import PromptLibrary
from evolforge.io.records import EVOLVED, LINEAGE, SETTINGS, TABLE, VERSIONS, output_versions
from evolforge.config.data import DataSettings
from evolforge.core.stage import Outputs
from evolforge.io.stream import (check_chunks, check_unique, checked_chunks, iter_chunks,
                                 read_spilled, spilled, table_file,
                                 table_schema, write_output_chunks)
from evolforge.llm.cached import LLM
from evolforge.llm.types import Completion
from evolforge.steps.common.repetition import (FAILED_RESPONSE, RESPONSE_STATUSES, RepetitionTest, repetition_test,
                                               response_status)
from evolforge.eval.sandbox import require_sandbox
from evolforge.steps.common.answer_check import check_answer
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.common.responses import RESPONSE_TEMPLATE, response_requests, response_sampling

# a round's answers, read by answer()
CHECK = ["check_response", "check_finish_reason", "check_request_key", "check_thinking"]
KEEP = (LINEAGE + ["instruction", "input", "evolve_template_hash", "evolver_model", "instruction_finish_reason",
                   "answer_check"] + CHECK)


@dataclasses.dataclass(frozen=True)
class Gathered:
    """The items to answer, as they stream from their tables: the seeds' (all of them) and each round's
    (its ``evolved`` items), in that order, the columns of ``KEEP`` typed as one ``vertical_relaxed`` concat
    of the tables would type them."""

    parts: list[tuple[Path, bool]]  # (table file, a round: keep only its evolved items)
    schema: pl.Schema
    chunk_rows: int

    def chunks(self) -> Iterator[pl.DataFrame]:
        """The items ``chunk_rows`` rows of a table at a time (fewer after a round's filter)."""
        for file, is_round in self.parts:
            for chunk in iter_chunks(file, self.chunk_rows):
                yield _kept(chunk, is_round).cast(dict(self.schema))
                del chunk  # not held while the next one is read (io/stream.py)

    def runs_code(self) -> bool:
        """Does an item carry a check that runs its answer's code (``python_tests``)? Reads one column."""
        scans = [pl.scan_parquet(file).select("answer_check") for file, is_round in self.parts
                 if not is_round and "answer_check" in table_schema(file)]
        return bool(scans) and pl.concat(scans).filter(
            pl.col("answer_check").str.contains('"python_tests"', literal=True)).head(1).collect().height > 0

    def ids(self) -> pl.LazyFrame:
        """The items' ids in order (a streaming query: no texts read)."""
        scans = [pl.scan_parquet(file).filter(pl.col("status") == EVOLVED) if is_round else pl.scan_parquet(file)
                 for file, is_round in self.parts]
        return pl.concat([scan.select("id") for scan in scans])


def _kept(table: pl.DataFrame, is_round: bool) -> pl.DataFrame:
    """The ``KEEP`` columns of a table's items to answer (a round's evolved ones), null where it has none
    (the seeds have no evolver columns and no check answers; the rounds have no answer checks: a rewrite changes
    the question, steps/common/answer_check.py)."""
    table = table.with_columns([pl.lit(None, pl.String).alias(c) for c in KEEP if c not in table.columns])
    return (table.filter(pl.col("status") == EVOLVED) if is_round else table).select(KEEP)


def gather(round_dirs: list[str | Path], seed_dir: str | Path | None = None,
           chunk_rows: int = DataSettings.chunk_rows) -> Gathered:
    """Evolved items of the given round folders (and all seeds when ``seed_dir`` is given), lineage kept; every
    table checked first, ``chunk_rows`` rows at a time."""
    parts = ([(table_file(seed_dir), False)]
             if seed_dir is not None else []) + [(table_file(d), True) for d in round_dirs]
    if not parts:
        raise ValueError("respond: no rounds selected (params.yaml respond.rounds) and include_seed is false")
    for file, _ in parts:
        check_chunks(file, validation.item_columns(LINEAGE + ["instruction", "input"]), chunk_rows)
    empty = [_kept(pl.DataFrame(schema=table_schema(file)), is_round) for file, is_round in parts]
    return Gathered(parts, pl.concat(empty, how="vertical_relaxed").schema, chunk_rows)


def completions(items: pl.DataFrame, llm: LLM, prompts: PromptLibrary, **sampling) -> tuple[list[Completion], int]:
    """(one completion per item, how many were a round's check answers): an item's check answer when the
    request for it has the answer's key, the responder's otherwise."""
    requests = response_requests(llm, prompts, items["instruction"].to_list(), items["input"].to_list(), **sampling)
    stored = zip(items["check_request_key"].to_list(), items["check_response"].to_list(),
                 items["check_finish_reason"].to_list(), items["check_thinking"].to_list())
    out: list[Completion | None] = [Completion(text, finish, thinking=thinking)
                                    if key is not None and text is not None and key == llm.key(request)
                                    else None for request, (key, text, finish, thinking) in zip(requests, stored)]
    todo = [i for i, c in enumerate(out) if c is None]
    for i, c in zip(todo, llm.generate([requests[i] for i in todo], desc="respond") if todo else []):
        out[i] = c
    return [c for c in out if c is not None], len(out) - len(todo)


def answer(items: pl.DataFrame, llm: LLM, prompts: PromptLibrary,
           repetition: RepetitionTest = RepetitionTest(), tally: Counter | None = None,
           **sampling) -> pl.DataFrame:
    """``items`` (``KEEP``) answered (:func:`completions`; ``tally["reused"]`` counts the check answers taken),
    as :data:`evolforge.io.columns.RESPONSES`: ``output``, ``response_finish_reason`` and ``response_status``
    filled in; a failed call leaves ``output`` null with its reason (``response_status`` failed)."""
    answers, reused = completions(items, llm, prompts, **sampling)
    if tally is not None:
        tally["reused"] += reused
    if "answer_check" not in items.columns:  # a table from before answer checks: none
        items = items.with_columns(answer_check=pl.lit(None, pl.String))
    checked = [check_answer(check, None if c.failed else c.text)
               for check, c in zip(items["answer_check"].to_list(), answers)]
    return items.with_columns(
        answer_check_passed=pl.Series([None if r is None else r.passed for r in checked], dtype=pl.Boolean),
        answer_check_detail=pl.Series([None if r is None else r.detail for r in checked], dtype=pl.String),
    ).with_columns(
        output=pl.Series([None if c.failed else c.text for c in answers], dtype=pl.String),
        response_finish_reason=pl.Series([c.finish_reason for c in answers], dtype=pl.String),
        response_status=pl.Series([FAILED_RESPONSE if c.failed
                                   else response_status(c.text, c.finish_reason, repetition)
                                   for c in answers], dtype=pl.String),
        response_failure_reason=pl.Series([c.failure_reason for c in answers], dtype=pl.String),
        response_failure_detail=pl.Series([c.error for c in answers], dtype=pl.String),
        response_template_hash=pl.lit(prompts.hash(RESPONSE_TEMPLATE)),
        response_thinking=pl.Series([c.thinking for c in answers], dtype=pl.String),
    ).select(list(RESPONSES))


def check_counts(table: pl.DataFrame) -> dict[str, int]:
    """Items with an answer check, how many passed and failed, per check kind (``answer_check`` JSON's kind)."""
    with_check = table.filter(pl.col("answer_check").is_not_null())
    kinds = with_check["answer_check"].str.json_path_match("$.kind").to_list()
    out = {"items": with_check.height, "passed": int(with_check["answer_check_passed"].sum() or 0),
           "failed": int((~with_check["answer_check_passed"]).sum() or 0), "by_kind": {}}
    for kind, passed in zip(kinds, with_check["answer_check_passed"].to_list()):
        entry = out["by_kind"].setdefault(kind, {"items": 0, "passed": 0})
        entry["items"] += 1
        entry["passed"] += bool(passed)
    return out


def add_check_counts(total: dict, part: dict) -> dict:
    """Two :func:`check_counts` added."""
    out = {k: total.get(k, 0) + part[k] for k in ("items", "passed", "failed")}
    out["by_kind"] = {k: dict(v) for k, v in total.get("by_kind", {}).items()}
    for kind, entry in part["by_kind"].items():
        into = out["by_kind"].setdefault(kind, {"items": 0, "passed": 0})
        into["items"] += entry["items"]
        into["passed"] += entry["passed"]
    return out


def status_counts(table: pl.DataFrame) -> dict[str, int]:
    """Responses per ``response_status``, every status listed (0 when absent)."""
    counts = dict.fromkeys(RESPONSE_STATUSES, 0)
    counts.update(table["response_status"].value_counts().iter_rows())
    return counts


def run(evolved: str | Path, seed: str | Path, out: str | Path, cfg: RespondSettings,
        evolve_rounds: Mapping[str, EvolveRound], data: DataSettings, llms: RoleLLMs,
        prompts: PromptLibrary) -> Outputs:
    """The respond stage: the evolved items of ``respond.rounds`` (round folders under ``evolved``, named by
    ``evolve_rounds``; the seeds of ``seed`` with ``include_seed``), answered by ``llms["responder"]``
    ``data.chunk_rows`` rows at a time and streamed into ``out`` (docs/how-to/scale.md)."""
    # the models stage checked that its rounds are evolve.rounds indices
    rounds = {r["index"]: name for name, r in evolve_rounds.items()}
    items = gather([f"{evolved}/{rounds[k]}" for k in cfg.rounds], seed if cfg.include_seed else None,
                   data.chunk_rows)
    check_unique(items.ids(), "id", out)  # the output's rule, before any call
    if items.runs_code():
        require_sandbox("respond (the seeds' python_tests answer checks)")
    llm = llms["responder"]
    repetition = repetition_test(cfg.repetition)
    statuses, per_round, failed, tally = dict.fromkeys(RESPONSE_STATUSES, 0), Counter(), 0, Counter()
    checks: dict = {"items": 0, "passed": 0, "failed": 0, "by_kind": {}}

    def answered() -> Iterator[pl.DataFrame]:
        nonlocal failed, checks
        for chunk in items.chunks():
            table = answer(chunk, llm, prompts, repetition=repetition, tally=tally, **response_sampling(cfg))
            checks = add_check_counts(checks, check_counts(table))
            for status, n in status_counts(table).items():
                statuses[status] += n
            per_round.update(table["round"].to_list())
            failed += int(table["response_failure_reason"].is_not_null().sum())
            yield table
            del chunk, table  # not held while the next chunk is read and answered

    schema = answer(pl.DataFrame(schema=items.schema), llm, prompts).schema  # no rows: no call
    rules = validation.item_columns(LINEAGE + ["instruction", "input", "output", "response_status"])
    # as write_output records it
    meta = {VERSIONS: output_versions(), "model": llm.label, "model_identity": llm.identity,
            "template_hash": prompts.hash(RESPONSE_TEMPLATE), SETTINGS: dataclasses.asdict(cfg)}
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-work-", dir=out.parent) as work:  # the calls on this thread
        parts = spilled(checked_chunks(answered(), rules, out), work)
        write_output_chunks(out, {TABLE: (schema, read_spilled(parts))}, meta=meta)
    total = sum(per_round.values())
    metrics = {"items": total, "response_status": statuses, "empty_responses": statuses["empty"],
               "calls": llm.stats["calls"], "cache_hits": llm.stats["cache_hits"],
               "check_answers_reused": tally["reused"],
               "failed_responses": failed, "answer_checks": checks, "llm": {"responder": llm.stats},
               "per_round": {str(k): n for k, n in per_round.items()}}
    return Outputs(metrics,
                   f"respond: {total} responses {statuses}; answer checks {checks['passed']} of {checks['items']} "
                   f"passed; {tally['reused']} check answers of the rounds reused, "
                            f"{llm.stats['calls']} calls, {llm.stats['cache_hits']} cache hits",
                   peak_rss=True)  # docs/how-to/scale.md
