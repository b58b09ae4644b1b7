"""Records: the columns every artifact carries, stable ids, and crash-safe Parquet output.

Artifacts are Parquet files written with polars, one row per item. Every row carries its lineage
(``LINEAGE``); an item that fails stays in the table with ``status`` and ``failure_reason`` so counts
add up. Outputs are written to a temporary sibling and renamed into place, so a crash or kill never
leaves a partial output that looks complete.

Every output's ``meta.json`` also records the installed versions of the packages that can change it
(:func:`output_versions`): a new transformers, tokenizers or polars release can change tokenization,
generation or Parquet bytes without any change in ``params.yaml`` or code (docs/reference/dependencies.md);
``make setup`` installs the versions pinned in ``requirements/cpu.txt`` (or ``requirements/gpu.txt``), so on a
locked install these match the lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import polars as pl

TABLE = "items.parquet"  # the table file inside every stage output folder
SEED_POOL = "all_seeds.parquet"  # beside the seed table: every seed before seed.limit's sample (Auto Evol-Instruct's;
# not "pool.parquet", which beside a round's table is what the next round evolves, and round 1 would read it)
META = "meta.json"  # template hashes, model identities, settings used (key SETTINGS), package versions (VERSIONS)
VERSIONS = "versions"  # meta.json key: {package: installed version} of OUTPUT_PACKAGES (below)
# meta.json key: the settings that made the output, as its step ran with them (its typed settings,
# dataclasses.asdict): the dataset card quotes them instead of params.yaml (evolforge.steps.select.recorded)
SETTINGS = "settings"

# rows per Parquet row group of every table written. Fixed, so a file's bytes depend on its rows alone: left
# to polars, the row groups follow how the frame happens to be chunked in memory (a table streamed out in
# 10k-row chunks got other row groups than the same rows written whole). A table of fewer rows is one row
# group, as polars writes it by default.
ROW_GROUP_ROWS = 65_536

LINEAGE = ["id", "root_id", "parent_id", "round", "method", "status", "failure_reason"]

# statuses
SEED, EVOLVED, FAILED = "seed", "evolved", "failed"


def make_id(*parts: Any) -> str:
    """Stable content-derived id: sha256 of the parts joined by NUL, first 16 hex digits.

    >>> make_id("Add 2 and 3", "")
    '3499d7636a4e947b'
    """
    blob = "\0".join("" if p is None else str(p) for p in parts)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path`` whole.

    On an exception the temporary folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; outputs are ordinary folders
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, path)


def replace_dir(staging: str | Path, path: str | Path) -> None:
    """Move a finished ``staging`` folder to ``path``, replacing what was there with two renames."""
    staging, path = Path(staging), Path(path)
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
        staging.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(path)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename), sorted keys, trailing newline."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def write_table(table: pl.DataFrame, path: str | Path) -> None:
    """``table`` as a Parquet file in row groups of :data:`ROW_GROUP_ROWS` rows: the same bytes however the
    frame is chunked in memory (or streamed, :func:`evolforge.io.stream.sink_chunks`)."""
    table.write_parquet(path, row_group_size=ROW_GROUP_ROWS)


def write_output(out_dir: str | Path, table: pl.DataFrame, meta: dict | None = None,
                 extra: dict[str, Any] | None = None,
                 tables: dict[str, pl.DataFrame] | None = None, finish: Callable[[Path], object] | None = None) -> None:
    """Write a stage output folder atomically: ``items.parquet``, ``meta.json``, extra tables and JSON/JSONL files;
    ``finish(folder)`` writes whatever else belongs in it (from those files) before it is moved into place, so
    an error there leaves the previous output as it was. ``meta.json`` gets the installed versions of the
    packages that can change outputs (``VERSIONS``) unless ``meta`` already has them."""
    with atomic_dir(out_dir) as tmp:
        write_table(table, tmp / TABLE)
        for name, other in (tables or {}).items():
            write_table(other, tmp / name)
        write_json(tmp / META, {VERSIONS: output_versions(), **(meta or {})})
        for name, data in (extra or {}).items():
            if name.endswith(".jsonl"):
                write_jsonl(tmp / name, data)
            else:
                write_json(tmp / name, data)
        if finish is not None:
            finish(tmp)


def read_table(path: str | Path) -> pl.DataFrame:
    """Read a stage output (its folder or the Parquet file itself)."""
    from evolforge.io.validation import DataError

    path = Path(path)
    file = path / TABLE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"{file}: no such artifact; has the stage that writes it run?")
    try:
        return pl.read_parquet(file)
    except (pl.exceptions.PolarsError, OSError) as err:  # truncated, empty, or not Parquet at all
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(file, "a readable Parquet table", detail=f"{first}; rerun the stage that writes it "
                        "(`dvc repro`), or `dvc checkout` to restore the recorded version") from None


# ---------------------------------------------------------------------------------------------------
# the package versions every output records


# the distributions whose release can change the data: model math, tokenization, generation, Parquet bytes,
# dataset loading, fine-tuning and evaluation
OUTPUT_PACKAGES = ("torch", "transformers", "tokenizers", "vllm", "datasets", "polars", "pyarrow", "trl", "peft",
                   "lm-eval")


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None where it is not installed (vllm on a CPU box)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def output_versions() -> dict[str, str | None]:
    """``{package: version or None}`` for every package of ``OUTPUT_PACKAGES``, in that order."""
    return {name: installed_version(name) for name in OUTPUT_PACKAGES}
