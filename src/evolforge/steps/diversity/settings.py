"""``diversity``: how roles.embedder's model embeds instructions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class DiversitySettings:
    """``diversity``: how roles.embedder's model embeds instructions."""

    embedder: Literal["causal-lm-mean", "sentence-transformers"] = "causal-lm-mean"
