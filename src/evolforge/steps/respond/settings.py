"""``respond``: the answers."""

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
