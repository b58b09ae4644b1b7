"""``judge``: difficulty levels and scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from evolforge.config.bounds import ParamsError, PositiveInt


@dataclass
class JudgeSettings:
    """``judge``."""

    score_prompt: Literal["paper", "code"] = field(default="paper", metadata={
        "help": "paper (the SLM paper's Fig. 19 layout) | code (the reference code's wording)"})
    max_tokens: PositiveInt | None = field(default=None, metadata={"help": "null = roles.judge's", "unit": "tokens"})
    constrain: bool = field(default=True, metadata={
        "help": "true: answers held to the five labels / the numbers 0-100 (constrained decoding, guided choice or a "
                "response_format schema, by backend); false: free text read by the parser, as the papers judge"})
    probabilities: bool = field(default=False, metadata={
        "help": "true: each allowed answer scored by its likelihood (hf, vllm; evolforge.llm.ranking): the most "
                "likely answer, and the expected score / level under the model's probabilities (difficulty_expected, "
                "level_expected); false: one decoded answer, expected columns null"})

    def __post_init__(self) -> None:
        if self.probabilities and not self.constrain:
            raise ParamsError(["judge.probabilities: scores the allowed answers, so it needs judge.constrain: true"])
