"""``data``: how the data stages (respond through select) read and write their tables (docs/how-to/scale.md). The
chunk size bounds memory, never results; so no stage declares this section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from evolforge.config.bounds import PositiveInt


@dataclass(frozen=True)
class DataSettings:
    """``data``: how the data stages (respond through select) read and write their tables (docs/how-to/scale.md)."""

    chunk_rows: PositiveInt = field(default=50_000, metadata={
        "help": "rows read, processed and written at a time; memory follows it, results do not"})
    engine: Literal["local", "ray"] = field(default="local", metadata={
        "help": "where dedup's sketches, decontamination and IFD scoring run: in the stage's process (local) or as "
                "Ray Data pipelines, a task or actor per chunk (ray; docs/how-to/scale-ray.md). The outputs are the "
                "same bytes either way."})
    ray_address: str | None = field(default=None, metadata={
        "help": "engine ray: an existing cluster (\"auto\", \"ray://host:10001\"); null = start a local one"})
