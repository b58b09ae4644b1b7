"""Win-tie-lose judging of two models' answers to the same instructions (the SLM paper's AlpacaFarm study).

The judge sees ``[User] ... [Assistant 1] ... [Assistant 2] ... [System]`` and ends with one label line.
Parsing is the paper's substring rule: "better than" -> win, "worse than" -> lose, anything else -> tie,
from Assistant 1's side (``rule="paper"`` reads the whole answer, ``rule="last_line"`` only its last
non-empty line, where the prompt asks for the label).

With ``both_orders`` each pair is judged twice, the second time with the answers swapped: model A wins only
when it is judged better as Assistant 1 *and*, swapped, B is judged worse as Assistant 1 (likewise for a
loss); any disagreement is a tie. This cancels the judge's position bias.

>>> parse_verdict("Both are fine.\\nAssistant 1 is better than Assistant 2")
'win'
>>> combine_orders("win", "lose"), combine_orders("win", "win")
('win', 'tie')
"""

from __future__ import annotations

from typing import Any, Sequence

import polars as pl

from evolforge.core.prompts import PromptLibrary
from evolforge.llm import LLM
from evolforge.core.settings import CompareSettings  # noqa: F401  (part of this module's API)

JUDGE_TEMPLATE = "judge/win_tie_lose.j2"
VERDICTS = ("win", "tie", "lose")
RULES = ("paper", "last_line")
_FLIP = {"win": "lose", "lose": "win", "tie": "tie"}


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
                max_tokens: int | None = None) -> pl.DataFrame:
    """One row per query: the raw judge answer(s), each order's verdict, and A's final ``verdict``."""
    def ask(firsts: Sequence[str], seconds: Sequence[str], desc: str) -> list[str]:
        requests = [llm.request([{"role": "user", "content": prompts.render(JUDGE_TEMPLATE, query=q, first=f, second=s)}],
                                max_tokens=max_tokens) for q, f, s in zip(queries, firsts, seconds)]
        return llm.complete(requests, desc=desc)

    raw_ab = ask(answers_a, answers_b, "judge A vs B")
    verdict_ab = [parse_verdict(t, rule) for t in raw_ab]
    columns: dict[str, Any] = {"judge_raw_ab": raw_ab, "verdict_ab": verdict_ab}
    if both_orders:
        raw_ba = ask(answers_b, answers_a, "judge B vs A")
        verdict_ba = [parse_verdict(t, rule) for t in raw_ba]
        columns |= {"judge_raw_ba": raw_ba, "verdict_ba": verdict_ba,
                    "verdict": [combine_orders(x, y) for x, y in zip(verdict_ab, verdict_ba)]}
    else:
        columns["verdict"] = verdict_ab
    return pl.DataFrame({k: pl.Series(v, dtype=pl.String) for k, v in columns.items()})


def counts(verdicts: Sequence[str]) -> dict[str, Any]:
    """W/T/L counts and rates from model A's side."""
    n = len(verdicts)
    out: dict[str, Any] = {v: sum(1 for x in verdicts if x == v) for v in VERDICTS}
    out |= {f"{v}_rate": out[v] / n if n else None for v in VERDICTS}
    out["items"] = n
    return out


