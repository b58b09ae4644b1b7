"""``dedup``: near-duplicate instructions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from annotated_types import Ge, Le

from evolforge.config.bounds import NonNegativeInt, PositiveInt


@dataclass(frozen=True)
class DedupSettings:
    """``dedup``."""

    threshold: Annotated[float, Ge(0.05), Le(1.0)] = field(default=0.7, metadata={
        "help": "Jaccard of word-shingle sets: at or above, duplicates"})
    shingle_size: PositiveInt = field(default=3, metadata={
        "help": "words per shingle (instructions are short: 3 keeps reorderings apart)"})
    num_perm: Annotated[int, Ge(16), Le(1024)] = field(default=128, metadata={"help": "MinHash permutations"})
    seed: NonNegativeInt = field(default=1, metadata={"help": "MinHash permutation seed"})
