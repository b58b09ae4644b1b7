"""Plot data that stages write under metrics/plots/ (DVC plots, one JSON list of rows per plot)."""

from __future__ import annotations

import numpy as np
import polars as pl


def histogram(values: pl.Series, bins: int = 20) -> list[dict]:
    """Rows ``{bin_low, bin_high, count}`` over the non-null, non-NaN values; [] when there are none."""
    x = values.drop_nulls().drop_nans().to_numpy()
    if x.size == 0:
        return []
    counts, edges = np.histogram(x, bins=bins)
    return [{"bin_low": float(lo), "bin_high": float(hi), "count": int(c)} for lo, hi, c in zip(edges[:-1], edges[1:], counts)]
