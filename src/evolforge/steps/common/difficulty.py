"""Judging an instruction's difficulty (SLM paper): a five-label level and a 0-100 score from the judge role, shared by
the judge step (every item) and the optimize step (the development set's evolutions under two methods).

With ``constrain`` (the default) every request carries its allowed answers -- the five labels, the
whole numbers 0 to 100 -- and the judge's backend holds its answer to them (see :mod:`evolforge.llm`);
without it the answer is free text, as in the papers. Either way the text goes through the same parser.

With ``probabilities`` every allowed answer is scored by the model's likelihood instead of decoded
(:mod:`evolforge.llm.ranking`, as lm-evaluation-harness scores multiple choice): the level and score are
the most likely answers, and ``level_expected`` (0 = very easy .. 4 = very hard) and ``difficulty_expected``
(0-100) their expected values under the model's probabilities renormalised over the allowed answers, so
items the greedy answer lumps together ("100" for all) still differ. The raw text is then the JSON list of
the answers' log-probabilities.

Two score prompts exist: ``paper`` (the paper's figure, same layout as the level prompt) and ``code``
(the reference code's wording); which one was used is recorded per row. An answer that does not parse
stays null, with its raw text and a reason: never an invented value. A call that failed (prompt too
long, rejected, retries exhausted) has a null raw text and the failure as its reason.

>>> parse_level(" Hard\\n")
('hard', None)
>>> parse_score("It is fairly hard.")
(None, 'not_a_number')
"""

from __future__ import annotations

import re
from typing import Sequence

import polars as pl

from evolforge.core.prompts import PromptLibrary
from evolforge.core.text import question_text
from evolforge.llm.cached import LLM
from evolforge.llm.ranking import choice_probabilities, expected_value
from evolforge.llm.types import Completion

LEVELS = ["very easy", "easy", "medium", "hard", "very hard"]
SCORES = tuple(str(n) for n in range(101))  # what a constrained score may be


LEVEL_TEMPLATE = "judge/difficulty_level.j2"
SCORE_TEMPLATES = {"paper": "judge/difficulty_score.j2", "code": "judge/difficulty_score_code.j2"}


_NUMBER = re.compile(r"^[+-]?\d+(?:\.\d+)?$")


def parse_level(text: str) -> tuple[str | None, str | None]:
    """Exactly one of the five labels (case, surrounding quotes and a final period forgiven)."""
    cleaned = text.strip().strip("'\"`").rstrip(".").strip().lower()
    if cleaned in LEVELS:
        return cleaned, None
    return None, "not_a_level" if cleaned else "empty"


def parse_score(text: str) -> tuple[float | None, str | None]:
    """A bare number in [0, 100]."""
    cleaned = text.strip().rstrip(".")
    if not cleaned:
        return None, "empty"
    if not _NUMBER.match(cleaned):
        return None, "not_a_number"
    value = float(cleaned)
    if not 0 <= value <= 100:
        return None, "out_of_range"
    return value, None


def ranked_answer(completion: Completion, choices: Sequence[str],
                  values: Sequence[float]) -> tuple[str | None, float | None, str | None]:
    """(most likely choice, expected value, failure reason) of a ranking completion."""
    if completion.failed:
        return None, None, completion.failure_reason
    try:
        probs = choice_probabilities(completion.text)
    except ValueError:
        return None, None, "not_log_probabilities"
    if len(probs) != len(choices):
        return None, None, "not_log_probabilities"
    best = max(range(len(probs)), key=lambda k: (probs[k], -k))
    return choices[best], expected_value(probs, values), None


def judge(items: pl.DataFrame, llm: LLM, prompts: PromptLibrary, score_prompt: str = "paper",
          max_tokens: int | None = None, constrain: bool = True, probabilities: bool = False) -> pl.DataFrame:
    """Add difficulty_level / difficulty_score (+ raw answers, parse reasons, prompt variant, and with
    ``probabilities`` the expected values difficulty_expected / level_expected) to ``items``."""
    if score_prompt not in SCORE_TEMPLATES:
        raise ValueError(f"params.yaml judge.score_prompt: {score_prompt!r} is not one of {sorted(SCORE_TEMPLATES)}")
    queries = [question_text(q, x) for q, x in zip(items["instruction"].to_list(), items["input"].to_list())]

    def ask(template: str, choices: Sequence[str], desc: str) -> list[Completion]:
        return _ask(llm, prompts, template, queries, choices, max_tokens, constrain, probabilities, desc)

    level_out = ask(LEVEL_TEMPLATE, tuple(LEVELS), "judge level")
    score_out = ask(SCORE_TEMPLATES[score_prompt], SCORES, "judge score")
    level_raw = [None if c.failed else c.text for c in level_out]
    score_raw = [None if c.failed else c.text for c in score_out]
    if probabilities:
        ranked_levels = [ranked_answer(c, LEVELS, range(len(LEVELS))) for c in level_out]
        ranked_scores = [ranked_answer(c, SCORES, [float(s) for s in SCORES]) for c in score_out]
        levels = [(best, why) for best, _, why in ranked_levels]
        scores = [(None if best is None else float(best), why) for best, _, why in ranked_scores]
        level_expected = [e for _, e, _ in ranked_levels]
        score_expected = [e for _, e, _ in ranked_scores]
    else:
        levels = [(None, c.failure_reason) if c.failed else parse_level(c.text) for c in level_out]
        scores = [(None, c.failure_reason) if c.failed else parse_score(c.text) for c in score_out]
        level_expected = score_expected = [None] * len(queries)
    return items.with_columns(
        difficulty_level=pl.Series([v for v, _ in levels], dtype=pl.String),
        difficulty_level_reason=pl.Series([r for _, r in levels], dtype=pl.String),
        difficulty_level_raw=pl.Series(level_raw, dtype=pl.String),
        difficulty_score=pl.Series([v for v, _ in scores], dtype=pl.Float64),
        difficulty_score_reason=pl.Series([r for _, r in scores], dtype=pl.String),
        difficulty_score_raw=pl.Series(score_raw, dtype=pl.String),
        score_prompt=pl.lit(score_prompt),
        judge_constrained=pl.lit(constrain),
        difficulty_expected=pl.Series(score_expected, dtype=pl.Float64),
        level_expected=pl.Series(level_expected, dtype=pl.Float64),
        difficulty_level_thinking=pl.Series([c.thinking for c in level_out], dtype=pl.String),
        difficulty_score_thinking=pl.Series([c.thinking for c in score_out], dtype=pl.String),
    )


def _ask(llm: LLM, prompts: PromptLibrary, template: str, queries: Sequence[str], choices: Sequence[str],
         max_tokens: int | None, constrain: bool, probabilities: bool, desc: str) -> list[Completion]:
    requests = [llm.request([{"role": "user", "content": prompts.render(template, query=q)}],
                            max_tokens=max_tokens, choices=tuple(choices) if constrain else None, rank=probabilities)
                for q in queries]
    return llm.generate(requests, desc=desc)


def difficulty_scores(queries: Sequence[str], llm: LLM, prompts: PromptLibrary, score_prompt: str = "paper",
                      max_tokens: int | None = None, constrain: bool = True, probabilities: bool = False,
                      desc: str = "judge score") -> list[float | None]:
    """The 0-100 difficulty of each query: the expected score under the judge's probabilities with
    ``probabilities``, else its parsed answer (None where it did not parse or the call failed). The score prompt
    alone, as :func:`judge` asks it."""
    if score_prompt not in SCORE_TEMPLATES:
        raise ValueError(f"params.yaml judge.score_prompt: {score_prompt!r} is not one of {sorted(SCORE_TEMPLATES)}")
    out = _ask(llm, prompts, SCORE_TEMPLATES[score_prompt], queries, SCORES, max_tokens, constrain, probabilities,
               desc)
    if probabilities:
        return [ranked_answer(c, SCORES, [float(s) for s in SCORES])[1] for c in out]
    return [None if c.failed else parse_score(c.text)[0] for c in out]
