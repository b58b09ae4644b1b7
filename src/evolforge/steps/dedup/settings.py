"""``dedup``: near-duplicate instructions."""

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
