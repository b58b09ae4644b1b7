"""``evolver_analysis``: why small evolvers win."""

from __future__ import annotations

from dataclasses import dataclass, field

from evolforge.config.bounds import ParamsError, PositiveInt


@dataclass
class AnalysisSettings:
    """``evolver_analysis``: why small evolvers win (top-token probabilities, distinct method keywords)."""

    items: PositiveInt = field(default=16, metadata={"help": "seeds analysed (the first ones of data/seed)"})
    first_tokens: PositiveInt | None = field(default=5, metadata={
        "help": "tokens per output whose probability counts; null = the whole output"})
    max_tokens: PositiveInt = field(default=32, metadata={
        "help": "greedy tokens generated for the probability analysis (>= first_tokens)",
        "unit": "tokens"})
    bins: PositiveInt = field(default=10, metadata={"help": "histogram bins of the top-token probabilities"})
    evolvers: list[str] | None = field(default=None, metadata={
        "help": "extra models (local folders or hub ids) to compare with roles.evolver"})
    keyword_max_tokens: PositiveInt = field(default=16, metadata={
        "help": "greedy tokens of each method-keyword answer",
        "unit": "tokens"})
    seed: int = field(default=0, metadata={"help": "the seed of the sampled evolutions"})

    def __post_init__(self) -> None:
        if self.first_tokens is not None and self.first_tokens > self.max_tokens:
            raise ParamsError([f"evolver_analysis.first_tokens: {self.first_tokens} is more than max_tokens "
                               f"({self.max_tokens})"])
