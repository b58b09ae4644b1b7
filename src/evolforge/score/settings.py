"""``params.yaml score``, apart from the scoring code so that checking params imports no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from evolforge.core.params import PositiveInt


@dataclass
class ScoreSettings:
    template: Literal["raw", "chat"] = "raw"  # raw (SLM paper: Q + "\n" + A) | chat (the model's chat template)
    max_length: PositiveInt | None = None  # truncate Q+A to this many tokens


@dataclass
class DiversitySettings:
    """``params.yaml diversity``: how roles.embedder's model embeds instructions."""

    embedder: Literal["causal-lm-mean", "sentence-transformers"] = "causal-lm-mean"
