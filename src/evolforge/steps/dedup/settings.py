"""``dedup``: near-duplicate instructions.

A dataclass whose fields hold the defaults (the one place they live) and the types: bounds from
:mod:`evolforge.config.bounds`, allowed values as ``Literal``. :mod:`evolforge.config.schema` maps the section
to it; this module imports nothing but :mod:`evolforge.config`, so checking params loads no step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from annotated_types import Ge, Le

from evolforge.config.bounds import NonNegativeInt, PositiveInt


@dataclass(frozen=True)
class DedupSettings:
    """``dedup``."""

    threshold: Annotated[float, Ge(0.05), Le(1.0)] = 0.7  # Jaccard of word-shingle sets: at or above, duplicates
    shingle_size: PositiveInt = 3  # words per shingle (instructions are short: 3 keeps reorderings apart)
    num_perm: Annotated[int, Ge(16), Le(1024)] = 128  # MinHash permutations
    seed: NonNegativeInt = 1  # MinHash permutation seed
