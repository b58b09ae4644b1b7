"""What names a call: the sampling seed derived from a request (:func:`request_seed`), what of a request besides
its messages its cache key and seed depend on, the digest of a model identity, and the engine options of a role
that change outputs (part of every cache key, :class:`evolforge.llm.cache.KeyFrame`)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson

from evolforge.llm.cache import json_around
from evolforge.config.backend_specs import spec_of
from evolforge.config.roles import Role
from evolforge.llm.pinning import resolved_kernels
from evolforge.llm.requests import ChatRequest



def request_seed(request: ChatRequest) -> int:
    """A 60-bit sampling seed derived from the whole request (messages, sampling, seed, sample index),
    so a request samples the same tokens whichever batch it lands in."""
    # sha256 of json.dumps(dataclasses.asdict(request) without None choices, sort_keys=True,
    # ensure_ascii=False), built as cache keys are (see KeyFrame): the rest once per sampling, the
    # messages by orjson with json's default ", " between them (``[["user", "..."]]``)
    sig = sampling_signature(request)
    around = _SEED_FRAMES.get(sig, _UNSEEN)
    if around is _UNSEEN:
        around = _seed_frame(request)
        if len(_SEED_FRAMES) < 4096:
            _SEED_FRAMES[sig] = around
    messages = request.messages
    if around is not None and type(messages) is tuple and all(
            type(m) is tuple and len(m) == 2 and type(m[0]) is str and type(m[1]) is str for m in messages):
        try:
            blob = b"[%s]" % b", ".join([b"[%s, %s]" % (orjson.dumps(r), orjson.dumps(c)) for r, c in messages])
        except orjson.JSONEncodeError:  # a lone surrogate: the plain encoding below fails as it always did
            pass
        else:
            return int(hashlib.sha256(b"%s%s%s" % (around[0], blob, around[1])).hexdigest()[:15], 16)
    return int(hashlib.sha256(_SEED_JSON(_seed_fields(request)).encode("utf-8")).hexdigest()[:15], 16)


# json.dumps(fields, sort_keys=True, ensure_ascii=False), without building an encoder per call
_SEED_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False).encode
_SEED_FRAMES: dict[tuple, tuple[bytes, bytes] | None] = {}  # request_seed's rest, per sampling signature
_UNSEEN = object()


def _seed_fields(request: ChatRequest) -> dict[str, Any]:
    fields = {"messages": request.messages, "temperature": request.temperature, "top_p": request.top_p,
              "max_tokens": request.max_tokens, "seed": request.seed, "sample_index": request.sample_index}
    if request.choices is not None:  # only then: unconstrained requests keep the seeds they always had
        fields["choices"] = request.choices
    return fields


def _seed_frame(request: ChatRequest) -> tuple[bytes, bytes] | None:
    return json_around(_SEED_JSON, _seed_fields(request), "messages") if str_choices(request.choices) else None


def sampling_signature(request: ChatRequest) -> tuple:
    """What a request's key and seed depend on besides its messages, with the types of the numbers: 1 and
    1.0 are equal but json writes them apart (a seed sees them raw)."""
    t, p, n, s, i = request.temperature, request.top_p, request.max_tokens, request.seed, request.sample_index
    return t, p, n, s, i, request.choices, request.controls, request.rank, type(t), type(p), type(n), type(s), type(i)


def str_choices(choices: tuple[str, ...] | None) -> bool:
    """Frames are kept only for str choices: equal tuples of them are written alike (1 and 1.0 are not)."""
    return choices is None or all(type(c) is str for c in choices)


def identity_digest(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def engine_options(role: Role) -> dict[str, Any]:
    """The options of ``role`` that change outputs beyond the model's identity: part of every cache key, as its
    backend's settings class declares them (:mod:`evolforge.config.backend_settings`).

    hf: dtype and device, and ``max_model_len`` when set. llamacpp: its context length and ``extra``
    (``reuse_prefix``); the quantization is part of the GGUF's identity. vllm: dtype, tensor parallelism,
    context length and the engine arguments in ``extra`` (quantization, ...). ray: the actors' ``engine`` and
    that engine's options (as hf or vllm; ``auto`` holds both). A server's engine is its own business: its
    served model id stands for it, so an openai role has none."""
    return role.settings.engine_options(role.max_model_len, role.extra)


def sampling_options(role: Role) -> dict[str, Any]:
    """What names ``role``'s sampler, added to the engine in the key of each call at a temperature above 0
    (:meth:`evolforge.llm.cache.KeyFrame`), so that greedy keys stay as they were when a sampler changes. hf (and
    ray with hf actors): ``sampler`` (:data:`evolforge.config.backend_settings.HF_SAMPLER`); others: none."""
    return role.settings.sampling_options()


def resolved_engine(role: Role) -> dict[str, Any]:
    """:func:`engine_options` with an hf role's ``device: auto`` and ``dtype: auto`` resolved as its backend
    will load the model (CUDA when torch sees a GPU, else the CPU; bf16 on a GPU, fp32 on the CPU), so
    that completions made on a GPU and on the CPU are never served for each other. torch is imported only
    for such a role. A llamacpp role that does not set ``extra.extra_bufts`` gets ``extra_bufts: false``
    where llama.cpp's extra buffer types crashed its model on this CPU (the probe,
    :mod:`evolforge.llm.backends.llamacpp.probe`; nothing is added where they ran, so those keys are unchanged).
    A ray role's actors resolve ``auto`` on their own machines: keyed as written."""
    options = engine_options(role)
    options.update(resolved_kernels(role))  # the kernels that made the answers (they round logits differently)
    settings = role.settings
    if spec_of(role.backend).transformers and "auto" in (settings.device, settings.dtype):
        from evolforge.core.models import dtype_name, pick_device, pick_dtype

        device = pick_device(settings.device)
        options["device"] = device
        dtype = settings.dtype
        options["dtype"] = dtype_name(pick_dtype(dtype, device)) if dtype == "auto" else dtype
    return options
