"""Selecting the training set: guards, floors, rank by a metric, keep a top fraction or everything above a
threshold (optionally only items far enough from those already kept), and export for SFT trainers.

Metrics: ``ic_ifd`` (SLM paper, higher is better), ``ifd`` (Cherry: higher = the instruction helps less,
i.e. harder to follow), ``difficulty_score`` (judge, 0-100), ``difficulty_expected`` (the judge's
expected 0-100 score under its probabilities, ``judge.probabilities``) or ``random`` (seeded baseline). Items whose
metric is null (unparseable judge answer, degenerate loss) are never selected by a metric.

Known bias of IFD and IC-IFD. Both divide by how predictable the text is: IFD = L(A|Q) / L(A) is high
when the instruction barely helps, IC-IFD = L(A|Q) / (L(Q) L(A)) is high when L(Q) is *low*, and on a
real small model IC-IFD ran -0.86 (Spearman) with L(Q). Ranking by them favours what the scorer reads
strangely: looping text (tiny L(Q) once the loop starts), answers that do not follow the question, code
blocks with repeated lines. Two floors counter this: ``min_loss_instruction`` (drop items whose L(Q), in
nats per token, is below it: looping and templated instructions) and ``min_mnd`` (drop items whose nearest
neighbour in the pool is closer than it: near-copies, which also get low losses).

Order of the filters (each one's removals are counted, and an empty selection names the filter that emptied it):
rounds -> guards (:data:`~evolforge.steps.common.guards.GUARDS`: complete items) -> ``require_check``
(``answer_check_failed``: items whose answer failed its answer check; items without a check stay) -> ``drop_wrong``
(``verified_wrong``: the verify stage's verdict) -> ``min_confidence`` (``below_min_confidence``; an item without a
confidence goes too) -> ``ifd_filter`` -> floors -> metric present -> threshold -> the budget is set ->
``require_vouched`` (``not_vouched``: neither the verdict ``right`` nor a passing answer check; an AutoIF item's
constraint checks the form only and does not vouch where verify checked the content) -> near-duplicate walk
(``near_duplicate_of_selected``: :mod:`evolforge.steps.select.near_duplicates`) -> same-problem walk
(``same_problem_in_lineage``, ``same_problem_as_selected``, ``same_answer_in_lineage``:
:mod:`evolforge.steps.select.same_problem`) -> diversity
walk / top fraction. The budget is the top fraction of every item left before ``require_vouched``: an item verify
could not vouch for is unknown, not bad, so it counts in the budget but may not fill it; with ``require_vouched:
false`` it ranks after every vouched item. Like the diversity walk, the near-duplicate and same-problem walks give a
dropped item's place to the next one.

Diversity (DEITA's representation filter, :mod:`evolforge.steps.select.diversity_walk`): walk the ranked items and
keep one only if its distance to every item kept so far exceeds ``diversity_threshold``; with ``top_fraction`` the
walk stops once ceil(fraction x ranked) items are kept, so a too-close item's place goes to the next one down.

The filters, ranking and cuts work on whatever table they are given: the whole joined table
(:func:`select_items`) or the select stage's narrow one (ids, round, metrics, and the two helper columns
:func:`~evolforge.steps.select.narrow.with_helpers` adds: the first failed guard and a 64-bit digest of the item's
text), never both ways. Embeddings: :mod:`evolforge.steps.select.embeddings`; the figures of the summary:
:mod:`evolforge.steps.select.set_metrics`; the exports: :mod:`evolforge.steps.select.export`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
import polars as pl

from evolforge.config.bounds import ParamsError
from evolforge.steps.common.guards import applicable
from evolforge.steps.common.verification import CONTENT_METHODS
from evolforge.steps.select.diversity_walk import diverse_walk
from evolforge.steps.select.narrow import GUARD, HELPERS, ROOT, table_texts, with_helpers
from evolforge.steps.select.near_duplicates import TextReader, walk_near_duplicates
from evolforge.steps.select.same_problem import REASONS, Limits, root_codes, walk_same_problems
from evolforge.steps.select.set_metrics import Vectors, problem_counts, set_diversity, traits_of
from evolforge.steps.select.settings import SelectSettings

METRICS = ("ic_ifd", "ifd", "difficulty_score", "difficulty_expected", "random")


class Selection(NamedTuple):
    chosen: pl.DataFrame      # the training set, ranked
    summary: dict             # counts per filter, the filter that emptied it, diversity of the set
    excluded: pl.DataFrame    # id, round, skip_reason for every row of the table not chosen (and, for a repeat of a
                              # selected item's problem, same_problem_as: that item's id)


@dataclass
class _Filtering:
    """The pool as the filters leave it, with each filter's removed rows and counts, in filter order."""

    pool: pl.DataFrame
    excluded: list[pl.DataFrame] = field(default_factory=list)  # id, round, skip_reason of the removed rows
    steps: list[dict] = field(default_factory=list)  # {"filter", "removed", "left"}; left None until the end

    def apply(self, name: str, keep: pl.Expr) -> None:
        """Keep the pool's rows where ``keep`` holds (null counts as not); the others are removed by ``name``."""
        keep = keep.fill_null(False)
        dropped = self.pool.filter(~keep)
        self.pool = self.pool.filter(keep)
        self.record(name, dropped, self.pool.height)

    def record(self, name: str, dropped: pl.DataFrame, left: int | None, extra: Sequence[str] = ()) -> None:
        """Count ``dropped`` as removed by ``name``, with ``left`` rows after it (and its ``extra`` columns kept in
        the excluded rows: what a walk says each one repeats)."""
        self.excluded.append(dropped.select("id", "round", *extra).with_columns(skip_reason=pl.lit(name)))
        self.steps.append({"filter": name, "removed": dropped.height, "left": left})


def _check_settings(settings: SelectSettings, embeddings: Vectors | None) -> None:
    """Refuse settings that cannot run: those built in code that load_section would refuse in params.yaml,
    and a diversity threshold without embeddings."""
    if settings.metric not in METRICS:
        raise ParamsError([f"select.metric: got {settings.metric!r}; allowed: {', '.join(METRICS)}"])
    if settings.top_fraction is not None and not 0 < settings.top_fraction <= 1:
        raise ParamsError([f"select.top_fraction: got {settings.top_fraction}; allowed: a number in (0, 1]"])
    for key in ("diversity_threshold", "same_problem", "same_problem_lineage"):
        if getattr(settings, key) is not None and embeddings is None:
            raise ValueError(f"params.yaml select.{key} needs embeddings (the diversity stage's output)")


def problem_limits(settings: SelectSettings) -> Limits | None:
    """The same-problem walk's limits (``same_problem``, ``same_problem_lineage``, ``same_answer_lineage``); None
    when all are off."""
    if settings.same_problem is None and settings.same_problem_lineage is None and not settings.same_answer_lineage:
        return None
    return Limits(threshold=settings.same_problem, lineage=settings.same_problem_lineage,
                  same_answer=settings.same_answer_lineage)


def _filter_pool(table: pl.DataFrame, settings: SelectSettings, guards: list[str]) -> _Filtering:
    """The filters before ranking: rounds, ``guards`` (by the ``GUARD`` column), ``ifd_filter``, floors."""
    filtering = _Filtering(table)
    if settings.rounds is not None:
        filtering.apply("round_not_selected", pl.col("round").is_in(settings.rounds))
    for name in guards:
        filtering.apply(name, pl.col(GUARD).is_null() | (pl.col(GUARD) != name))
    if settings.require_check and "answer_check_passed" in table.columns:  # items without a check stay
        filtering.apply("answer_check_failed", pl.col("answer_check_passed").is_null() | pl.col("answer_check_passed"))
    if settings.drop_wrong and "verify_verdict" in table.columns:  # items never verified stay
        filtering.apply("verified_wrong", pl.col("verify_verdict").is_null() | (pl.col("verify_verdict") != "wrong"))
    if settings.min_confidence is not None and "verify_confidence" in table.columns:
        filtering.apply("below_min_confidence", pl.col("verify_confidence") >= settings.min_confidence)
    if settings.ifd_filter:
        filtering.apply("ifd_above_1", pl.col("ifd").is_not_null() & (pl.col("ifd") <= 1.0))
    if settings.min_loss_instruction is not None:
        # polars orders NaN above every number, so NaN is refused explicitly
        filtering.apply("loss_instruction_below_floor",
                        (pl.col("loss_instruction") >= settings.min_loss_instruction)
                        & pl.col("loss_instruction").is_not_nan())
    if settings.min_mnd is not None:
        filtering.apply("mnd_below_floor", (pl.col("mnd") >= settings.min_mnd) & pl.col("mnd").is_not_nan())
    return filtering


VOUCHING = {"verify_verdict", "answer_check_passed"}  # the columns that can vouch for an item


def vouched(columns: Sequence[str]) -> pl.Expr:
    """Items something vouched for: the verify stage's verdict ``right``, or an answer check that passed where the
    verify stage did not check the content itself (an AutoIF item's check is its constraint's, of the answer's form:
    when verify checked its content, that verdict decides); a table without either column vouches for nothing."""
    checks = []
    if "verify_verdict" in columns:
        checks.append(pl.col("verify_verdict") == "right")
    if "answer_check_passed" in columns:
        passed = pl.col("answer_check_passed")
        if "verify_method" in columns:
            passed = passed & ~pl.col("verify_method").is_in(CONTENT_METHODS).fill_null(False)
        checks.append(passed)
    return pl.any_horizontal(checks).fill_null(False) if checks else pl.lit(False)


def _rank(filtering: _Filtering, settings: SelectSettings) -> pl.DataFrame:
    """The filtered pool ranked: the vouched items (:func:`vouched`) first, each part best metric first (ties by
    id) or shuffled (``random``); items without the metric and, with a threshold, those below it are removed."""
    metric = settings.metric
    first = (~vouched(filtering.pool.columns)).alias("_unvouched")  # False sorts first
    if metric == "random":
        order = list(range(filtering.pool.height))
        random.Random(settings.seed).shuffle(order)
        ranked = (filtering.pool.with_columns(first, _rank=pl.Series(order, dtype=pl.Int64))
                  .sort("_unvouched", "_rank").drop("_unvouched", "_rank"))
    else:
        value = pl.col(metric)
        is_float = filtering.pool.schema[metric].is_float()
        filtering.apply("no_metric", value.is_not_null() & (value.is_not_nan() if is_float else pl.lit(True)))
        ranked = (filtering.pool.with_columns(first).sort(["_unvouched", metric, "id"], descending=[False, True, False])
                  .drop("_unvouched"))
    if settings.threshold is not None:
        filtering.pool = ranked
        filtering.apply("below_threshold", pl.col(metric) >= settings.threshold)
        ranked = filtering.pool
    return ranked


def _budget(ranked: pl.DataFrame, settings: SelectSettings) -> int:
    return math.ceil(settings.top_fraction * ranked.height) if settings.threshold is None else ranked.height


def _only_vouched(filtering: _Filtering, ranked: pl.DataFrame, settings: SelectSettings) -> pl.DataFrame:
    """``ranked`` less the items nothing vouched for (``require_vouched``), once the budget is set on all of them."""
    if not settings.require_vouched or not VOUCHING & set(ranked.columns):  # a table nothing checked: no pipeline's
        return ranked
    filtering.pool = ranked
    filtering.apply("not_vouched", vouched(ranked.columns))
    return filtering.pool


def _without_near_duplicates(filtering: _Filtering, ranked: pl.DataFrame, settings: SelectSettings,
                             texts: TextReader | None, budget: int) -> pl.DataFrame:
    """``ranked`` less the items whose instruction or answer nearly repeats a better ranked kept one's; the walk
    stops once the budget is kept, unless the diversity walk still has to choose among what follows."""
    if settings.near_duplicates is None or texts is None or ranked.height == 0:
        return ranked
    stop = budget if settings.diversity_threshold is None else None
    dropped = walk_near_duplicates(ranked["id"].to_list(), texts, settings.near_duplicates, stop)
    filtering.pool = ranked
    filtering.apply("near_duplicate_of_selected", ~pl.col("id").is_in(dropped))
    return filtering.pool


def _without_same_problems(filtering: _Filtering, ranked: pl.DataFrame, settings: SelectSettings,
                           embeddings: Vectors | None, budget: int) -> pl.DataFrame:
    """``ranked`` less the items that are the same problem as a better ranked kept one
    (:mod:`evolforge.steps.select.same_problem`), each with the id of that one (``same_problem_as``); the walk stops
    once the budget is kept, unless the diversity walk still has to choose among what follows."""
    limits = problem_limits(settings)
    if limits is None or ranked.height == 0:
        return ranked
    stop = budget if settings.diversity_threshold is None else None
    roots = root_codes(ranked[ROOT] if ROOT in ranked.columns else None, ranked.height)
    vectors = embeddings.take(ranked["id"]) if limits.by_embedding else None
    walk = walk_same_problems(vectors, roots, limits, stop, traits=traits_of(ranked))
    ids = ranked["id"]
    repeats = pl.DataFrame({"_row": [d.row for d in walk.dropped], "_reason": [d.reason for d in walk.dropped],
                            "same_problem_as": [ids[d.same_as] for d in walk.dropped]},
                           schema={"_row": pl.UInt32, "_reason": pl.String, "same_problem_as": pl.String})
    numbered = ranked.with_row_index("_row").join(repeats, on="_row", how="left", maintain_order="left")
    left = ranked.height
    for reason in REASONS:
        dropped = numbered.filter(pl.col("_reason") == reason)
        left -= dropped.height
        filtering.record(reason, dropped, left, extra=["same_problem_as"])
    filtering.pool = numbered.filter(pl.col("_reason").is_null()).drop("_row", "_reason", "same_problem_as")
    return filtering.pool


def _take(ranked: pl.DataFrame, settings: SelectSettings, embeddings: Vectors | None,
          budget: int) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    """The chosen rows of ``ranked`` (top fraction, optionally by the diversity walk), and a mask over
    ``ranked`` of the rows each of those two cuts left out."""
    if settings.diversity_threshold is None:
        return ranked.head(budget), {"outside_top_fraction": np.arange(ranked.height) >= budget}
    kept = diverse_walk(embeddings.take(ranked["id"]), settings.diversity_threshold, budget)
    chosen = ranked[kept] if kept else ranked.head(0)
    walked = np.zeros(ranked.height, dtype=bool)  # refused as too close, vs never reached (budget full)
    walked[: (kept[-1] + 1 if len(kept) == budget and kept else ranked.height)] = True
    is_kept = np.zeros(ranked.height, dtype=bool)
    is_kept[kept] = True
    return chosen, {"too_close_to_selected": walked & ~is_kept, "outside_top_fraction": ~walked}


def _record_cuts(filtering: _Filtering, ranked: pl.DataFrame, parts: dict[str, np.ndarray],
                 chosen: pl.DataFrame, threshold: float | None) -> None:
    """Count the rows the final cuts (``parts``, from :func:`_take`) left out of ``ranked``."""
    for name, mask in parts.items():
        if name == "outside_top_fraction" and threshold is not None:
            continue  # a threshold keeps everything above it: there is no budget
        filtering.record(name, ranked.filter(pl.Series(mask, dtype=pl.Boolean)), None)
    # the diversity walk and the budget act together: both report the final count
    for step in filtering.steps:
        if step["left"] is None:
            step["left"] = chosen.height


def _selection_summary(table: pl.DataFrame, chosen: pl.DataFrame, ranked: pl.DataFrame, steps: list[dict],
                       metric: str, embeddings: Vectors | None) -> dict:
    """Counts per filter, the filter that emptied the selection, selected per round, metric means, diversity."""
    summary = {"metric": metric, "items": table.height, "selected": chosen.height, "filters": steps,
               "removed_by_filter": {s["filter"]: s["removed"] for s in steps if s["removed"]},
               "emptied_by": None}
    if chosen.height == 0:
        summary["emptied_by"] = next((s["filter"] for s in steps if s["removed"] and s["left"] == 0),
                                     "empty input" if table.height == 0 else steps[-1]["filter"] if steps else None)
    summary["selected_by_round"] = {str(r): int(n) for r, n in chosen.group_by("round").len().sort("round").iter_rows()}
    if metric != "random" and chosen.height:
        summary[f"selected_mean_{metric}"] = float(chosen[metric].mean())
        summary[f"pool_mean_{metric}"] = float(ranked[metric].mean())
    summary.update(set_diversity(chosen, table, embeddings))
    return summary


def choose(table: pl.DataFrame, settings: SelectSettings, guards: list[str],
           embeddings: Vectors | None = None, texts: TextReader | None = None) -> Selection:
    """:func:`select_items` on a table that has the helper columns (:func:`with_helpers`), ``guards`` the names of
    the guards that apply to it, ``texts`` what reads the items' texts for the near-duplicate walk (None: no
    walk); the chosen rows keep every column but the helpers."""
    _check_settings(settings, embeddings)
    filtering = _filter_pool(table, settings, guards)
    ranked = _rank(filtering, settings)
    budget = _budget(ranked, settings)
    ranked = _only_vouched(filtering, ranked, settings)
    ranked = _without_near_duplicates(filtering, ranked, settings, texts, budget)
    candidates = ranked  # what the same-problem walk chooses among: the problems counted in the pool
    ranked = _without_same_problems(filtering, ranked, settings, embeddings, budget)
    chosen, parts = _take(ranked, settings, embeddings, budget)
    _record_cuts(filtering, ranked, parts, chosen, settings.threshold)
    summary = _selection_summary(table, chosen, ranked, filtering.steps, settings.metric, embeddings)
    summary.update(problem_counts(chosen, candidates, embeddings, problem_limits(settings)))
    excluded = pl.concat(filtering.excluded, how="diagonal_relaxed") if filtering.excluded else pl.DataFrame(
        schema={"id": pl.String, "round": pl.Int64, "skip_reason": pl.String})
    return Selection(chosen.drop(*HELPERS, strict=False), summary, excluded)


def select_items(table: pl.DataFrame, settings: SelectSettings, *, embeddings: Vectors | None = None) -> Selection:
    """Select from ``table`` (one row per item, with the metric's column) as ``settings`` (params.yaml
    ``select``) say. A threshold wins over the top fraction. ``embeddings`` are needed for
    ``diversity_threshold`` and, when given, add the within-set distances to the summary.

    >>> t = pl.DataFrame({"id": ["a", "b", "c", "d"], "round": [1, 1, 2, 2], "ifd": [0.5, 1.2, 0.9, 0.7],
    ...                   "ic_ifd": [0.3, 0.6, 0.4, None]})
    >>> select_items(t, SelectSettings("ic_ifd", top_fraction=0.5)).chosen["id"].to_list()
    ['b', 'c']
    """
    texts = table_texts(table) if {"instruction", "output"} <= set(table.columns) else None
    return choose(with_helpers(table), settings, applicable(table), embeddings, texts)
