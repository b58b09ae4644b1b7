"""Histograms with readable bins: edges on a round step (1, 2, 2.5 or 5 times a power of ten).

Plot data for DVC and the report: ``[{"bin_low": 0.45, "bin_high": 0.5, "count": 3}, ...]``. Edges from
``numpy.histogram(x, bins=20)`` print as 0.48697741213187384; a round step prints as 0.45.

>>> histogram([0.487, 0.52, 0.61, 1.07], bins=4)[:2]
[{'bin_low': 0.4, 'bin_high': 0.6, 'count': 2}, {'bin_low': 0.6, 'bin_high': 0.8, 'count': 1}]
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

STEPS = (1.0, 2.0, 2.5, 5.0, 10.0)


def nice_step(span: float, bins: int) -> float:
    """The smallest round step (1, 2, 2.5, 5 x 10^k) that covers ``span`` in at most ``bins`` bins."""
    raw = span / bins
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in STEPS if m * power >= raw * (1 - 1e-12))


def _clean(x: float) -> float:
    # 0.1 * 3 is 0.30000000000000004: 12 significant digits remove the binary noise, keep the round value
    return float(f"{x:.12g}")


def histogram(values: Iterable[float | None] | np.ndarray, bins: int = 20) -> list[dict]:
    """Counts over round-step bins that cover the finite values (None and NaN are left out); [] when none.

    At most ``bins + 1`` bins; the last bin includes its upper edge. A numpy array (a table's column, nulls as
    NaN) is binned as it is, without a Python object per value.
    """
    if isinstance(values, np.ndarray):
        x = values.astype(float, copy=False)
    else:
        x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return []
    lo, hi = float(x.min()), float(x.max())
    step = nice_step(hi - lo if hi > lo else max(abs(lo), 1.0), bins)
    start = math.floor(lo / step) * step
    n = max(1, math.ceil((hi - start) / step - 1e-9))
    if start + n * step < hi:  # float rounding left the maximum outside
        n += 1
    edges = [_clean(start + i * step) for i in range(n + 1)]
    counts, _ = np.histogram(x, bins=np.asarray(edges))
    return [{"bin_low": a, "bin_high": b, "count": int(c)} for a, b, c in zip(edges[:-1], edges[1:], counts)]
