"""``diversity``: how roles.embedder's model embeds instructions.

A dataclass whose fields hold the defaults (the one place they live) and the types: bounds from
:mod:`evolforge.config.bounds`, allowed values as ``Literal``. :mod:`evolforge.config.schema` maps the section
to it; this module imports nothing but :mod:`evolforge.config`, so checking params loads no step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class DiversitySettings:
    """``diversity``: how roles.embedder's model embeds instructions."""

    embedder: Literal["causal-lm-mean", "sentence-transformers"] = "causal-lm-mean"
