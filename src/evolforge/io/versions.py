"""The installed versions of the packages that can change evolforge's outputs.

A new transformers, tokenizers or polars release can change tokenization, generation or Parquet bytes
without any change in ``params.yaml`` or code, so every stage output's ``meta.json`` and the dataset card
record the versions that made them (README "Locked dependencies"). ``make setup`` installs the versions
pinned in ``requirements/cpu.txt`` (or ``requirements/gpu.txt``), so on a locked install these match the lock.
"""

from __future__ import annotations

from importlib import metadata

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
