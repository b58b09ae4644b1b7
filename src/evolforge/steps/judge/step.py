"""Difficulty judging (SLM paper): a five-label level and a 0-100 score per instruction from the judge role.

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
import tempfile
from pathlib import Path
from typing import Any, Sequence

import polars as pl

from evolforge.io import validation
from evolforge.io.columns import JUDGED
from evolforge.config.loader import load_section
from evolforge.config.runtime import load_llm_params
from evolforge.config.data import DataSettings
from evolforge.steps.judge.settings import JudgeSettings
from evolforge.core.prompts import PromptLibrary
from evolforge.core.stage import Outputs
from evolforge.io.records import TABLE, VERSIONS, output_versions
from evolforge.io.stream import (check_chunks, checked_chunks, iter_chunks, read_spilled, spilled,
                                 table_file, table_schema,
                                 write_output_chunks)
from evolforge.core.text import question_text
from evolforge.llm.cached import LLM, open_roles
from evolforge.llm.types import Completion
from evolforge.llm.ranking import choice_probabilities, expected_value
from evolforge.steps.judge.levels import LEVELS, SCORES

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

    def ask(template: str, choices: tuple[str, ...], desc: str) -> list[Completion]:
        requests = [llm.request([{"role": "user", "content": prompts.render(template, query=q)}],
                                 max_tokens=max_tokens, choices=choices if constrain else None, rank=probabilities)
                    for q in queries]
        return llm.generate(requests, desc=desc)

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


def level_distribution(table: pl.DataFrame) -> list[dict]:
    """Share of each level per round (the SLM paper's Figure 2); unparsed answers are left out."""
    rows = []
    for (rnd,), part in table.group_by(["round"], maintain_order=True):
        parsed = part.filter(pl.col("difficulty_level").is_not_null())
        for level in LEVELS:
            n = int((parsed["difficulty_level"] == level).sum())
            rows.append({"round": int(rnd), "level": level, "count": n,
                         "share": n / parsed.height if parsed.height else 0.0})
    return sorted(rows, key=lambda r: (r["round"], LEVELS.index(r["level"])))


def _per_round(written: Path) -> tuple[dict, pl.DataFrame]:
    """The metrics' per-round item counts, means with their spread (sample standard deviation, null under two
    values) and level counts, from the written table read a column or two at a time (never the raw answers),
    and the (round, difficulty_level) columns for the levels plot."""
    levels = pl.read_parquet(written, columns=["round", "difficulty_level"])
    per_round: dict[str, dict] = {str(r): {"items": part.height}
                                  for (r,), part in levels.group_by(["round"], maintain_order=True)}
    for column in ("difficulty_score", "difficulty_expected", "level_expected"):
        values = pl.read_parquet(written, columns=["round", column])
        for (r,), part in values.group_by(["round"], maintain_order=True):
            per_round[str(r)][f"mean_{column}"] = part[column].mean()
            per_round[str(r)][f"sd_{column}"] = part[column].std()
    for (r,), part in levels.group_by(["round"], maintain_order=True):
        per_round[str(r)]["levels"] = {level: int((part["difficulty_level"] == level).sum()) for level in LEVELS}
    return per_round, levels


def held(cfg: Any, llm: LLM, column: Any) -> bool:
    """True when something held the judge's answers to the allowed ones: ``judge.constrain`` asked for it, the
    backend enforces it (a server role whose choice_format is not none; a ranking always) and no answer the
    judge gave fell outside them (a server that ignored the constraint answers free text)."""
    if not cfg.constrain:
        return False
    if cfg.probabilities:
        return True
    if llm.served and llm.role.settings.choice_format == "none":
        return False
    outside = {"not_a_level", "not_a_number", "out_of_range"}
    return not any(reason in outside for name in ("difficulty_level_reason", "difficulty_score_reason")
                   for reason in column(name).drop_nulls().to_list())


def run(items: str | Path, out: str | Path, params: dict[str, Any], prompts: PromptLibrary) -> Outputs:
    """The judge stage over the table ``items``: the item texts are read ``data.chunk_rows`` at a time and
    judged chunk by chunk (each item's answers are its own); each chunk's judged columns, without the texts,
    are spilled beside ``out`` and streamed into it; the metrics read the written table a column at a time
    (docs/how-to/scale.md)."""
    cfg = load_section(params, "judge", JudgeSettings)
    source, rows = table_file(items), load_section(params, "data", DataSettings).chunk_rows
    check_chunks(source,
                 validation.item_columns(["id", "round", "instruction", "input"]) + validation.unique("id"), rows)
    llm = open_roles(load_llm_params(params, ("judge",)))["judge"]

    def judged(chunk: pl.DataFrame) -> pl.DataFrame:
        return judge(chunk, llm, prompts, score_prompt=cfg.score_prompt, max_tokens=cfg.max_tokens,
                     constrain=cfg.constrain,
                     probabilities=cfg.probabilities).select(list(JUDGED))

    score_template = SCORE_TEMPLATES[cfg.score_prompt]
    meta = {VERSIONS: output_versions(), "model": llm.label, "model_identity": llm.identity,  # as write_output
            "score_prompt": cfg.score_prompt, "constrained": cfg.constrain,
            "template_hashes": {LEVEL_TEMPLATE: prompts.hash(LEVEL_TEMPLATE),
                                score_template: prompts.hash(score_template)}}
    out = Path(out)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    # the model runs on this thread
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-work-", dir=out.absolute().parent) as work:
        checked = checked_chunks(map(judged, iter_chunks(source, rows)),
                                 validation.between("difficulty_score", 0, 100), out)
        files = spilled(checked, work)
        schema = pl.read_parquet_schema(files[0]) if files else judged(pl.DataFrame(schema=table_schema(source))).schema
        write_output_chunks(out, {TABLE: (schema, read_spilled(files))}, meta=meta)
    written = table_file(out)

    def column(name: str) -> pl.Series:
        return pl.read_parquet(written, columns=[name])[name]

    per_round, levels = _per_round(written)
    metrics = {"items": levels.height, "score_prompt": cfg.score_prompt, "constrained": held(cfg, llm, column),
               "mean_difficulty_score": column("difficulty_score").mean(), "probabilities": cfg.probabilities,
               "mean_difficulty_expected": column("difficulty_expected").mean(),
               "level_unparsed": int(levels["difficulty_level"].is_null().sum()),
               "score_unparsed": int(column("difficulty_score").is_null().sum()),
               "per_round": per_round, "calls": llm.stats["calls"], "cache_hits": llm.stats["cache_hits"],
               "llm": {"judge": llm.stats}}  # tokens, failures and cost of the calls
    return Outputs(metrics, f"judge: {levels.height} items, {metrics['level_unparsed']} levels and "
                            f"{metrics['score_unparsed']} scores unparsed",
                   plot=level_distribution(levels), peak_rss=True)
