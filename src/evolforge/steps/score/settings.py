"""``score``: IFD / IC-IFD (the scoring itself, :mod:`evolforge.score.ifd`, takes the same choices)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from annotated_types import Ge

from evolforge.config.bounds import PositiveInt
from evolforge.score.choices import Boundary, CherryTruncation, Template


@dataclass
class ScoreSettings:
    """``score``: IFD / IC-IFD scoring (defaults: paper B's official code; see evolforge.score.ifd)."""

    template: Template = field(default="raw", metadata={
        "help": "raw (EA eval_loss.py: Q + \"\\n\" + A) | chat (chat template) | cherry (Cherry_LLM's IFD)"})
    boundary: Boundary = field(default="prefix", metadata={
        "help": "prefix (the official codes' rule) | offsets (exact, from character offsets)"})
    max_length: Annotated[int, Ge(2)] | None = field(default=None, metadata={
        "help": "tokens of the conditioned pass; null = no truncation"})
    cherry_truncation: CherryTruncation = field(default="official", metadata={
        "help": "official (Cherry's +4 rule and skips) | same-tokens"})
    max_batch_tokens: PositiveInt = field(default=16384, metadata={
        "help": "padded tokens per forward pass (bounds activation memory)"})
