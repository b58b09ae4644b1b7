"""Which model an ``openai`` role's server serves (``GET /models``), pinned as the role's identity: the served
model id, never the URL (the models stage, :func:`evolforge.llm.pinning.resolve_identity`)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from evolforge.core.models import ModelError
from evolforge.config.roles import Role
from evolforge.llm.backends.openai.http import api_key, preview

log = logging.getLogger(__name__)

# Fields of a /models entry that tell two servers of one model id apart (vLLM lists the weights it loaded
# as `root` and the context as `max_model_len`); `created` and `owned_by` say nothing about the weights.
_MODEL_FIELDS = ("root", "parent", "max_model_len")
_KINDS: dict[str, str] = {}  # base_url -> the server kind found there (one look per process)
_SLOTS: dict[str, int | None] = {}  # base_url -> the requests its llama.cpp server decodes at once


def wait_until_serving(base_url: str, server: subprocess.Popen, log: Path, timeout_s: float,
                       every_s: float = 0.5) -> None:
    """Wait until a server just started as ``server`` answers ``GET {base_url}/models``. Raise RuntimeError,
    with the end of its ``log``, when it exits first or does not answer within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.is_file() else ""
            raise RuntimeError(f"the server exited with {server.returncode}; its log ({log}) ends:\n{tail}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(every_s)
    raise RuntimeError(f"the server at {base_url} did not answer within {timeout_s:.0f} s; see {log}")


def kind_of(entry: dict[str, Any]) -> str:
    """What serves a ``GET /models`` entry: vLLM says ``owned_by: vllm``; llama.cpp's server ``llamacpp`` and
    llama-cpp-python's ``me`` (with an empty ``permissions`` list); anything else is taken for the OpenAI API.

    >>> kind_of({"id": "m", "owned_by": "vllm", "root": "m"}), kind_of({"id": "m", "owned_by": "me", "permissions": []})
    ('vllm', 'llamacpp')
    """
    owner = str(entry.get("owned_by", "")).lower()
    if owner == "vllm":
        return "vllm"
    if owner in ("llamacpp", "llama.cpp") or (owner == "me" and entry.get("permissions") == []):
        return "llamacpp"
    return "openai"


def server_kind(role: Role, strict: bool = True) -> str:
    """The kind of an openai role's server: its ``server`` setting when set, else found from ``GET /models`` (once
    per process and server); ``openai`` for a server stated with ``served_identity`` (not asked). Not ``strict``
    (the backend, after the models stage pinned the role): a server that cannot list its models is ``openai``."""
    if role.settings.server != "auto":
        return role.settings.server
    if role.settings.served_identity is not None or not role.settings.urls:
        return "openai"
    url = role.settings.urls[0].rstrip("/")
    if url not in _KINDS:
        try:
            _served_entries(role, [url + "/models"])
        except ModelError:
            if strict:
                raise
            _KINDS[url] = "openai"
    return _KINDS.get(url, "openai")


def server_slots(role: Role) -> int | None:
    """How many requests a llama.cpp server decodes at once: llama.cpp's own ``llama-server`` reports it as
    ``total_slots`` at ``GET /props`` (its ``--parallel``); llama-cpp-python's ``python -m llama_cpp.server`` has no
    ``/props`` (404) and decodes one request at a time (1). None where the server cannot say (it could not be
    reached: the requests will tell). Asked once per process and server (the first of ``base_urls``: replicas
    run alike). Only for a ``llamacpp`` server: vLLM, SGLang and the OpenAI API batch what is in flight."""
    if not role.settings.urls:
        return None
    url = role.settings.urls[0].rstrip("/")
    if url not in _SLOTS:
        root = url[:-3] if url.endswith("/v1") else url
        try:
            with urllib.request.urlopen(root + "/props", timeout=min(role.settings.timeout_s, 10.0)) as reply:
                slots = orjson.loads(reply.read()).get("total_slots")
            _SLOTS[url] = slots if isinstance(slots, int) and not isinstance(slots, bool) and slots >= 1 else None
        except urllib.error.HTTPError as err:
            if err.code != 404:
                return None  # a server error now: asked again by the next backend, not remembered
            _SLOTS[url] = 1
        except (OSError, ValueError, AttributeError):
            return None  # not reachable now (a server still starting): asked again, not remembered as "cannot say"
    return _SLOTS[url]


def in_flight(role: Role, server: str, concurrency: int) -> int:
    """Requests to keep in flight: ``concurrency``, held to what a ``llamacpp`` server decodes at once
    (:func:`server_slots`), said in the stage log. More would only wait in the server's queue, where one waiting
    longer than ``timeout_s`` is retried while the server still decodes the first copy."""
    slots = server_slots(role) if server == "llamacpp" else None
    if slots is None or slots >= concurrency:
        return concurrency
    how = "its GET /props total_slots" if slots > 1 else "llama-cpp-python's server: no GET /props"
    print(f"roles.{role.name}: the server decodes {slots} request{'' if slots == 1 else 's'} at a time ({how}): "
          f"{slots} in flight, not roles.{role.name}.concurrency {concurrency}", flush=True)
    return slots


def served_model_identity(role: Role) -> dict[str, Any]:
    """Pin an openai role's model: ``GET {base_url}/models`` must list ``role.model``; the identity is the
    served model id (plus ``revision`` when the role gives one: the label of the weights, which a server does not
    always report; warned about when it reports nothing that changes with them), never the URL, so moving a server
    keeps the cache. With ``base_urls`` every replica must list the model, with the same weights
    (``root``) and context (``max_model_len``) where the server says; otherwise one cache key would
    stand for two models, and the role is refused. ``served_identity`` (a server without ``GET /models``) is
    taken as stated, and the server is not asked."""
    if not role.settings.urls:
        raise ValueError(f"params.yaml roles.{role.name}: backend 'openai' needs base_url (or base_urls)")
    if role.settings.served_identity is not None:  # a server without GET /models: the identity the user states
        return {"served_model": role.model, "stated": role.settings.served_identity,
                **({"revision": role.revision} if role.revision else {})}
    urls = [u.rstrip("/") + "/models" for u in role.settings.urls]
    entries = _served_entries(role, urls)
    for url, entry in zip(urls[1:], entries[1:]):
        if entry != entries[0]:
            raise ModelError(
                f"params.yaml roles.{role.name}.base_urls: the replicas serve different models under the name "
                f"{role.model!r}: {urls[0]} reports {entries[0]}, {url} reports {entry}; every replica must run "
                f"the same weights and max_model_len (one cache key stands for all of them)")
    if not entries[0] and not role.revision:
        # the name alone stands for the model: new weights served under it would get the old cached answers
        log.warning("roles.%s: %s reports nothing about %r that changes with its weights (no %s); answers are "
                    "cached under the name alone, so new weights served under it reuse them: set roles.%s.revision "
                    "to a label you change with the weights (docs/how-to/models.md)", role.name, urls[0], role.model,
                    " / ".join(_MODEL_FIELDS), role.name)
    ident: dict[str, Any] = {"served_model": role.model}
    if role.revision:
        ident["revision"] = role.revision
    kind = server_kind(role)
    if kind != "openai":  # what the server is decides the parameters each control and constraint is sent in
        ident["server"] = kind
    return ident


def _served_entries(role: Role, urls: list[str]) -> list[dict[str, Any]]:
    """``GET`` each replica's model list (concurrently); per url, the ``_MODEL_FIELDS`` its entry for
    ``role.model`` reports. A server that cannot be reached, answers an error or does not serve the model is a
    :class:`ModelError` naming it; the key never appears in a message."""
    import aiohttp

    key = api_key(role)
    headers = {"Accept": "application/json", "User-Agent": "evolforge"}
    if key:
        headers["Authorization"] = f"Bearer {key}"

    async def fetch_all() -> list[tuple[int, bytes] | BaseException]:
        timeout = aiohttp.ClientTimeout(total=role.settings.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def fetch(url: str) -> tuple[int, bytes]:
                async with session.get(url, headers=headers, allow_redirects=False) as resp:
                    return resp.status, await resp.read()

            return await asyncio.gather(*(fetch(u) for u in urls), return_exceptions=True)

    def redact(text: str) -> str:
        return text.replace(key, "<redacted>") if key else text

    entries: list[dict[str, Any]] = []
    for url, answer in zip(urls, asyncio.run(fetch_all())):
        if isinstance(answer, (aiohttp.ClientError, OSError, asyncio.TimeoutError)):
            raise ModelError(f"params.yaml roles.{role.name}: cannot list the models of {url}: "
                             f"{redact(f'{type(answer).__name__}: {answer}')}")
        if isinstance(answer, BaseException):
            raise answer
        status, raw = answer
        if status != 200:
            raise ModelError(f"params.yaml roles.{role.name}: GET {url} answered HTTP {status}: {redact(preview(raw))}")
        try:
            served = {m["id"]: m for m in orjson.loads(raw)["data"]}
        except (orjson.JSONDecodeError, KeyError, TypeError) as err:
            raise ModelError(f"params.yaml roles.{role.name}: GET {url}: not a model list ({err}): "
                             f"{redact(preview(raw))}") from None
        if role.model not in served:
            raise ModelError(f"params.yaml roles.{role.name}.model: {role.model!r} is not served at {url}; "
                             f"it serves {sorted(served)[:20]}")
        entry = served[role.model] if isinstance(served[role.model], dict) else {}
        _KINDS[url.rsplit("/models", 1)[0]] = kind_of(entry)
        entries.append({f: entry[f] for f in _MODEL_FIELDS if f in entry})
    return entries
