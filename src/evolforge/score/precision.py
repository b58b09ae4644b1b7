"""The precision at which the score stage stores its floating-point results (docs/explanation/scoring.md
"Stored precision").

A forward pass in fp32 gives losses that differ in their last bits from one CPU (or thread count, or BLAS
kernel) to another, about 1e-6 relative, so full-precision scores make ``data/scores`` and everything
downstream hash differently on each machine. The stage stores each loss at ``LOSS_DIGITS`` significant
digits and recomputes IFD and IC-IFD from the stored losses (:func:`evolforge.score.formulas.scores_row`, the
same rules and nulls), so the ratios follow deterministically from the stored losses; they and the means
in ``metrics/score.json`` are kept at ``RATIO_DIGITS``. A loss within that noise of a rounding boundary can
still round apart: about 2e-6 / 1e-4 .. 1e-3 = 0.2 % to 2 % of such losses, rarely more than a handful of
items in a run, which only ever change when a machine's arithmetic does.
"""

from __future__ import annotations

import math

import polars as pl

from evolforge.io.columns import SCORE_VALUES
from evolforge.score.formulas import scores_row

LOSS_DIGITS = 4  # significant digits of each stored loss: far finer than what separates items in a ranking
RATIO_DIGITS = 6  # significant digits of IFD, IC-IFD and the metrics' means (from stored losses: exact already)
LOSSES = ("loss_instruction", "loss_response", "loss_response_given_instruction")


def significant(value: float | None, digits: int) -> float | None:
    """``value`` rounded to ``digits`` significant digits (decimal rounding of the binary value, the same on
    every machine); None, NaN and infinities unchanged.

    >>> significant(2.718281828, 4), significant(0.000123456, 3), significant(None, 4)
    (2.718, 0.000123, None)
    """
    if value is None or not math.isfinite(value) or value == 0.0:
        return value
    return float(f"{value:.{digits}g}")


def stored_scores(scores: pl.DataFrame) -> pl.DataFrame:
    """``scores`` (``SCORE_VALUES`` columns, plus any others left as they are) with the losses at
    ``LOSS_DIGITS`` and IFD / IC-IFD recomputed from them at ``RATIO_DIGITS``; a row keeps its null_reason."""
    rows = []
    for row in scores.select(list(SCORE_VALUES)).iter_rows(named=True):
        losses = {name: significant(row[name], LOSS_DIGITS) for name in LOSSES}
        new = scores_row(losses["loss_instruction"], row["n_tokens_instruction"], losses["loss_response"],
                         row["n_tokens_response"], losses["loss_response_given_instruction"],
                         row["n_tokens_response_given_instruction"], row["null_reason"])
        rows.append({**new, "ifd": significant(new["ifd"], RATIO_DIGITS),
                     "ic_ifd": significant(new["ic_ifd"], RATIO_DIGITS)})
    stored = pl.from_dicts(rows, schema=SCORE_VALUES) if rows else scores.select(list(SCORE_VALUES)).clear()
    return scores.with_columns(stored)
