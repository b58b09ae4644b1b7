"""``select`` (what is kept) and ``card`` (the dataset card written with the selection)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from annotated_types import Ge, Le

from evolforge.config.bounds import Fraction, NonEmptyStr, NonNegativeInt, ParamsError, Probability


@dataclass
class SelectSettings:
    """``select``."""

    metric: Literal["ic_ifd", "ifd", "difficulty_score", "difficulty_expected", "random"] = "ic_ifd"
    top_fraction: Fraction | None = 0.25  # SLM paper keeps the top 25 %
    threshold: float | None = None  # keep items with metric >= threshold (wins over top_fraction)
    ifd_filter: bool = False  # drop IFD > 1 (the IFD paper does)
    rounds: list[int] | None = None  # null = every round
    seed: NonNegativeInt = 0  # for metric random
    min_loss_instruction: Annotated[float, Ge(0)] | None = None  # floor on L(Q), nats per token
    min_mnd: Annotated[float, Ge(0), Le(4)] | None = None  # floor on the pool MND (squared L2 of unit embeddings)
    # DEITA walk: keep if d^2 to every kept item exceeds it
    diversity_threshold: Annotated[float, Ge(0), Le(4)] | None = None
    require_check: bool = False  # drop items whose answer fails its answer check (items without one stay)
    drop_wrong: bool = field(default=True, metadata={
        "help": "drop items the verify stage found wrong (skip reason verified_wrong)"})
    min_confidence: Probability | None = field(default=None, metadata={
        "help": "floor on verify_confidence, the verify stage's estimated probability that the answer is right; "
                "items without one stay; null = none"})
    near_duplicates: Probability | None = field(default=None, metadata={
        "help": "no two selected items whose instructions (+ input) or answers reach this Jaccard similarity of "
                "word 3-grams: the better ranked one stays (near_duplicate_of_selected); null = off",
        "paper": "none (the shipped params.yaml: 0.7, dedup.threshold's value)"})

    def __post_init__(self) -> None:
        if self.threshold is None and self.top_fraction is None:
            raise ParamsError(["select: set top_fraction or threshold"])
        if self.threshold is not None and self.metric == "random":
            raise ParamsError(["select.threshold: a threshold makes no sense with metric random"])


@dataclass
class CardSettings:
    """``card`` (all optional): the dataset card written with the selection."""

    # an identifier from the Hub's list (apache-2.0, cc-by-4.0, ...); depends on seeds and models
    license: NonEmptyStr = "other"
    language: list[str] = field(default_factory=lambda: ["en"])
    task_categories: list[str] = field(default_factory=lambda: ["text-generation"])
    pretty_name: NonEmptyStr = "evolforge evolved instructions"
    limitations: str | None = None  # extra known limitations, appended to the standard ones
