"""``evolver_analysis``: why small evolvers win."""

from __future__ import annotations

from dataclasses import dataclass

from evolforge.config.bounds import ParamsError, PositiveInt


@dataclass
class AnalysisSettings:
    """``evolver_analysis``: why small evolvers win (top-token probabilities, distinct method keywords)."""

    items: PositiveInt = 16  # seeds analysed (the first ones of data/seed)
    first_tokens: PositiveInt | None = 5  # tokens per output whose probability counts; null = the whole output
    max_tokens: PositiveInt = 32  # greedy tokens generated for the probability analysis (>= first_tokens)
    bins: PositiveInt = 10
    evolvers: list[str] | None = None  # extra models (local folders or hub ids) to compare with roles.evolver
    keyword_max_tokens: PositiveInt = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.first_tokens is not None and self.first_tokens > self.max_tokens:
            raise ParamsError([f"evolver_analysis.first_tokens: {self.first_tokens} is more than max_tokens "
                               f"({self.max_tokens})"])
