"""``respond``: the answers."""

from __future__ import annotations

from dataclasses import dataclass, field

from evolforge.config.bounds import NonNegativeFloat, PositiveInt
from evolforge.config.controls import Repetition


@dataclass
class RespondSettings:
    """``respond``; each round index must be one of ``evolve.rounds``."""

    rounds: list[PositiveInt] = field(default_factory=list, metadata={
        "help": "the rounds whose surviving instructions get responses (each needs its data/evolved/<round> in "
                "dvc.yaml's respond deps)"})
    include_seed: bool = field(default=False, metadata={"help": "also answer the seed instructions (round 0)"})
    temperature: NonNegativeFloat | None = field(default=None, metadata={"help": "null = roles.responder's"})
    max_tokens: PositiveInt | None = field(default=None, metadata={
        "help": "new tokens of a response; null = roles.responder's",
        "unit": "tokens",
        "paper": "2048"})
    repetition: Repetition = field(default_factory=dict, metadata={
        "help": "thresholds of response_status repetitive: {ngram, max_repeated_ngram_fraction, "
                "max_compression_ratio, min_words}"})
