"""``compare``: win-tie-lose judging of two models' answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from evolforge.config.bounds import NonEmptyStr, PositiveInt


@dataclass
class CompareSettings:
    """``compare``: win-tie-lose judging of two models' answers."""

    against: NonEmptyStr = "base"  # base (roles.base) or a model folder / hub id, e.g. another experiment's models/sft
    limit: PositiveInt | None = None  # instructions judged (seeded sample); the paper: all 805 AlpacaFarm ones
    both_orders: bool = True  # judge A-B and B-A and count a win only when both agree
    parse: Literal["paper", "last_line"] = "paper"  # paper (substring in the whole answer) | last_line
    max_tokens: PositiveInt = 256  # answer length for both models (greedy)
    judge_max_tokens: PositiveInt | None = None  # null = roles.judge's
    seed: int = 0
