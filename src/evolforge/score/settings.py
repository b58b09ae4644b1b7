"""``params.yaml score``, apart from the scoring code so that checking params imports no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from evolforge.core.params import PositiveInt


@dataclass
class ScoreSettings:
    template: Literal["raw", "chat"] = "raw"  # raw (SLM paper: Q + "\n" + A) | chat (the model's chat template)
    max_length: PositiveInt | None = None  # truncate Q+A to this many tokens
    embedder: Literal["causal-lm-mean", "sentence-transformers"] = "causal-lm-mean"
    embedder_model: str | None = None  # null = the scorer model
