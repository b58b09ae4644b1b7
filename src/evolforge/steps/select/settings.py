"""``select`` (what is kept) and ``card`` (the dataset card written with the selection)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from annotated_types import Ge, Le

from evolforge.config.bounds import Fraction, NonEmptyStr, NonNegativeInt, ParamsError, Probability


@dataclass
class SelectSettings:
    """``select``."""

    metric: Literal["ic_ifd", "ifd", "difficulty_score", "difficulty_expected", "random"] = field(
        default="ic_ifd", metadata={
        "help": "what ranks the items: ic_ifd | ifd | difficulty_score | difficulty_expected | random",
        "paper": "ic_ifd (SLM)"})
    top_fraction: Fraction | None = field(default=0.25, metadata={
        "help": "keep this share of the complete items, best first",
        "paper": "0.25 (SLM)"})
    threshold: float | None = field(default=None, metadata={
        "help": "keep items with metric >= threshold (wins over top_fraction)"})
    ifd_filter: bool = field(default=False, metadata={"help": "drop IFD > 1 (the IFD paper does)"})
    rounds: list[int] | None = field(default=None, metadata={
        "help": "the rounds to select from (0 = the seeds); null = every round answered"})
    seed: NonNegativeInt = field(default=0, metadata={"help": "for metric random"})
    min_loss_instruction: Annotated[float, Ge(0)] | None = field(default=None, metadata={
        "help": "floor on L(Q), nats per token"})
    min_mnd: Annotated[float, Ge(0), Le(4)] | None = field(default=None, metadata={
        "help": "floor on the pool MND (squared L2 of unit embeddings)"})
    diversity_threshold: Annotated[float, Ge(0), Le(4)] | None = field(default=None, metadata={
        "help": "DEITA walk: keep if d^2 to every kept item exceeds it"})
    require_check: bool = field(default=False, metadata={
        "help": "drop items whose answer fails its answer check (items without one stay)"})
    drop_wrong: bool = field(default=True, metadata={
        "help": "drop items the verify stage found wrong (skip reason verified_wrong)"})
    require_vouched: bool = field(default=True, metadata={
        "help": "select only items vouched for: verify_verdict right, or an answer check passed where verify did not "
                "check the content (an AutoIF constraint checks the form only) (not_vouched); the others count in "
                "the top fraction's base but may not fill it. false lets unsure and unverified items in, ranked "
                "after the vouched ones"})
    min_confidence: Probability | None = field(default=None, metadata={
        "help": "floor on verify_confidence, the verify stage's estimated probability that the answer is right; "
                "items without one (unverified, or unsure for want of evidence) go too; null = none"})
    near_duplicates: Fraction | None = field(default=None, metadata={
        "help": "no two selected items whose instructions (+ input) or answers reach this Jaccard similarity of "
                "word 3-grams: the better ranked one stays (near_duplicate_of_selected); null = off",
        "paper": "none (the shipped params.yaml: 0.7, dedup.threshold's value)"})
    same_problem: Annotated[float, Ge(0), Le(4)] | None = field(default=None, metadata={
        "help": "no two selected items whose question embeddings (data/diversity) are at most this squared distance "
                "apart (d^2 = 2 - 2 cos of unit vectors): the same problem, the better ranked stays "
                "(same_problem_as_selected); calibrated by bench/same_problem_calibration.py; null = off",
        "paper": "none"})
    same_problem_lineage: Annotated[float, Ge(0), Le(4)] | None = field(default=None, metadata={
        "help": "the same for two items of one seed (root_id: an item and its ancestor), which a rewrite that "
                "rewords its parent or hands over its method stays close to (same_problem_in_lineage); null = off",
        "paper": "none"})
    same_answer_lineage: bool = field(default=False, metadata={
        "help": "two items of one seed whose checked results are equal (the number verify vouched for: numeric "
                "right, or a seed's number check passed), the later round's question asking for no more results, "
                "are the same problem too: the better ranked stays (same_answer_in_lineage); needs no embeddings",
        "paper": "none"})

    def __post_init__(self) -> None:
        if self.threshold is None and self.top_fraction is None:
            raise ParamsError(["select: set top_fraction or threshold"])
        if self.threshold is not None and self.metric == "random":
            raise ParamsError(["select.threshold: a threshold makes no sense with metric random"])


@dataclass
class CardSettings:
    """``card`` (all optional): the dataset card written with the selection."""

    license: NonEmptyStr = field(default="other", metadata={
        "help": "an identifier from the Hub's list (apache-2.0, cc-by-4.0, ...); depends on seeds and models"})
    language: list[str] = field(default_factory=lambda: ["en"], metadata={"help": "the card's language codes"})
    task_categories: list[str] = field(default_factory=lambda: ["text-generation"], metadata={
        "help": "the card's Hub task categories"})
    pretty_name: NonEmptyStr = field(default="evolforge evolved instructions", metadata={"help": "the card's title"})
    limitations: str | None = field(default=None, metadata={
        "help": "extra known limitations, appended to the standard ones"})
