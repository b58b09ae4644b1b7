"""``evolve``: the rounds, their elimination rules and generation controls."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from annotated_types import Gt, Le
from pydantic import with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from evolforge.config.bounds import NonEmptyStr, NonNegativeFloat, PositiveInt
from evolforge.config.controls import ControlSettings, Repetition


# The elimination rules (evolve.elimination), named once, in the order a round runs them: on the evolved
# instruction's text, on an answer to it, then the checks that ask the judge role
INSTRUCTION_RULES = ("empty", "truncated", "unchanged", "template_words", "chatter", "repetitive", "not_an_instruction")
RESPONSE_RULES = ("sorry_short", "stopwords_only", "rule_f")
JUDGE_RULES = ("not_an_instruction_judge", "info_gain")
# rule -> on when params.yaml does not say; the judge checks cost calls and are opt-in
RULES = {**dict.fromkeys(INSTRUCTION_RULES + RESPONSE_RULES, True), **dict.fromkeys(JUDGE_RULES, False)}
RuleName = Literal[INSTRUCTION_RULES + RESPONSE_RULES + JUDGE_RULES]  # type: ignore[valid-type]


@dataclass
class EvolveSettings:
    """``evolve`` without ``rounds`` (what one round needs; the stage records it in meta.json)."""

    strategy: Literal["evol", "auto", "auto_initial"] = "evol"
    assignment: Literal["round_robin", "random"] = "round_robin"
    breadth: bool = True
    on_failure: Literal["keep_parent", "drop"] = "keep_parent"
    # evolver sampling; None = the evolver role's default
    temperature: NonNegativeFloat | None = None
    top_p: Annotated[float, Gt(0), Le(1)] | None = None
    max_tokens: PositiveInt | None = None
    seed: int = 0
    # who answers the evolved instructions for the response rules: responder (with respond's sampling: the
    # answer respond would give, so respond finds it in the cache) | evolver (greedy, at max_tokens) | auto
    # (responder when that loads no second model in the evolve stage's process, else evolver)
    check_role: Literal["auto", "responder", "evolver"] = "auto"
    elimination: dict[RuleName, bool] = field(default_factory=dict)  # defaults: RULES
    repetition: Repetition = field(default_factory=dict)
    # generation controls of the evolving calls (optimize's development runs use them too), over the role's
    controls: ControlSettings = field(default_factory=dict)
    # the Auto Evol-Instruct step-format calls (strategy auto / auto_initial rounds, optimize's development runs
    # and trajectories) instead; None = controls / max_tokens above
    method_controls: ControlSettings | None = None
    method_max_tokens: PositiveInt | None = None
    # worked examples before each evolving prompt (prompts/evolve/examples.yaml; strategy auto:
    # prompts/optimize/examples.yaml, in optimize's development runs too); false = zero-shot, the papers'
    few_shot: bool = False

    def rule(self, name: str) -> bool:
        return bool(self.elimination.get(name, RULES[name]))

    def step_format(self) -> tuple[ControlSettings, int | None]:
        """(controls, max_tokens) of the step-format calls."""
        return (self.controls if self.method_controls is None else self.method_controls,
                self.max_tokens if self.method_max_tokens is None else self.method_max_tokens)


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class EvolveRound(TypedDict):
    """One entry of ``evolve.rounds``: its input folder and its 1-based index."""

    src: NonEmptyStr
    index: PositiveInt


@dataclass
class EvolveSection(EvolveSettings):
    """The ``evolve`` section as params.yaml holds it: the settings plus the rounds."""

    rounds: dict[str, EvolveRound] = field(default_factory=dict)


def method_text(strategy: str, method_file: str | Path) -> str | None:
    """The evolving method a strategy uses: auto (the optimized method) and auto_initial (the initial method)
    read the one the optimize stage wrote to ``method.txt``; evol uses the hand-written methods (None)."""
    return Path(method_file).read_text(encoding="utf-8").strip() if strategy in ("auto", "auto_initial") else None
