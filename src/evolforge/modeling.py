"""Loading causal LMs and naming them: one place for hub ids, local folders, devices and dtypes.

A model is named by a hub id (``Qwen/Qwen2.5-0.5B-Instruct``, pinned with ``revision``) or a local folder
(``models/tiny``). The identity that goes into cache keys is the name plus the revision for hub ids, and
the name plus a sha256 of the weights, config and tokenizer files for local folders, so rebuilding a local
model with different weights can never return stale cached completions.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

# Files whose bytes decide what a local model generates.
_IDENTITY_GLOBS = ("*.safetensors", "*.bin", "*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken")


def is_local(model: str) -> bool:
    return Path(model).is_dir()


def hash_model_dir(path: str | Path) -> str:
    """sha256 over the sorted (relative name, bytes) of the files that decide the model's outputs."""
    root = Path(path)
    files = sorted({f for g in _IDENTITY_GLOBS for f in root.glob(g) if f.is_file()})
    if not files:
        raise FileNotFoundError(f"model folder {root} holds no weights, config or tokenizer files")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_identity(model: str, revision: str | None = None) -> dict[str, Any]:
    if is_local(model):
        return {"name": model, "weights_sha256": hash_model_dir(model)}
    return {"name": model, "revision": revision or "main"}


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str):
    """``auto`` = bf16 on GPU, fp32 on CPU (CPU bf16 matmuls are slow and lose precision)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(table)}")
    return table[dtype]


def load_tokenizer(model: str, revision: str | None = None, padding_side: str = "left"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model, revision=revision, padding_side=padding_side)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(model: str, revision: str | None = None, dtype: str = "auto", device: str = "auto"):
    """Load a model for inference: eval mode, on ``device``, in ``dtype``."""
    from transformers import AutoModelForCausalLM

    if not is_local(model) and os.environ.get("HF_HUB_OFFLINE") == "1" and "/" not in model:
        raise FileNotFoundError(f"model {model!r} is neither a local folder nor a hub id")
    device = pick_device(device)
    lm = AutoModelForCausalLM.from_pretrained(model, revision=revision, dtype=pick_dtype(dtype, device))
    return lm.to(device).eval()
