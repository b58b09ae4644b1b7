"""``autoif``: the AutoIF scenario's constraints, queries and verified responses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from annotated_types import Gt, Le
from pydantic import with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from evolforge.config import sandbox_limits
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
    """``autoif``: the SLM paper's AutoIF scenario. The papers' values are in the fields' metadata; the defaults
    are scaled down."""

    scenario: Literal["evol", "autoif"] = field(default="evol", metadata={
        "help": "which branch's answers feed dedup, judge, score and select"})
    on_empty: Literal["evol", "fail"] = field(default="evol", metadata={
        "help": "scenario autoif with no AutoIF item left (nothing verified, every response rejected): evol = train "
                "on the evol pool instead, marked fallback in metrics/pool.json and data/pool/meta.json | fail = "
                "stop there"})
    self_instruct_calls: PositiveInt = field(default=4, metadata={
        "help": "calls asking the evolver for new constraints",
        "paper": "100"})
    new_per_call: PositiveInt = field(default=50, metadata={"help": "the count the prompt asks for", "paper": "50"})
    temperature: NonNegativeFloat = field(default=0.7, metadata={
        "help": "self-instruct and verification samples",
        "paper": "0.7"})
    top_p: Annotated[float, Gt(0), Le(1)] = field(default=0.95, metadata={
        "help": "self-instruct and verification samples",
        "paper": "0.95"})
    max_tokens: PositiveInt | None = field(default=None, metadata={
        "help": "per self-instruct or verification sample; null = roles.evolver's", "unit": "tokens"})
    max_constraints: PositiveInt | None = field(default=None, metadata={
        "help": "verify at most this many (seeded, by hash); null = all"})
    functions_per_constraint: PositiveInt = field(default=4, metadata={
        "help": "verification samples K asked for each constraint", "paper": "8"})
    form: Literal["lines", "paper"] = field(default="lines", metadata={
        "help": "how a verification sample is asked for: lines = few-shot worked examples and the cases as "
                "FOLLOWS:/BREAKS: lines (what a 135M model follows) | paper = the reference zero-shot prompt asking "
                "for one JSON object"})
    both_outcomes: bool = field(default=True, metadata={
        "help": "a constraint is verified only if its kept cases hold both an accepted and a rejected response (else "
                "a constant function passes); the reference code has no such rule (false)"})
    min_accuracy: Probability = field(default=0.8, metadata={
        "help": "a verification function is kept at this accuracy on the kept cases",
        "paper": "0.8"})
    min_functions: PositiveInt = field(default=1, metadata={
        "help": "verification functions a constraint needs to be verified",
        "paper": "1 (SLM code; original AutoIF: 3)"})
    min_cases: PositiveInt = field(default=1, metadata={
        "help": "test cases a constraint needs to be verified",
        "paper": "1 (SLM code; original AutoIF: 10)"})
    case_timeout_s: PositiveFloat = sandbox_limits.case_timeout_s()
    memory_mb: PositiveInt = sandbox_limits.memory_mb()
    workers: PositiveInt = sandbox_limits.workers()
    queries: QuerySource = field(default_factory=dict, metadata={
        "help": "where the queries paired with constraints come from, read like seed.source (defaults: "
                "data/seeds/demo.jsonl, 20 < length < 300 characters)", "paper": "ShareGPT"})
    queries_per_constraint: PositiveInt = field(default=4, metadata={
        "help": "queries Q paired with each verified constraint", "paper": "16"})
    paired_constraints: PositiveInt | None = field(default=None, metadata={
        "help": "down-sample verified constraints (paper: 420); null = all"})
    response_max_tokens: PositiveInt | None = field(default=None, metadata={
        "help": "null = roles.responder's",
        "unit": "tokens"})
    verify_responses: bool = field(default=True, metadata={
        "help": "keep only responses the constraint's functions accept (original AutoIF)"})
    response_min_pass: Probability = field(default=0.5, metadata={
        "help": "share of the kept functions that must accept a response"})
    seed: int = field(default=0, metadata={"help": "the seed of the samples and the hash-based choices"})

    def __post_init__(self) -> None:
        queries = {**QUERY_DEFAULTS, **(self.queries or {})}
        if queries["min_chars"] >= queries["max_chars"]:
            raise ParamsError([f"autoif.queries.min_chars: {queries['min_chars']} is not below max_chars "
                               f"({queries['max_chars']}): no query could be kept"])
