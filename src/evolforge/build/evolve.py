"""One round of instruction evolution, with elimination and recorded reasons.

Strategies (``evolve.strategy``):
- ``evol``: Evol-Instruct's hand-written methods, four in-depth (add_constraints, deepening, concretizing,
  reasoning) and optionally in-breadth, assigned ``round_robin`` (rotated by round, as the SLM paper does)
  or ``random`` (seeded, as the original Evol-Instruct does). The evolver's whole answer is the new
  instruction.
- ``auto`` / ``auto_initial``: one evolving method text (optimized by the optimize stage, or the initial
  method) applied to every instruction; the new instruction is parsed from after
  ``#Finally Rewritten Instruction#:`` and a missing marker is a failure.

Only ``instruction`` is evolved; ``input`` is carried over. Every item that enters a round leaves it as
exactly one row, ``evolved`` or ``failed`` (with ``failure_reason``), so in = evolved + failed. An LLM
call that failed (``prompt_too_long``, ``request_rejected``, ``retries_exhausted``) fails its item with
that reason, the server's message in ``failure_detail`` and a null ``raw_output``. The pool for the
next round is the evolved rows plus, with ``on_failure: keep_parent``, the parents of failed ones.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from evolforge.build import failures
from evolforge.llm import LLM
from evolforge.core.prompts import PromptLibrary
from evolforge.core.records import EVOLVED, FAILED, LINEAGE, make_id
from evolforge.build.respond import respond

IN_DEPTH = ["add_constraints", "deepening", "concretizing", "reasoning"]
BREADTH = "breadth"
STRATEGIES = ("evol", "auto", "auto_initial")
RULES = ("empty", "unchanged", "template_words", "sorry_short", "stopwords_only", "rule_f", "info_gain")
METHOD_TEMPLATE = "optimize/evolve_with_method.j2"


@dataclass
class EvolveSettings:
    strategy: str = "evol"
    assignment: str = "round_robin"
    breadth: bool = True
    on_failure: str = "keep_parent"
    # evolver sampling; None = the evolver role's default
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int = 0
    elimination: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def from_params(cls, cfg: dict[str, Any]) -> "EvolveSettings":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known - {"rounds"})
        if unknown:
            raise ValueError(f"params.yaml evolve: unknown key(s) {unknown}; expected some of {sorted(known | {'rounds'})}")
        bad_rules = sorted(set(cfg.get("elimination") or {}) - set(RULES))
        if bad_rules:
            raise ValueError(f"params.yaml evolve.elimination: unknown rule(s) {bad_rules}; rules are {RULES}")
        s = cls(**{k: v for k, v in cfg.items() if k in known})
        if s.strategy not in STRATEGIES:
            raise ValueError(f"params.yaml evolve.strategy: {s.strategy!r} is not one of {STRATEGIES}")
        if s.assignment not in ("round_robin", "random"):
            raise ValueError(f"params.yaml evolve.assignment: {s.assignment!r} is not round_robin or random")
        if s.on_failure not in ("keep_parent", "drop"):
            raise ValueError(f"params.yaml evolve.on_failure: {s.on_failure!r} is not keep_parent or drop")
        return s

    def rule(self, name: str, default: bool = True) -> bool:
        return bool(self.elimination.get(name, default))


def assign_methods(n: int, round_index: int, assignment: str = "round_robin", breadth: bool = True, seed: int = 0) -> list[str]:
    """Evol-Instruct method per item. Round-robin rotates the method order by round; random is seeded.

    >>> assign_methods(5, 1, breadth=False)
    ['deepening', 'concretizing', 'reasoning', 'add_constraints', 'deepening']
    """
    methods = IN_DEPTH + ([BREADTH] if breadth else [])
    if assignment == "random":
        rng = random.Random(f"{seed}:{round_index}")
        return [rng.choice(methods) for _ in range(n)]
    shift = round_index % len(methods)
    order = methods[shift:] + methods[:shift]
    return [order[i % len(order)] for i in range(n)]


def evolving_prompt(prompts: PromptLibrary, method: str, instruction: str, method_text: str | None = None) -> str:
    """The evolving prompt for ``instruction``: Evol-Instruct's breadth or in-depth template for those
    methods, otherwise (an Auto Evol-Instruct strategy) the evolving method ``method_text``."""
    if method == BREADTH:
        return prompts.render("evolve/breadth.j2", instruction=instruction)
    if method in IN_DEPTH:
        return prompts.render("evolve/depth.j2", method=method, instruction=instruction)
    if method_text is None:
        raise ValueError(f"method {method!r} needs an evolving method text")
    return prompts.render(METHOD_TEMPLATE, method=method_text, instruction=instruction)


def template_hash(prompts: PromptLibrary, method: str, method_text: str | None = None) -> str:
    if method == BREADTH:
        return prompts.hash("evolve/breadth.j2")
    if method in IN_DEPTH:
        return prompts.hash("evolve/depth.j2")
    return make_id(prompts.hash(METHOD_TEMPLATE), method_text)


def evolve_with_method(llm: LLM, prompts: PromptLibrary, instructions: list[str], method_text: str,
                       temperature: float | None = None, top_p: float | None = None, max_tokens: int | None = None,
                       seed: int | None = None, desc: str = "evolve") -> list[tuple[str | None, str | None]]:
    """Apply one evolving method to each instruction; returns (parsed instruction or None, raw answer);
    both are None when the call failed (as unparseable as a missing marker, and no text to show)."""
    requests = [llm.request([{"role": "user", "content": evolving_prompt(prompts, "auto", i, method_text)}],
                             temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
                for i in instructions]
    raws = llm.complete(requests, desc=desc)
    return [(None, None) if raw is None else (failures.parse_final_instruction(raw), raw) for raw in raws]


def info_gain_verdicts(llm: LLM, prompts: PromptLibrary, parents: list[str], children: list[str]) -> list[bool | None]:
    """LLM check: True when the evolved instruction equals its parent (no information gain)."""
    requests = [llm.request([{"role": "user", "content": prompts.render("judge/equal.j2", first=p, second=c)}])
                for p, c in zip(parents, children)]
    # a failed call is an unparsed verdict: the item is not eliminated on no evidence
    return [None if t is None else failures.parse_equal(t) for t in llm.complete(requests, desc="equal check")]


def evolve_round(pool: pl.DataFrame, *, round_index: int, settings: EvolveSettings, prompts: PromptLibrary,
                 evolver: LLM, method_text: str | None = None,
                 judge: LLM | None = None) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Evolve every item of ``pool`` once. Returns (round table, next pool, summary)."""
    items = pool.to_dicts()
    n = len(items)
    if settings.strategy == "evol":
        methods = assign_methods(n, round_index, settings.assignment, settings.breadth, settings.seed)
    else:
        if not method_text:
            raise ValueError(f"evolve.strategy {settings.strategy}: no evolving method text given")
        methods = [settings.strategy] * n
    # sample_index = the round: a parent kept after a failure gets a fresh attempt, not its cached one
    sampling = dict(temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_tokens,
                    seed=settings.seed, sample_index=round_index)

    # 1. evolve
    requests = [evolver.request([{"role": "user", "content": evolving_prompt(prompts, m, it["instruction"], method_text)}], **sampling)
                for m, it in zip(methods, items)]
    outs = evolver.generate(requests, desc=f"round {round_index}: evolve")
    raws = [None if c.failed else c.text for c in outs]
    details: list[str | None] = [c.error for c in outs]
    candidates = [None if r is None else failures.parse_final_instruction(r) if m in STRATEGIES else r.strip()
                  for m, r in zip(methods, raws)]

    # 2. checks on the instruction itself
    reasons: list[str | None] = []
    for m, it, cand, out in zip(methods, items, candidates, outs):
        if out.failed:
            reasons.append(out.failure_reason)
            continue
        if m in STRATEGIES and cand is None:
            reasons.append(failures.MISSING_MARKER)
            continue
        reasons.append(failures.instruction_failure(
            it["instruction"], cand, empty=settings.rule("empty"), unchanged=settings.rule("unchanged"),
            template_words=settings.rule("template_words")))

    # 3. checks on the evolver's response to the evolved instruction (generated only when a rule needs it)
    responses: list[str | None] = [None] * n
    response_rules = {k: settings.rule(k) for k in ("sorry_short", "stopwords_only", "rule_f")}
    alive = [i for i in range(n) if reasons[i] is None]
    if any(response_rules.values()) and alive:
        answers = respond(evolver, prompts, [candidates[i] for i in alive], [items[i]["input"] for i in alive],
                          desc=f"round {round_index}: check", temperature=0.0, max_tokens=settings.max_tokens, seed=settings.seed)
        for i, answer in zip(alive, answers):
            if answer.failed:  # the item cannot be checked: it fails with the call's reason
                reasons[i], details[i] = answer.failure_reason, f"check response: {answer.error}"
                continue
            responses[i] = answer.text
            reasons[i] = failures.response_failure(answer.text, **response_rules)

    # 4. optional information-gain check with the judge
    unparsed_equal = 0
    alive = [i for i in range(n) if reasons[i] is None]
    if settings.rule("info_gain", False) and alive:
        if judge is None:
            raise ValueError("evolve.elimination.info_gain needs the judge role")
        verdicts = info_gain_verdicts(judge, prompts, [items[i]["instruction"] for i in alive], [candidates[i] for i in alive])
        for i, same in zip(alive, verdicts):
            unparsed_equal += same is None
            if same:
                reasons[i] = failures.NO_INFO_GAIN

    rows, next_pool = [], []
    model = evolver.label
    for it, m, raw, cand, resp, reason, detail in zip(items, methods, raws, candidates, responses, reasons, details):
        status = EVOLVED if reason is None else FAILED
        text = cand if cand is not None else ""
        row = {
            "id": make_id(it["id"], round_index, m, text, status),
            "root_id": it["root_id"], "parent_id": it["id"], "round": round_index, "method": m,
            "status": status, "failure_reason": reason, "failure_detail": detail,
            "instruction": text, "input": it["input"], "output": "",
            "parent_instruction": it["instruction"], "raw_output": raw, "check_response": resp,
            "template_hash": template_hash(prompts, m, method_text), "model": model,
        }
        rows.append(row)
        if status == EVOLVED:
            next_pool.append(row)
        elif settings.on_failure == "keep_parent":
            next_pool.append(it)
    table = pl.DataFrame(rows, schema=ROUND_SCHEMA)
    pool_out = _as_pool(next_pool)
    summary = round_summary(table)
    summary["equal_check_unparsed"] = unparsed_equal
    summary["next_pool"] = pool_out.height
    return table, pool_out, summary


ROUND_SCHEMA = {
    "id": pl.String, "root_id": pl.String, "parent_id": pl.String, "round": pl.Int32, "method": pl.String,
    "status": pl.String, "failure_reason": pl.String, "failure_detail": pl.String, "instruction": pl.String, "input": pl.String,
    "output": pl.String, "parent_instruction": pl.String, "raw_output": pl.String, "check_response": pl.String,
    "template_hash": pl.String, "model": pl.String,
}


def _as_pool(rows: list[dict]) -> pl.DataFrame:
    cols = LINEAGE + ["instruction", "input", "output"]
    return pl.DataFrame([{c: r.get(c) for c in cols} for r in rows],
                        schema={c: ROUND_SCHEMA[c] for c in cols})


def round_summary(table: pl.DataFrame) -> dict:
    """Counts (in = evolved + failed), failures by reason, and mean instruction length growth."""
    evolved = table.filter(pl.col("status") == EVOLVED)
    reasons = Counter(r for r in table["failure_reason"].to_list() if r is not None)
    growth = None
    if evolved.height:
        ratio = evolved.select(
            pl.col("instruction").str.split(" ").list.len() / pl.col("parent_instruction").str.split(" ").list.len())
        growth = float(ratio.to_series().mean())
    return {"in": table.height, "evolved": evolved.height, "failed": table.height - evolved.height,
            "failed_by_reason": dict(sorted(reasons.items())), "mean_length_growth": growth}
