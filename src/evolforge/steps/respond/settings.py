"""``respond``: the answers.

A dataclass whose fields hold the defaults (the one place they live) and the types: bounds from
:mod:`evolforge.config.bounds`, allowed values as ``Literal``. :mod:`evolforge.config.schema` maps the section
to it; this module imports nothing but :mod:`evolforge.config`, so checking params loads no step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from evolforge.config.bounds import NonNegativeFloat, PositiveInt
from evolforge.config.controls import Repetition


@dataclass
class RespondSettings:
    """``respond``; each round index must be one of ``evolve.rounds``."""

    rounds: list[PositiveInt] = field(default_factory=list)
    include_seed: bool = False  # also answer the seed instructions (round 0)
    temperature: NonNegativeFloat | None = None  # null = roles.responder's
    max_tokens: PositiveInt | None = None
    repetition: Repetition = field(default_factory=dict)
