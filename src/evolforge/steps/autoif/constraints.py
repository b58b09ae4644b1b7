"""AutoIF (the SLM paper's third scenario): verifiable constraints, checked by model-written code.

Four steps, each a stage:

1. **self-instruct** -- the seed constraints go into a prompt asking the evolver for new format (not style)
   constraints; the answer's list lines are parsed and deduplicated (:func:`parse_constraint_lines`,
   :func:`collect_constraints`): this module (what the steps share -- templates, statuses,
   :func:`~evolforge.steps.autoif.shared.first_by_hash` -- is :mod:`evolforge.steps.autoif.shared`);
2. **verification functions** -- per constraint, K samples each asking for one JSON object holding a Python
   ``evaluate(response) -> bool`` and test cases with expected results
   (:func:`evolforge.steps.autoif.forms.parse_verification`; the other form: :mod:`evolforge.steps.autoif.forms`);
3. **cross-validation** -- every function runs on every case in the sandbox, one process per function
   (:func:`evolforge.steps.common.function_runs.run_function`); a case is kept if any function reproduces its expected
   result, a function if its accuracy on the kept cases reaches ``min_accuracy``; a constraint with no function
   left is dropped (:func:`evolforge.steps.common.cross_validation.cross_validate`);
4. **pairing** -- each verified constraint is paired with Q queries in the paper's "answer the query strictly
   following the instruction" layout and answered by the responder; optionally only responses that the
   constraint's kept functions accept are kept (:func:`evolforge.steps.autoif.respond.verify_responses`).

Every dropped line, sample, function, case and constraint stays in an output table with its reason.

>>> parse_constraint_lines("Here you go:\\n- Use no commas.\\n2. End with 'Bye'.")
[('Here you go:', 'not_a_list_item'), ('Use no commas.', None), ("End with 'Bye'.", None)]
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Sequence

import polars as pl

from evolforge.io import validation
from evolforge.io.jsonfiles import read_text
from evolforge.steps.autoif.settings import AutoIFSettings
from evolforge.steps.common.llms import RoleLLMs
from evolforge.core.prompts import PromptLibrary
from evolforge.io.records import EVOLVED, FAILED, SEED, SETTINGS, make_id
from evolforge.llm.requests import ChatRequest
from evolforge.core.stage import Outputs
from evolforge.llm.cached import LLM
from evolforge.steps.autoif.shared import SELF_INSTRUCT_TEMPLATE, constraint_key


# --- step 1: constraints -------------------------------------------------------------------------

_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d{1,3}[.)])\s+")


def read_seed_constraints(path: str | Path) -> list[str]:
    """The seed constraints: one per line, blank lines and ``#`` comments skipped."""
    lines = read_text(Path(path)).splitlines()
    seeds = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not seeds:
        raise validation.DataError(path, "at least one seed constraint", detail="one per line; # starts a comment")
    control = [i for i, ln in enumerate(lines, start=1) if re.search(validation.CONTROL_CHARACTERS, ln)]
    if control:  # an ANSI escape or a NUL would go into every prompt built on it
        raise validation.DataError(path, "no control characters (NUL, ANSI escapes...; tab is fine)", control)
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


def run(seeds_file: str | Path, cfg: AutoIFSettings, llms: RoleLLMs, prompts: PromptLibrary) -> Outputs:
    """The autoif_constraints stage: ``self_instruct_calls`` samples of ``llms["evolver"]`` on the self-instruct
    prompt over the seed constraints, parsed into one constraint table; an empty table marked skipped unless
    ``scenario: autoif``."""
    seeds = read_seed_constraints(seeds_file)
    if cfg.scenario != "autoif":
        return Outputs({"skipped": True}, "autoif_constraints: skipped (scenario is not autoif)",
                       table=collect_constraints([], []), meta={"skipped": True, SETTINGS: dataclasses.asdict(cfg)})
    llm = llms["evolver"]
    prompt = prompts.render(SELF_INSTRUCT_TEMPLATE, seeds=seeds, count=cfg.new_per_call)
    requests = sampled_requests(llm, prompt, cfg.self_instruct_calls, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_tokens=cfg.max_tokens, seed=cfg.seed)
    outputs = llm.complete(requests, desc="autoif self-instruct")
    table = collect_constraints(seeds, outputs)
    failed = table.filter(pl.col("status") == FAILED)
    metrics = {"seed_constraints": len(seeds), "calls": llm.stats["calls"], "cache_hits": llm.stats["cache_hits"],
               "llm": {"evolver": llm.stats},  # tokens, failures and cost of the calls
               "lines": table.height - len(seeds), "constraints": table.height - failed.height,
               "new_constraints": int((table["status"] == "evolved").sum()),
               "dropped": {r: int(n)
                           for r, n in failed.group_by("failure_reason").len().sort("failure_reason").iter_rows()}}
    meta = {"model": llm.label, "model_identity": llm.identity, SETTINGS: dataclasses.asdict(cfg),
            "template_hash": prompts.hash(SELF_INSTRUCT_TEMPLATE)}
    return Outputs(metrics,
                   f"autoif_constraints: {metrics['constraints']} constraints ({metrics['new_constraints']} new) "
                            f"from {cfg.self_instruct_calls} calls; dropped {metrics['dropped']}",
                   table=table, meta=meta, checks=validation.unique("id") + validation.non_empty_text(["constraint"]),
                   extra={"raw_outputs.jsonl": [{"call_index": i, "text": t} for i, t in enumerate(outputs)]})
