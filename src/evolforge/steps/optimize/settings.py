"""``optimize``: Auto Evol-Instruct's method search."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from annotated_types import Gt, Le

from evolforge.config.bounds import NonNegativeFloat, NonNegativeInt, PositiveInt
from evolforge.config.controls import ControlSettings


@dataclass
class OptimizeSettings:
    """``optimize``; paper values in ALGORITHMS.md 4.4 (T=10, m=5, batch 10, |D|=50, l=1)."""

    initial_method: Literal["initial", "weak"] = "initial"
    steps: NonNegativeInt = 10
    candidates: PositiveInt = 5
    batch_size: PositiveInt = 10
    dev_size: PositiveInt = 50
    trajectory_rounds: PositiveInt = 1
    patience: NonNegativeInt | None = 1
    selection: Literal["lowest_failure", "no_regression"] = "lowest_failure"
    evolver_temperature: NonNegativeFloat = 0.0
    seed: int = 0
    # a method failing this share of the dev set is unusable
    unusable_failure_rate: Annotated[float, Gt(0), Le(1)] = 0.9
    on_unusable: Literal["evol", "stop", "keep"] = "evol"  # fall back to hand-written methods | stop | evolve anyway
    controls: ControlSettings = field(default_factory=dict)  # of the optimization turn, over roles.optimizer's
    on_unparseable: Literal["continue", "stop"] = field(default="continue", metadata={"help": (
        "a step none of whose candidates parsed (warned in the stage log, metrics/optimize.json and the report): "
        "continue (the next step samples again; patience and on_unusable judge the result) | stop (the stage "
        "fails there; the answers stay in the call cache). continue: a step of m samples can miss by chance, "
        "and the settings that empty every candidate are refused before any request")})
