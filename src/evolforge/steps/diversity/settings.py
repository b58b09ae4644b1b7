"""``diversity``: how roles.embedder's model embeds instructions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DiversitySettings:
    """``diversity``: how roles.embedder's model embeds instructions."""

    embedder: Literal["mean-pooled", "causal-lm-mean", "sentence-transformers"] = field(
        default="mean-pooled", metadata={
            "help": "mean-pooled (the mean of roles.embedder's last hidden states over the tokens, any transformers "
                    "model: an encoder such as all-MiniLM-L6-v2, or a causal LM's backbone) | causal-lm-mean (the "
                    "same through a causal LM loader) | sentence-transformers (roles.embedder.model e.g. "
                    "sentence-transformers/all-mpnet-base-v2; the optional package)",
            "paper": "all-mpnet-base-v2"})
