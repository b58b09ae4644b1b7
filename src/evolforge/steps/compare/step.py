"""Win-tie-lose judging of two models' answers to the same instructions (the SLM paper's AlpacaFarm study).

The judge sees ``[User] ... [Assistant 1] ... [Assistant 2] ... [System]`` and ends with one label line.
Parsing is the paper's substring rule: "better than" -> win, "worse than" -> lose, anything else -> tie,
from Assistant 1's side (``rule="paper"`` reads the whole answer, ``rule="last_line"`` only its last
non-empty line, where the prompt asks for the label).

With ``both_orders`` each pair is judged twice, the second time with the answers swapped: model A wins only
when it is judged better as Assistant 1 *and*, swapped, B is judged worse as Assistant 1 (likewise for a
loss); any disagreement is a tie. This cancels the judge's position bias.

Two answers that are the same text are a tie without a judge call (``judge_identical: false``, the default):
neither can be better, so whatever a judge says of such a pair is its position bias (a model fine-tuned for
one step on a few items often answers exactly as its base). ``judge_identical: true`` judges them too, as the
paper's protocol judges every pair.

>>> parse_verdict("Both are fine.\\nAssistant 1 is better than Assistant 2")
'win'
>>> combine_orders("win", "lose"), combine_orders("win", "win")
('win', 'tie')
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import polars as pl

from evolforge.steps.compare.settings import CompareSettings
from evolforge.core.prompts import PromptLibrary
from evolforge.core.stage import Outputs
from evolforge.io.records import SETTINGS
from evolforge.llm.cached import LLM, open_llm
from evolforge.llm.types import Completion
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.common.responses import RESPONSE_TEMPLATE, respond
from evolforge.steps.common.source import build_seed

JUDGE_TEMPLATE = "judge/win_tie_lose.j2"
VERDICTS = ("win", "tie", "lose")
RULES = ("paper", "last_line")


def parse_verdict(text: str, rule: str = "paper") -> str:
    """Assistant 1's result: ``win`` if "better than" occurs, else ``lose`` if "worse than" does, else ``tie``."""
    if rule not in RULES:
        raise ValueError(f"params.yaml compare.parse: {rule!r} is not one of {list(RULES)}")
    if rule == "last_line":
        lines = [ln for ln in text.splitlines() if ln.strip()]
        text = lines[-1] if lines else ""
    text = text.lower()
    if "better than" in text:
        return "win"
    if "worse than" in text:
        return "lose"
    return "tie"


def combine_orders(a_first: str, a_second: str) -> str:
    """A's result from two verdicts: ``a_first`` with A as Assistant 1, ``a_second`` with B as Assistant 1
    (so ``a_second`` is B's result). A wins only if it wins the first and B loses the second; likewise a loss."""
    if a_first == "win" and a_second == "lose":
        return "win"
    if a_first == "lose" and a_second == "win":
        return "lose"
    return "tie"


def judge_pairs(llm: LLM, prompts: PromptLibrary, queries: Sequence[str], answers_a: Sequence[str],
                answers_b: Sequence[str], *, both_orders: bool = True, rule: str = "paper",
                max_tokens: int | None = None, judge_identical: bool = False) -> pl.DataFrame:
    """One row per query: the raw judge answer(s), each order's verdict, A's final ``verdict``, and whether the
    two answers are ``identical`` (then, unless ``judge_identical``, a tie the judge is not asked about: its
    raw answers and order verdicts are null)."""
    identical = [a == b for a, b in zip(answers_a, answers_b)]
    asked = [i for i, same in enumerate(identical) if judge_identical or not same]

    def ask(firsts: Sequence[str], seconds: Sequence[str], desc: str) -> list[str | None]:
        requests = [llm.request([{"role": "user", "content": prompts.render(
            JUDGE_TEMPLATE, query=queries[i], first=firsts[i], second=seconds[i])}], max_tokens=max_tokens)
            for i in asked]
        raw: list[str | None] = [None] * len(queries)
        for i, text in zip(asked, llm.complete(requests, desc=desc) if requests else []):
            raw[i] = text
        return raw

    def verdicts(raw: list[str | None]) -> list[str | None]:
        return [None if text is None else parse_verdict(text, rule) for text in raw]

    raw_ab = ask(answers_a, answers_b, "judge A vs B")
    verdict_ab = verdicts(raw_ab)
    columns: dict[str, Any] = {"judge_raw_ab": raw_ab, "verdict_ab": verdict_ab}
    if both_orders:
        raw_ba = ask(answers_b, answers_a, "judge B vs A")
        verdict_ba = verdicts(raw_ba)
        columns |= {"judge_raw_ba": raw_ba, "verdict_ba": verdict_ba,
                    "verdict": [combine_orders(x, y) if x is not None else "tie"
                                for x, y in zip(verdict_ab, verdict_ba)]}
    else:
        columns["verdict"] = [v if v is not None else "tie" for v in verdict_ab]
    frame = pl.DataFrame({k: pl.Series(v, dtype=pl.String) for k, v in columns.items()})
    return frame.with_columns(identical=pl.Series(identical, dtype=pl.Boolean))


def counts(verdicts: Sequence[str]) -> dict[str, Any]:
    """W/T/L counts and rates from model A's side."""
    n = len(verdicts)
    out: dict[str, Any] = {v: sum(1 for x in verdicts if x == v) for v in VERDICTS}
    out |= {f"{v}_rate": out[v] / n if n else None for v in VERDICTS}
    out["items"] = n
    return out


def answer_table(items: pl.DataFrame, done_a: Sequence[Completion], done_b: Sequence[Completion], judged: list[int],
                 verdicts: pl.DataFrame) -> pl.DataFrame:
    """One row per instruction: both answers and finish reasons, and the verdict columns of the judged pairs; a
    pair with a failed answer is not judged and keeps its ``failure_reason``."""
    position = {i: row for row, i in enumerate(judged)}
    verdict_rows = [verdicts.row(position[i], named=True) if i in position else dict.fromkeys(verdicts.columns)
                    for i in range(items.height)]
    failure = [None if i in position else "no_answer: " + ", ".join(
        f"{side} {c.failure_reason}" for side, c in (("tuned", done_a[i]), ("other", done_b[i])) if c.failed)
        for i in range(items.height)]
    return items.select("id", "instruction", "input").with_columns(
        answer_tuned=pl.Series([c.text for c in done_a], dtype=pl.String),
        answer_other=pl.Series([c.text for c in done_b], dtype=pl.String),
        finish_tuned=pl.Series([c.finish_reason for c in done_a], dtype=pl.String),
        finish_other=pl.Series([c.finish_reason for c in done_b], dtype=pl.String),
        failure_reason=pl.Series(failure, dtype=pl.String),
    ).hstack(pl.DataFrame(verdict_rows, schema=verdicts.schema))


def run(instructions_file: str, model: str, cfg: CompareSettings, llms: RoleLLMs, prompts: PromptLibrary) -> Outputs:
    """The compare stage: ``model`` (the fine-tuned one) against roles.base or ``compare.against``, both
    answering greedily through the hf/vllm backend of roles.base, judged by roles.judge (``llms``)."""
    items = build_seed(instructions_file, limit=cfg.limit, seed=cfg.seed)[0]
    cache, base = llms.cache, llms.role("base")
    answer_role = dataclasses.replace(base, temperature=0.0, max_tokens=cfg.max_tokens)
    tuned = open_llm(dataclasses.replace(answer_role, name="compare_tuned", model=model, revision=None), cache,
                     settings=llms.settings)
    other_model = base.model if cfg.against == "base" else cfg.against
    other = open_llm(dataclasses.replace(answer_role, name="compare_other", model=other_model,
                                         revision=base.revision if cfg.against == "base" else None), cache,
                     settings=llms.settings)
    instructions, inputs = items["instruction"].to_list(), items["input"].to_list()
    done_a = respond(tuned, prompts, instructions, inputs, desc="answers: tuned")
    done_b = respond(other, prompts, instructions, inputs, desc="answers: other")
    # a pair is judged only when both models answered; a failed call leaves that pair unjudged, with its reason
    judged = [i for i, (a, b) in enumerate(zip(done_a, done_b)) if not a.failed and not b.failed]
    judge = llms["judge"]
    queries = [q + "\n" + x if x else q for q, x in zip(instructions, inputs)]  # the reference code's user query
    verdicts = judge_pairs(judge, prompts, [queries[i] for i in judged], [done_a[i].text for i in judged],
                           [done_b[i].text for i in judged], both_orders=cfg.both_orders, rule=cfg.parse,
                           max_tokens=cfg.judge_max_tokens, judge_identical=cfg.judge_identical)
    table = answer_table(items, done_a, done_b, judged, verdicts)
    called = {"tuned": tuned, "other": other, "judge": judge}
    metrics = counts(table["verdict"].drop_nulls().to_list()) | {
        "unjudged": items.height - len(judged), "identical": int(verdicts["identical"].sum()),
        "judge_identical": cfg.judge_identical, "both_orders": cfg.both_orders, "parse": cfg.parse,
        "against": cfg.against,
        "calls": {n: llm.stats["calls"] for n, llm in called.items()},
        "cache_hits": {n: llm.stats["cache_hits"] for n, llm in called.items()},
        "llm": {n: llm.stats for n, llm in called.items()}}
    meta = {"tuned": tuned.label, "other": other.label, "judge": judge.label, SETTINGS: dataclasses.asdict(cfg),
            "template_hashes": {t: prompts.hash(t) for t in (RESPONSE_TEMPLATE, JUDGE_TEMPLATE)}}
    return Outputs(metrics, f"compare: tuned vs {cfg.against}: {metrics['win']} win / {metrics['tie']} tie / "
                            f"{metrics['lose']} lose",
                   table=table, meta=meta)
