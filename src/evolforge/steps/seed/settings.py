"""``seed``: the instructions to start from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from evolforge.config.bounds import NonEmptyStr, NonNegativeInt, PositiveInt


@dataclass
class SeedSettings:
    """``seed``."""

    source: NonEmptyStr  # a local .jsonl/.json/.parquet/.csv file, or a Hugging Face dataset id
    format: Literal["auto", "alpaca", "gsm8k", "code_alpaca", "chat"] = "auto"  # chat: messages / ShareGPT
    # instruction: never null
    fields: dict[Literal["instruction", "input", "output"], NonEmptyStr | None] = field(default_factory=dict)
    config: str | None = None  # hub dataset config
    split: NonEmptyStr = "train"
    revision: str | None = None  # hub dataset revision (a commit sha pins it exactly)
    limit: PositiveInt | None = None  # keep a hash-based sample of this many items
    seed: int = 0
    min_checked: NonNegativeInt = 0  # of the sample, this many seeds with an answer check first (docs/seeds.md)
