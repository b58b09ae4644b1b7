"""The LLM layer's side of a dry run (``evolforge plan``, docs/explanation/llm.md "Plan before you pay").

When ``EVOLFORGE_DRY_RUN`` names a file, no request reaches a backend (no model loads): every generate
call looks its requests up in the call cache as usual and, for the requests the cache cannot answer,
appends one JSON line to that file -- role, call label, how many distinct requests, their prompt tokens
and their ``max_tokens`` -- and answers them with a stand-in: a recent real answer of the same role and
call label (one of the 32 kept in ``spend_samples``, evolforge.llm.budget, picked by the request's key
and made unique), so that a stage's later calls that depend on these answers (an evolution's checks, the
next stage's requests) are asked and counted too, at about the rate real answers passed; without any
recorded answer the item fails as ``dry_run`` and its dependent calls are not seen.

Prompt tokens are counted with the role's tokenizer where one is known (an openai role's ``tokenizer``;
an hf, vllm or ray role's model folder, which holds it), with its chat template, as the server counts
them. Otherwise they are estimated from the role's prompt tokens per UTF-8 byte observed in the spend
records, or, with none yet, as bytes / 4 plus 4 per message (the usual rule of thumb for English with a
BPE tokenizer; within about 20% for English prose).

A role that ``models/identity.json`` does not pin as params name it (its roles were pointed at a server, or at
another model, and ``dvc repro models`` has not run since) is counted from params alone: the identity the models
stage would pin, read from params without asking the server (:func:`params_identity`), its prompts counted with
the tokenizer the role names; its line says ``pinned: false``, and the plan marks its figures as estimates
(the served model may answer to a cached identity, or not).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from evolforge.config.backend_specs import spec_of
from evolforge.config.roles import Role
from evolforge.llm.requests import ChatRequest
from evolforge.llm.budget import SpendLedger, call_label, prompt_bytes
from evolforge.llm.registry import backend_attribute

DRY_RUN_ENV = "EVOLFORGE_DRY_RUN"
DRY_RUN = "dry_run"  # failure_reason of a dry run's item with no stand-in answer
BYTES_PER_TOKEN = 4.0  # the estimate without a tokenizer or observations
TOKENS_PER_MESSAGE = 4  # the chat template's tokens around one message, in that estimate

_TOKENIZERS: dict[str, Any] = {}


def active() -> Path | None:
    """The file a dry run records into, None outside a dry run."""
    path = os.environ.get(DRY_RUN_ENV)
    return Path(path) if path else None


def params_identity(role: Role) -> dict[str, Any]:
    """The identity a role would be pinned to, from params alone (no server asked, no weights read): a served
    model's name (with ``revision`` and ``server`` where params give them, as the models stage records them); a
    local model's path or hub id (a key no pinned run shares: every call counts as a miss)."""
    if role.backend == "openai":
        return {"served_model": role.model, **({"revision": role.revision} if role.revision else {}),
                **({"server": role.settings.server} if role.settings.server in ("vllm", "llamacpp") else {})}
    return {"unpinned": role.model, **({"revision": role.revision} if role.revision else {})}


def unpinned_note(roles: list[str]) -> list[str]:
    """The plan's note on the roles a dry run counted from params alone (none when every role was pinned)."""
    names = ", ".join(f"roles.{r}" for r in roles)
    return [f"not pinned yet (marked *): {names}; models/identity.json does not pin them as params.yaml names "
            f"them (`dvc repro models` has not run since): their requests are counted from params alone, with the "
            f"tokenizer each role names: estimates"] if roles else []


def record(role: Role, cache_path: Path | None, requests: Sequence[ChatRequest], missing: dict[str, list[int]],
           desc: str, pinned: bool = True, server: str | None = None) -> dict[str, str | None]:
    """Record the misses of one generate call; returns {key: stand-in answer or None}. ``pinned``: False for a
    role models/identity.json does not pin yet, whose counts are therefore estimates. ``server``: an openai role's
    server kind (its identity's), which decides how many HTTP requests a ranking sends."""
    label = call_label(desc)
    ledger = SpendLedger(cache_path) if cache_path is not None and Path(cache_path).exists() else None
    counter = PromptCounter(role, ledger)
    firsts = [requests[idx[0]] for idx in missing.values()]
    line = {"role": role.name, "backend": role.backend, "label": label, "requests": len(firsts),
            "sent": requests_sent(role, firsts, server, counter.tokenizer),
            "prompt_tokens": sum(counter.count(r) for r in firsts), "prompt_bytes": sum(map(prompt_bytes, firsts)),
            "max_tokens": sum(0 if r.rank else r.max_tokens for r in firsts),  # a ranking decodes nothing
            "counted": counter.how, "pinned": pinned,
            # the prices the stage's role has (a stage may make a role of its own, as compare's ``compare_tuned``,
            # which params.yaml does not name): the plan prices the call with them
            "prices": {"prompt": role.price_per_mtok_prompt, "completion": role.price_per_mtok_completion,
                       "cached_prompt": getattr(role, "price_per_mtok_cached_prompt", None)}}
    with open(active(), "a", encoding="utf-8") as f:  # type: ignore[arg-type]
        f.write(json.dumps(line) + "\n")
    samples = ledger.samples(role.name, label) if ledger is not None else []
    if ledger is not None:
        ledger.close()
    return {k: stand_in(samples, k, requests[idx[0]])
            for k, idx in missing.items()} if samples else dict.fromkeys(missing)


def requests_sent(role: Role, requests: Sequence[ChatRequest], server: str | None, tokenizer: Any) -> int | None:
    """The HTTP requests a server role's backend sends for ``requests`` (its class's ``requests_sent``, imported by
    name as the registry imports backends); None for an in-process backend, or where the backend cannot tell."""
    spec = spec_of(role.backend)
    if not spec.served or spec.runs is None:
        return None
    return backend_attribute(*spec.runs.split(":")).requests_sent(requests, server, tokenizer)


def stand_in(samples: list[str], key: str, request: ChatRequest) -> str:
    """A recorded answer picked by the request's key; a free answer is made unique with the key, so that
    later calls on it (the next round's evolution) are distinct requests, as real answers would be."""
    text = samples[int(key[:8], 16) % len(samples)]
    return text if request.choices is not None else f"{text} [{key[:8]}]"


class PromptCounter:
    """Prompt tokens of a role's requests: its tokenizer, else the observed ratio, else bytes / 4."""

    def __init__(self, role: Role, ledger: SpendLedger | None = None):
        self.tokenizer = role_tokenizer(role)
        self.tokens_per_byte = None
        self.how = "tokenizer"
        if self.tokenizer is None:
            seen = ledger.spent(role=role.name) if ledger is not None else None
            if seen is not None and seen.prompt_bytes and seen.prompt_tokens:
                self.tokens_per_byte = seen.prompt_tokens / seen.prompt_bytes
                self.how = "observed ratio"
            else:
                self.how = "bytes/4"

    def count(self, request: ChatRequest) -> int:
        if self.tokenizer is not None:
            text = self.tokenizer.apply_chat_template(request.message_dicts, tokenize=False, add_generation_prompt=True)
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if self.tokens_per_byte is not None:
            return round(prompt_bytes(request) * self.tokens_per_byte)
        return round(prompt_bytes(request) / BYTES_PER_TOKEN) + TOKENS_PER_MESSAGE * len(request.messages)


def role_tokenizer(role: Role) -> Any:
    """The tokenizer a role's prompts are counted with, or None where none can be loaded here."""
    name = role.settings.tokenizer if role.backend == "openai" else role.model
    if not name or (role.backend != "openai" and not Path(name).is_dir()):
        return None  # a hub id: no download in a dry run
    if name not in _TOKENIZERS:
        try:
            from evolforge.core.models import load_tokenizer

            tokenizer = load_tokenizer(name, role.revision if role.backend != "openai" else None)
            _TOKENIZERS[name] = tokenizer if getattr(tokenizer, "chat_template", None) else None
        except (OSError, ValueError):
            _TOKENIZERS[name] = None
    return _TOKENIZERS[name]


__all__ = ["DRY_RUN", "DRY_RUN_ENV", "PromptCounter", "active", "params_identity", "record", "requests_sent",
           "role_tokenizer", "unpinned_note"]
