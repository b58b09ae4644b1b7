"""Settings of the sections that make the data: ``seed`` (the instructions to start from), ``optimize``
(Auto Evol-Instruct's method search), ``evolve`` (the rounds, their elimination rules and generation
controls), ``respond`` (the answers) and ``autoif`` (the AutoIF scenario's constraints, queries and
verified responses).

Each section is a dataclass whose fields hold the defaults (the one place they live) and the types: bounds
from :mod:`evolforge.config.bounds`, allowed values as ``Literal``. :mod:`evolforge.config.schema` maps
each section's name to its class; keeping the classes apart from the steps that use them means checking
params imports no model, data or training code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Le
from pydantic import with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from evolforge.config.bounds import (NonEmptyStr, NonNegativeFloat, NonNegativeInt, ParamsError, PositiveFloat, PositiveInt,
                                     Probability)

# Evolution elimination rules -> on when params.yaml does not say; the judge checks cost calls and are opt-in.
RULES = {"empty": True, "truncated": True, "unchanged": True, "template_words": True, "chatter": True,
         "repetitive": True, "not_an_instruction": True, "sorry_short": True, "stopwords_only": True,
         "rule_f": True, "not_an_instruction_judge": False, "info_gain": False}
RuleName = Literal["empty", "truncated", "unchanged", "template_words", "chatter", "repetitive", "not_an_instruction",
                   "sorry_short", "stopwords_only", "rule_f", "not_an_instruction_judge", "info_gain"]


@dataclass
class SeedSettings:
    """``seed``."""

    source: NonEmptyStr  # a local .jsonl/.json/.parquet/.csv file, or a Hugging Face dataset id
    format: Literal["auto", "alpaca", "gsm8k", "code_alpaca", "chat"] = "auto"  # chat: messages / ShareGPT
    fields: dict[Literal["instruction", "input", "output"], NonEmptyStr | None] = field(default_factory=dict)  # instruction: never null
    config: str | None = None  # hub dataset config
    split: NonEmptyStr = "train"
    revision: str | None = None  # hub dataset revision (a commit sha pins it exactly)
    limit: PositiveInt | None = None  # keep a hash-based sample of this many items
    seed: int = 0


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
    unusable_failure_rate: Annotated[float, Gt(0), Le(1)] = 0.9  # a method failing this share of the dev set is unusable
    on_unusable: Literal["evol", "stop", "keep"] = "evol"  # fall back to hand-written methods | stop | evolve anyway
    controls: ControlSettings = field(default_factory=dict)  # of the optimization turn, over roles.optimizer's


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class Repetition(TypedDict, total=False):
    """Thresholds of the ``repetitive`` rule and of ``response_status`` (see ``failures.RepetitionTest``)."""

    ngram: PositiveInt
    max_repeated_ngram_fraction: Probability
    max_compression_ratio: Annotated[float, Ge(1)]  # bytes over compressed bytes; prose is above 1
    min_words: NonNegativeInt


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class ControlSettings(TypedDict, total=False):
    """A stage's generation controls (``evolve.controls``, ``optimize.controls``), put over its role's own
    (``roles.<name>.banned_strings`` ...; see :class:`evolforge.config.roles.Controls`, docs/controls.md)."""

    banned_strings: list[str]
    assistant_prefix: str | None
    stop: list[NonEmptyStr]
    repetition_penalty: PositiveFloat | None
    no_repeat_ngram_size: PositiveInt | None
    frequency_penalty: Annotated[float, Ge(-2), Le(2)] | None


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


@dataclass
class RespondSettings:
    """``respond``; each round index must be one of ``evolve.rounds``."""

    rounds: list[PositiveInt] = field(default_factory=list)
    include_seed: bool = False  # also answer the seed instructions (round 0)
    temperature: NonNegativeFloat | None = None  # null = roles.responder's
    max_tokens: PositiveInt | None = None
    repetition: Repetition = field(default_factory=dict)


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class QuerySource(TypedDict, total=False):
    """``autoif.queries``: where the queries paired with constraints come from (read like ``seed.source``)."""

    source: NonEmptyStr  # default data/seeds/demo.jsonl
    format: Literal["auto", "alpaca", "gsm8k", "code_alpaca"]
    fields: dict[Literal["instruction", "input", "output"], NonEmptyStr | None]
    config: str | None
    split: NonEmptyStr
    min_chars: NonNegativeInt  # the SLM paper keeps ShareGPT queries with 20 < len < 300 characters
    max_chars: PositiveInt


QUERY_DEFAULTS = {"source": "data/seeds/demo.jsonl", "format": "auto", "fields": {}, "config": None, "split": "train",
                  "min_chars": 20, "max_chars": 300}


@dataclass
class AutoIFSettings:
    """``autoif``: the SLM paper's AutoIF scenario. Paper values in comments; the defaults are scaled down."""

    scenario: Literal["evol", "autoif"] = "evol"  # which branch's answers feed dedup, judge, score and select
    # scenario autoif with no AutoIF item left (nothing verified, every response rejected): evol = train on the
    # evol pool instead, marked fallback in metrics/pool.json and data/pool/meta.json | fail = stop there
    on_empty: Literal["evol", "fail"] = "evol"
    self_instruct_calls: PositiveInt = 4  # paper: 100
    new_per_call: PositiveInt = 50  # the count the prompt asks for; paper: 50
    temperature: NonNegativeFloat = 0.7  # paper: 0.7 / 0.95 for self-instruct and verification samples
    top_p: Annotated[float, Gt(0), Le(1)] = 0.95
    max_tokens: PositiveInt | None = None  # null = roles.evolver's
    max_constraints: PositiveInt | None = None  # verify at most this many (seeded, by hash); null = all
    functions_per_constraint: PositiveInt = 4  # K; paper: 8
    # how a verification sample is asked for: lines = few-shot worked examples and the cases as FOLLOWS:/BREAKS:
    # lines (what a 135M model follows) | paper = the reference zero-shot prompt asking for one JSON object
    form: Literal["lines", "paper"] = "lines"
    # a constraint is verified only if its kept cases hold both an accepted and a rejected response (else a
    # constant function passes); the reference code has no such rule (false)
    both_outcomes: bool = True
    min_accuracy: Probability = 0.8
    min_functions: PositiveInt = 1  # original AutoIF: 3 functions and 10 cases; the SLM paper's code: 1 and 1
    min_cases: PositiveInt = 1
    case_timeout_s: PositiveFloat = 5.0  # seconds per test case (the reference code's SIGALRM limit), summed per function
    memory_mb: PositiveInt = 512
    workers: PositiveInt = 2  # sandbox processes at a time
    queries: QuerySource = field(default_factory=dict)  # defaults: QUERY_DEFAULTS
    queries_per_constraint: PositiveInt = 4  # Q; paper: 16
    paired_constraints: PositiveInt | None = None  # down-sample verified constraints (paper: 420); null = all
    response_max_tokens: PositiveInt | None = None  # null = roles.responder's
    verify_responses: bool = True  # keep only responses the constraint's functions accept (original AutoIF)
    response_min_pass: Probability = 0.5  # share of the kept functions that must accept a response
    seed: int = 0

    def __post_init__(self) -> None:
        queries = {**QUERY_DEFAULTS, **(self.queries or {})}
        if queries["min_chars"] >= queries["max_chars"]:
            raise ParamsError([f"autoif.queries.min_chars: {queries['min_chars']} is not below max_chars "
                               f"({queries['max_chars']}): no query could be kept"])
