"""Model roles from ``params.yaml`` (``roles.<name>``) and the chat requests they make.

Kept apart from the backends so that reading a role (to fine-tune or evaluate ``roles.base``) imports
no backend code.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

BACKEND_NAMES = ("hf", "vllm", "openai")


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request. ``sample_index`` tells apart repeated samples of one prompt."""

    messages: tuple[tuple[str, str], ...]  # ((role, content), ...): hashable and immutable
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    sample_index: int = 0

    @classmethod
    def chat(cls, messages: Sequence[Mapping[str, str]], **sampling) -> "ChatRequest":
        return cls(messages=tuple((m["role"], m["content"]) for m in messages), **sampling)

    @property
    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]



SECRET_WORDS = ("key", "token", "secret", "password", "auth", "header")


def refuse_secrets(where: str, base_url: str | None, settings: Mapping[str, Any], settings_where: str) -> None:
    """params.yaml is committed and recorded in dvc.lock: a secret written there would leak. Refuses
    credentials or a query string in ``base_url`` (at ``where``) and free-form ``settings`` (at
    ``settings_where``) whose keys name a secret. Keys are read from environment variables instead."""
    from urllib.parse import urlsplit

    if base_url and (urlsplit(base_url).username or urlsplit(base_url).password or urlsplit(base_url).query):
        raise ValueError(f"params.yaml {where}.base_url: no credentials or query string in the URL; "
                         "put the key in an environment variable")
    for k in settings:
        if any(word in k.lower() for word in SECRET_WORDS):
            raise ValueError(f"params.yaml {settings_where}.{k}: secrets do not belong in params; "
                             "put them in an environment variable")


@dataclass
class Role:
    """One model role from ``params.yaml`` (``roles.<name>``): which model, where, and its defaults."""

    name: str
    backend: str
    model: str
    revision: str | None = None
    # generation defaults; a stage may override them per call
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    # hf / vllm
    batch_size: int = 8
    dtype: str = "auto"
    device: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    threads: int | None = None  # hf: CPU threads for torch; None = usable_cores()
    # openai-compatible servers
    base_url: str | None = None
    api_key_env: str | None = None
    concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 5
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_params(cls, name: str, params: Mapping[str, Any]) -> "Role":
        known = {f.name for f in dataclasses.fields(cls)} - {"name"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(
                f"params.yaml roles.{name}: unknown key(s) {unknown}; expected some of {sorted(known)}"
            )
        for required in ("backend", "model"):
            if not params.get(required):
                raise ValueError(f"params.yaml roles.{name}: '{required}' is required")
        refuse_secrets(f"roles.{name}", params.get("base_url"), params.get("extra") or {}, f"roles.{name}.extra")
        threads = params.get("threads")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"params.yaml roles.{name}.threads: a whole number of at least 1 (or null for the "
                             f"machine's usable cores), got {threads!r}")
        if params["backend"] not in BACKEND_NAMES:
            raise ValueError(
                f"params.yaml roles.{name}.backend: {params['backend']!r} is not one of {list(BACKEND_NAMES)}"
            )
        return cls(name=name, **params)

    def request(self, messages: Sequence[Mapping[str, str]], **overrides) -> ChatRequest:
        """A request with this role's generation defaults, overridden where given (None = default)."""
        sampling = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }
        sampling.update({k: v for k, v in overrides.items() if v is not None})
        return ChatRequest.chat(messages, **sampling)


def _cgroup_cpu_limit(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """CPUs the container may use (cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``); None when unlimited."""
    root = os.fspath(root)
    try:
        quota, period = open(os.path.join(root, "cpu.max"), encoding="ascii").read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(open(os.path.join(root, "cpu", "cpu.cfs_quota_us"), encoding="ascii").read())
        period = int(open(os.path.join(root, "cpu", "cpu.cfs_period_us"), encoding="ascii").read())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cores(environ: Mapping[str, str] | None = None, cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> int:
    """Threads worth running here: ``OMP_NUM_THREADS`` when set (the user's explicit choice), otherwise the
    cores this process may run on (``sched_getaffinity``) capped by a cgroup CPU quota (rounded down, at
    least 1). More threads than that make torch's decoding much slower on a shared machine, not faster."""
    environ = os.environ if environ is None else environ
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = _cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)
