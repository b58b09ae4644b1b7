"""The score stage's stored precision (score/precision.py): last-bit differences between machines vanish."""

from __future__ import annotations

import io

import polars as pl
import pytest

from evolforge.io.columns import SCORE_VALUES
from evolforge.score.formulas import scores_row
from evolforge.score.precision import LOSS_DIGITS, RATIO_DIGITS, significant, stored_scores


def table(losses: list[tuple[float | None, float | None, float | None]], reasons=None) -> pl.DataFrame:
    reasons = reasons or [None] * len(losses)
    rows = [scores_row(q, 5, a, 7, aq, 8, reason) for (q, a, aq), reason in zip(losses, reasons)]
    return pl.from_dicts(rows, schema=SCORE_VALUES)


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


@pytest.mark.parametrize("value, digits, expected", [
    (2.718281828, 4, 2.718), (0.000123456, 3, 0.000123), (12345.678, 4, 12350.0), (-1.23456, 2, -1.2),
    (0.0, 4, 0.0), (None, 4, None)])
def test_significant(value, digits, expected):
    assert significant(value, digits) == expected


def test_last_bit_differences_store_the_same_bytes():
    """The same items scored on two machines (losses apart by ~1e-7 relative) store identical Parquet."""
    here = table([(2.4137712, 1.8523101, 1.4412307), (3.0912214, 0.9714406, 0.6603318)])
    there = table([(2.4137714, 1.8523099, 1.4412309), (3.0912212, 0.9714407, 0.6603317)])
    assert not here.equals(there)
    assert parquet_bytes(stored_scores(here)) == parquet_bytes(stored_scores(there))


def test_ratios_follow_from_the_stored_losses():
    stored = stored_scores(table([(2.4137712, 1.8523101, 1.4412307)])).row(0, named=True)
    assert stored["loss_instruction"] == 2.414 and stored["loss_response"] == 1.852
    assert stored["loss_response_given_instruction"] == 1.441
    assert stored["ifd"] == significant(1.441 / 1.852, RATIO_DIGITS)
    assert stored["ic_ifd"] == significant(1.441 / (2.414 * 1.852), RATIO_DIGITS)
    assert LOSS_DIGITS == 4 and RATIO_DIGITS == 6  # what docs/explanation/scoring.md states


def test_nulls_and_reasons_and_other_columns_are_kept():
    scores = table([(None, 1.5, 1.2), (2.0, 0.0, 1.0), (1.0, 2.0, 3.0)],
                   reasons=[None, None, "prompt longer than max_length=512 (Cherry skips the item)"])
    scores = scores.with_columns(pl.Series("id", ["a", "b", "c"]))
    stored = stored_scores(scores)
    assert stored.columns == scores.columns and stored["id"].to_list() == ["a", "b", "c"]
    assert stored["null_reason"].to_list() == scores["null_reason"].to_list()
    assert stored["ic_ifd"][0] is None and stored["ifd"][1] is None
    assert stored["n_tokens_response"].to_list() == [7, 7, 7]
    assert stored_scores(scores.clear()).height == 0
