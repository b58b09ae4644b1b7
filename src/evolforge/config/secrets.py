"""Secrets are recognised by value: params.yaml is committed, copied into ``dvc.lock``, experiment commits
and DVC's run-cache, so a key written anywhere in it would leak -- whatever the key's name.

:func:`find_secrets` walks every value (nested mappings and lists, keys included) and reports the *path*
and the *kind* of each secret-shaped value, never the value. It recognises:

- well-known key formats anywhere in a string: OpenAI/Anthropic ``sk-...``, Hugging Face ``hf_...``,
  ``Bearer <token>``, AWS access key ids (``AKIA...``), GitHub (``ghp_...``, ``github_pat_...``), Google
  (``AIza...``), Slack (``xox?-...``), JSON web tokens, PEM private keys;
- URLs with credentials: a user or password part, a query parameter named like a credential
  (``?api_key=...``, ``&sig=...``), a long random-looking path segment (webhook and bot URLs);
- ``name=value`` / ``name: value`` inside a string where the name ends in a credential word and the value
  is a long random-looking token (``"...,api_key=3f9aK...,"``);
- a mapping key that names a credential (``password``, ``api_key``, ``hf_token``, ``Authorization``...)
  holding any non-empty text.

Ordinary engine settings are accepted: ``max_num_batched_tokens: 8192``, ``add_bos_token: true``,
``tokenizer: org/model``, ``pad_token: "<pad>"``, a 40-hex commit ``revision``.

>>> find_secrets({"roles": {"evolver": {"extra": {"note": "sk-" + "a1B2" * 6}}}})
[('roles.evolver.extra.note', 'an API key (sk-...)')]
>>> find_secrets({"extra": {"max_num_batched_tokens": 8192, "add_bos_token": True, "tokenizer": "org/tok"}})
[]
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any
from urllib.parse import parse_qsl, urlsplit

PATTERNS: list[tuple[str, re.Pattern]] = [
    ("an API key (sk-...)", re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-]{16,}")),
    ("a Hugging Face token (hf_...)", re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{20,}")),
    ("a bearer token", re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=\-]{3,}")),
    ("an AWS access key id", re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA)[A-Z0-9]{16}\b")),
    ("a GitHub token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})")),
    ("a Google API key", re.compile(r"\bAIza[0-9A-Za-z_\-]{35}")),
    ("a Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}")),
    ("a JSON web token", re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]+")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
]

# words that make a name a credential's name (the last word counts: `api_key`, `hf_token`, not `tokenizer`)
_CREDENTIAL_WORDS = {"password", "passwd", "pwd", "secret", "apikey", "authorization", "auth", "bearer",
                     "cookie", "credential", "credentials", "passphrase"}
_KEY_WORDS = {"key", "token"}  # credentials when the word before says so (api_key, access_token, hf_token)
_KEY_QUALIFIERS = {"api", "access", "secret", "private", "auth", "session", "bearer", "hf", "openai", "anthropic",
                   "refresh", "id", "client", "x", "service", "account", "aws", "github", "gh", "sas", "signing"}
_TRANSPARENT = {"header", "headers", "value", "string"}  # `auth_header` names what `auth` does
_QUERY_CREDENTIALS = {"key", "sig", "signature", "code", "token"}  # ?key=... alone is a credential in a URL
# the look-behinds start a name or scheme only where one can start: without them a long run of letters is
# tried from every position, and a 2 MB value takes minutes (quadratic backtracking)
_ASSIGNMENT = re.compile(r"(?<![A-Za-z0-9_.\-])([A-Za-z][A-Za-z0-9_.\-]*)\s*[=:]\s*[\"']?([^\s\"'&;,]+)")
_URL = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>]+")
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9_\-+/=.~]+$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)  # camelCase -> camel Case
    return [w for w in re.split(r"[\s_.\-]+", spaced.lower()) if w]


def credential_name(name: str) -> bool:
    """True for names of credentials: ``api_key``, ``HF_TOKEN``, ``Authorization``, ``password``; the last
    word decides, so ``api_key_env`` (a variable's name), ``max_num_batched_tokens``, ``add_bos_token``,
    ``tokenizer``, ``pad_token`` and ``sort_key`` are not."""
    words = _words(name)
    while len(words) > 1 and words[-1] in _TRANSPARENT:
        words.pop()
    if not words:
        return False
    if words[-1] in _CREDENTIAL_WORDS:
        return True
    return words[-1] in _KEY_WORDS and len(words) > 1 and words[-2] in _KEY_QUALIFIERS


def _random_looking(value: str, min_length: int = 16) -> bool:
    """A long token of mixed characters (Shannon entropy >= 3 bits per character), not a hex digest:
    commit shas and content hashes in params are pins, not secrets."""
    if len(value) < min_length or not _TOKEN_CHARS.match(value) or _HEX.match(value):
        return False
    if not (re.search(r"[0-9]", value) and re.search(r"[A-Za-z]", value)):
        return False
    counts = Counter(value)
    entropy = -sum(c / len(value) * math.log2(c / len(value)) for c in counts.values())
    return entropy >= 3.0


def _url_secret(text: str) -> str | None:
    for candidate in _URL.findall(text):
        try:
            url = urlsplit(candidate)
        except ValueError:
            continue
        if url.username or url.password:
            return "credentials in a URL's user part"
        for name, value in parse_qsl(url.query, keep_blank_values=False):
            if value and (credential_name(name) or name.lower() in _QUERY_CREDENTIALS
                          or _words(name)[-1:] in (["key"], ["token"])):
                return "a credential in a URL's query string"
        if any(_random_looking(seg, 20) for seg in re.split(r"[/:]", url.path)):
            return "a token in a URL's path"
    return None


def secret_kind(text: str) -> str | None:
    """What kind of secret ``text`` holds, or None."""
    for kind, pattern in PATTERNS:
        if pattern.search(text):
            return kind
    kind = _url_secret(text)
    if kind:
        return kind
    for name, value in _ASSIGNMENT.findall(text):
        words = _words(name)
        if (credential_name(name) or words[-1:] in (["key"], ["token"])) and _random_looking(value, 12):
            return f"a token after `{name}=`"
    return None


def find_secrets(value: Any, where: str = "") -> list[tuple[str, str]]:
    """(path, kind) of every secret-shaped value below ``value``; ``where`` prefixes the paths."""
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and secret_kind(key):
                found.append((f"{where or '(top level)'} (a key)", secret_kind(key)))
                continue
            if isinstance(key, str) and credential_name(key) and isinstance(item, str) and item.strip():
                found.append((path, f"a credential (the key `{key}` names one)"))
                continue
            found += find_secrets(item, path)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += find_secrets(item, f"{where}[{i}]")
    elif isinstance(value, str):
        kind = secret_kind(value)
        if kind:
            found.append((where, kind))
    return found


def secret_problems(value: Any, where: str = "") -> list[str]:
    """One line per secret, for :class:`~evolforge.config.bounds.ParamsError` (paths only, never values)."""
    return [f"{path}: holds {kind}; secrets do not belong in params.yaml (it is committed and copied into "
            "dvc.lock and DVC's run-cache): put the secret in an environment variable and name that variable "
            "(roles.<name>.api_key_env)" for path, kind in find_secrets(value, where)]
