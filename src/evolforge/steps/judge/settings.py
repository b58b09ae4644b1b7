"""``judge``: difficulty levels and scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from evolforge.config.bounds import ParamsError, PositiveInt


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
