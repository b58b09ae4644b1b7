"""``seed``: the instructions to start from.

A dataclass whose fields hold the defaults (the one place they live) and the types: bounds from
:mod:`evolforge.config.bounds`, allowed values as ``Literal``. :mod:`evolforge.config.schema` maps the section
to it; this module imports nothing but :mod:`evolforge.config`, so checking params loads no step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from evolforge.config.bounds import NonEmptyStr, PositiveInt


@dataclass
class SeedSettings:
    """``seed``."""

    source: NonEmptyStr  # a local .jsonl/.json/.parquet/.csv file, or a Hugging Face dataset id
    format: Literal["auto", "alpaca", "gsm8k", "code_alpaca", "chat"] = "auto"  # chat: messages / ShareGPT
    fields: dict[Literal["instruction", "input", "output"], NonEmptyStr | None] = field(default_factory=dict)  # instruction: never null
    config: str | None = None  # hub dataset config
    split: NonEmptyStr = "train"
    revision: str | None = None  # hub dataset revision (a commit sha pins it exactly)
    limit: PositiveInt | None = None  # keep a hash-based sample of this many items
    seed: int = 0
