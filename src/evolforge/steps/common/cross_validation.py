"""Cross-validation of model-written functions against model-written cases (AutoIF's step 3, the reference
code's rule): a case is kept if any function reproduces its expected result, a function if its accuracy on the
kept cases reaches ``min_accuracy``. AutoIF keeps a constraint's verification functions by it; the verify step
keeps an instruction's test asserts by it, with the answer and independently sampled solutions as the functions
(every case expected to pass).

>>> cross_validate([[True, False], [True, True]], [True, False], min_accuracy=0.8).functions_kept
[True, False]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass
class CrossValidation:
    cases_kept: list[bool]
    accuracy: list[float | None]  # per function, on the kept cases; None when no case was kept
    functions_kept: list[bool]


def cross_validate(matrix: Sequence[Sequence[bool | None]], expected: Sequence[bool],
                   min_accuracy: float = 0.8) -> CrossValidation:
    """``matrix[f][c]``: what function f returned on case c (None: no bool). A case is kept if any function
    reproduces its expected result; a function if its accuracy on the kept cases is >= ``min_accuracy``."""
    cases_kept = [any(row[c] is exp for row in matrix) for c, exp in enumerate(expected)]
    kept_idx = [c for c, k in enumerate(cases_kept) if k]
    accuracy = [sum(row[c] is expected[c] for c in kept_idx) / len(kept_idx) if kept_idx else None for row in matrix]
    return CrossValidation(cases_kept, accuracy, [a is not None and a >= min_accuracy for a in accuracy])
