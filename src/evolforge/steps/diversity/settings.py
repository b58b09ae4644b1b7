"""``diversity``: how roles.embedder's model embeds instructions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DiversitySettings:
    """``diversity``: how roles.embedder's model embeds instructions."""

    embedder: Literal["causal-lm-mean", "sentence-transformers"] = field(default="causal-lm-mean", metadata={
        "help": "causal-lm-mean (mean-pooled last hidden states of roles.embedder's causal LM) | "
                "sentence-transformers (roles.embedder.model e.g. sentence-transformers/all-mpnet-base-v2)",
        "paper": "all-mpnet-base-v2"})
