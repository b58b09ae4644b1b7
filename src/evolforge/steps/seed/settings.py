"""``seed``: the instructions to start from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from evolforge.config.bounds import NonEmptyStr, NonNegativeInt, PositiveInt


@dataclass
class SeedSettings:
    """``seed``."""

    source: NonEmptyStr = field(metadata={
        "help": "a local .jsonl/.json/.parquet/.csv file, or a Hugging Face dataset id"})
    format: Literal["auto", "alpaca", "gsm8k", "code_alpaca", "chat"] = field(default="auto", metadata={
        "help": "auto | alpaca | gsm8k | code_alpaca | chat (messages / ShareGPT: the first user turn is the "
                "instruction, the first assistant turn the output)"})
    fields: dict[Literal["instruction", "input", "output"], NonEmptyStr | None] = field(default_factory=dict, metadata={
        "help": "column names to read instead of the format's, e.g. {instruction: prompt, output: completion}; "
                "instruction is never null"})
    config: str | None = field(default=None, metadata={"help": "hub dataset config"})
    split: NonEmptyStr = field(default="train", metadata={"help": "hub dataset split"})
    revision: str | None = field(default=None, metadata={"help": "hub dataset revision (a commit sha pins it exactly)"})
    limit: PositiveInt | None = field(default=None, metadata={"help": "keep a hash-based sample of this many items"})
    seed: int = field(default=0, metadata={"help": "the seed of the hash-based sample (limit)"})
    min_checked: NonNegativeInt = field(default=0, metadata={
        "help": "of the sample, this many seeds with an answer check first (docs/how-to/seeds.md)"})
