"""Loading causal LMs and pinning what they are: one place for hub ids, local folders, devices and dtypes.

A model is named by a hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``, pinned with ``revision``) or a
local folder (``models/SmolLM2-135M-Instruct``). Its *identity* is what goes into cache keys and
``models/identity.json``: for a local folder a sha256 of its weights, config and tokenizer files (never
the path's spelling), for a hub id the commit sha its revision resolves to. So weights replaced in place,
or a branch that moved, can never return stale cached completions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from evolforge.config.bounds import Refusal
from evolforge.core.heap import keep_model_memory

# Files whose bytes decide what a local model generates.
MODEL_HASHES = Path(".evolforge/model_hashes.json")  # the models stage's memo of folder digests (hash_model_dir)
_IDENTITY_GLOBS = ("*.safetensors", "*.bin", "*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.gguf")
_SHA = re.compile(r"^[0-9a-f]{40}$")


class ModelError(Refusal):
    """A model that cannot be pinned or loaded; the message is for people."""


def is_local_model(model: str) -> bool:
    """A model given as a folder on disk (else a hub id)."""
    return Path(model).is_dir()


def check_model_name(model: str) -> None:
    """Refuse a model that is no local folder and cannot be a hub id: a path (``./m``, ``/m``, ``~/m``,
    ``a/b/c``) that does not exist is named as a missing folder, not sent to the hub as an id."""
    if is_local_model(model):
        return
    path = Path(model).expanduser()
    if path.exists():
        raise ModelError(f"model {model!r}: {path} is not a folder (a model is a folder with config and weights, or a "
                         f"hub id owner/name)")
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model:
        raise ModelError(f"model {model!r}: no such folder ({path.resolve() if not model.startswith('~') else path}); "
                         "a hub id is owner/name")
    if "/" not in model:
        raise ModelError(f"model {model!r} is neither a local folder nor a hub id (owner/name)")


def _identity_files(root: Path) -> list[Path]:
    return sorted({f for g in _IDENTITY_GLOBS for f in root.glob(g) if f.is_file()})


def hash_model_dir(path: str | Path, memo: str | Path | None = None) -> str:
    """sha256 over the sorted (relative name, bytes) of the files that decide the model's outputs.

    ``memo`` names a small JSON file that remembers the digest of a folder whose files kept their
    names, sizes and modification times, so re-pinning an unchanged 15 GB model costs a ``stat``."""
    root = Path(path)
    files = _identity_files(root)
    if not files:
        raise ModelError(f"model folder {root} holds no weights, config or tokenizer files")
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    key = str(root.resolve())
    memory = _read_memo(memo)
    if memory.get(key, {}).get("stamp") == stamp:
        return memory[key]["sha256"]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    if memo is not None:
        memory[key] = {"stamp": stamp, "sha256": digest.hexdigest()}
        Path(memo).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{memo}.tmp")
        tmp.write_text(json.dumps(memory, indent=1), encoding="utf-8")
        tmp.replace(memo)
    return digest.hexdigest()


def _read_memo(memo: str | Path | None) -> dict[str, Any]:
    try:
        return json.loads(Path(memo).read_text(encoding="utf-8")) if memo else {}
    except (OSError, ValueError):
        return {}


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_hub_revision(model: str, revision: str | None) -> str:
    """The commit sha that ``revision`` (a sha, branch or tag; default ``main``) of hub model ``model`` is.

    Online the hub answers; offline the local Hugging Face cache's refs do. An unpinned id that the
    cache does not know is refused offline: caching under a moving name would be wrong."""
    rev = revision or "main"
    if _SHA.match(rev):
        return rev
    if hub_offline():
        from huggingface_hub.constants import HF_HUB_CACHE

        ref = Path(HF_HUB_CACHE) / f"models--{model.replace('/', '--')}" / "refs" / rev
        if ref.is_file():
            return ref.read_text().strip()
        raise ModelError(
            f"model {model!r} at revision {rev!r}: offline (HF_HUB_OFFLINE=1) and not in the local Hugging Face "
            f"cache, so it cannot be pinned. Set `revision:` to a commit sha that is in the cache, download it "
            f"first (`hf download {model}`), or point the role at a local folder.")
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(model, revision=rev).sha
    except Exception as err:  # network, auth, unknown id: one message for people
        raise ModelError(f"model {model!r} at revision {rev!r}: the hub could not resolve it ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]})") from None


def model_identity(model: str, revision: str | None = None, memo: str | Path | None = None) -> dict[str, Any]:
    """What a model *is*, independent of how it is spelled: weights hash (local) or commit sha (hub)."""
    if is_local_model(model):
        return {"weights_sha256": hash_model_dir(model, memo)}
    check_model_name(model)
    return {"hub_id": model, "revision": resolve_hub_revision(model, revision)}


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def dtype_name(dtype) -> str:
    """A torch dtype's name as params write it: torch.bfloat16 -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")


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


def tokenizer_only_class(model: str):
    """The tokenizer class of a local folder that holds a tokenizer and no model config (a GGUF model's folder),
    as AutoTokenizer resolves it there: the ``tokenizer_class`` its tokenizer_config.json names, when
    transformers exports that class and no ``auto_map`` points at remote code; else None. Taken by name, it
    loads without AutoTokenizer's import of every model class (6 of a llamacpp stage's first 9 seconds on two
    cores)."""
    folder = Path(model)
    config = folder / "tokenizer_config.json"
    if not folder.is_dir() or (folder / "config.json").exists() or not config.is_file():
        return None
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # AutoTokenizer says what is wrong with the file
    name = settings.get("tokenizer_class")
    if (not isinstance(name, str) or "auto_map" in settings or name.endswith("Fast")
            or name in ("PythonBackend", "TokenizersBackend")):
        return None  # remote code, or a name AutoTokenizer rewrites first: left to it
    import transformers

    found = getattr(transformers, name, None)
    return found if isinstance(found, type) and hasattr(found, "from_pretrained") else None


def load_tokenizer(model: str, revision: str | None = None, padding_side: str = "left"):
    cls = tokenizer_only_class(model)
    if cls is None:
        from transformers import AutoTokenizer as cls

    tok = cls.from_pretrained(model, revision=revision, padding_side=padding_side)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(model: str, revision: str | None = None, dtype: str = "auto", device: str = "auto"):
    """Load a model for inference: eval mode, on ``device``, in ``dtype``."""
    from transformers import AutoModelForCausalLM

    check_model_name(model)
    keep_model_memory()
    device = pick_device(device)
    lm = AutoModelForCausalLM.from_pretrained(model, revision=revision, dtype=pick_dtype(dtype, device))
    return lm.to(device).eval()


def load_encoder(model: str, revision: str | None = None, dtype: str = "auto", device: str = "auto"):
    """(model, tokenizer) of a transformers model without its head (``AutoModel``: an encoder such as
    all-MiniLM-L6-v2's BERT, or a causal LM's backbone) for mean-pooled embeddings: eval mode, right padding."""
    from transformers import AutoModel

    check_model_name(model)
    keep_model_memory()
    device = pick_device(device)
    encoder = AutoModel.from_pretrained(model, revision=revision, dtype=pick_dtype(dtype, device))
    return encoder.to(device).eval(), load_tokenizer(model, revision, "right")


def load_scorer(model: str, revision: str | None = None, dtype: str = "auto", device: str = "auto"):
    """(model, tokenizer) for scoring and embedding: eval mode, bf16 on GPU / fp32 on CPU, right padding."""
    return load_causal_lm(model, revision, dtype=dtype, device=device), load_tokenizer(model, revision, "right")
