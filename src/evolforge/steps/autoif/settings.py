"""``autoif``: the AutoIF scenario's constraints, queries and verified responses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from annotated_types import Gt, Le
from pydantic import with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from evolforge.config.bounds import (NonEmptyStr, NonNegativeFloat, NonNegativeInt, ParamsError, PositiveFloat,
                                     PositiveInt, Probability)


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
    # seconds per test case (the reference code's SIGALRM limit), summed per function
    case_timeout_s: PositiveFloat = 5.0
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
