"""How varied a selection is, for the select stage's summary: the share of distinct instruction texts (by the
ranking table's ``TEXT`` digests, :mod:`evolforge.steps.select.narrow`), the selected items' MND against the pool
and, with embeddings, their nearest-neighbour distances within the selection and the distinct problems among them
and among the items the selection chose from (:func:`problem_counts`)."""

from __future__ import annotations

import numpy as np
import polars as pl

from evolforge.score.neighbors import neighbor_stats
from evolforge.steps.select.checked import ANSWER
from evolforge.steps.select.embeddings import EmbeddingFile, Embeddings
from evolforge.steps.select.narrow import ASKS, MARKS, ROOT, TEXT
from evolforge.steps.select.same_problem import Limits, Traits, count_problems, root_codes

Vectors = Embeddings | EmbeddingFile


def distinct_ratio(rows: pl.DataFrame) -> float | None:
    """Distinct normalised instruction (+ input) texts per row (by their ``TEXT`` digests); 1.0 = no two rows ask
    the same thing."""
    if rows.height == 0 or TEXT not in rows.columns:
        return None
    return np.unique(rows[TEXT].to_numpy()).size / rows.height


# selected items whose nearest neighbours within the selection are searched exactly; a larger selection is
# measured on a fixed sample of this many (the search compares all pairs: 50k items, about 15 s of CPU at 64-d)
WITHIN_MAX = 50_000


def set_diversity(chosen: pl.DataFrame, pool: pl.DataFrame, embeddings: Vectors | None) -> dict:
    """Distinct-instruction ratio of the selection and the pool; mean MND of the selected items against the
    pool (the ``mnd`` column) and, with embeddings, nearest-neighbour distances within the selection (within a
    fixed sample of :data:`WITHIN_MAX` of its items when it has more, ``selected_mnd_within_sample`` saying so)."""
    out: dict = {"distinct_instruction_ratio_selected": distinct_ratio(chosen),
                 "distinct_instruction_ratio_pool": distinct_ratio(pool)}
    if "mnd" in chosen.columns and chosen.height:
        mnd = chosen["mnd"].drop_nulls().drop_nans()
        out["selected_mean_mnd_vs_pool"] = float(mnd.mean()) if mnd.len() else None
    if embeddings is not None and chosen.height > 1:
        ids = chosen["id"]
        if ids.len() > WITHIN_MAX:  # all pairs is quadratic: a fixed sample of the selection, in rank order
            ids = ids.gather(np.sort(np.random.default_rng(0).choice(ids.len(), WITHIN_MAX, replace=False)))
            out["selected_mnd_within_sample"] = WITHIN_MAX
        within = neighbor_stats(embeddings.take(ids)).min_distance
        out["selected_mean_mnd_within"] = float(np.mean(within))
        out["selected_min_mnd_within"] = float(np.min(within))
    return out


def traits_of(rows: pl.DataFrame) -> Traits | None:
    """The rows' checked results, rounds, results asked and restrictions (the same-problem walk's guard and
    backstop), from the ranking table's helper columns (no checked result where it lacks the verify stage's); None
    where it lacks the texts' helpers."""
    if ASKS not in rows.columns or MARKS not in rows.columns:
        return None
    values = rows[ANSWER].cast(pl.Float64) if ANSWER in rows.columns else pl.Series([None] * rows.height,
                                                                                      dtype=pl.Float64)
    return Traits(values=values.fill_null(float("nan")).to_numpy(), rounds=rows["round"].to_numpy(),
                  asks=rows[ASKS].to_numpy(), marks=rows[MARKS].to_numpy())


def problem_counts(chosen: pl.DataFrame, candidates: pl.DataFrame, embeddings: Vectors | None,
                   limits: Limits | None) -> dict:
    """How many distinct problems (:func:`~evolforge.steps.select.same_problem.count_problems`, by ``limits``) the
    selection holds and the ``candidates`` held (the ranked items the same-problem walk chose among); null without
    limits, without embeddings for limits by distance, or past :data:`WITHIN_MAX` items (all pairs are compared)."""
    def count(rows: pl.DataFrame) -> int | None:
        if limits is None or (limits.by_embedding and embeddings is None) or rows.height > WITHIN_MAX:
            return None
        if not rows.height:
            return 0
        roots = root_codes(rows[ROOT] if ROOT in rows.columns else None, rows.height)
        vectors = np.asarray(embeddings.take(rows["id"])) if limits.by_embedding else None
        return count_problems(vectors, roots, limits, traits=traits_of(rows))

    return {"distinct_problems_selected": count(chosen), "distinct_problems_candidates": count(candidates)}
