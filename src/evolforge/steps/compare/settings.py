"""``compare``: win-tie-lose judging of two models' answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from evolforge.config.bounds import NonEmptyStr, PositiveInt


@dataclass
class CompareSettings:
    """``compare``: win-tie-lose judging of two models' answers."""

    against: NonEmptyStr = field(default="base", metadata={
        "help": "base (roles.base) or a model folder / hub id, e.g. another experiment's models/sft"})
    limit: PositiveInt | None = field(default=None, metadata={
        "help": "instructions judged (seeded sample); the paper: all 805 AlpacaFarm ones"})
    both_orders: bool = field(default=True, metadata={"help": "judge A-B and B-A and count a win only when both agree"})
    judge_identical: bool = field(default=False, metadata={
        "help": "false: two answers that are the same text are a tie, the judge not asked; true: judged (paper)"})
    parse: Literal["paper", "last_line"] = field(default="paper", metadata={
        "help": "paper (substring in the whole answer) | last_line"})
    max_tokens: PositiveInt = field(default=256, metadata={
        "help": "answer length for both models (greedy)",
        "unit": "tokens"})
    judge_max_tokens: PositiveInt | None = field(default=None, metadata={
        "help": "null = roles.judge's",
        "unit": "tokens"})
    seed: int = field(default=0, metadata={"help": "the seed of the sample of instructions"})
