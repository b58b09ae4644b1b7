"""The leaf of the configuration, importing nothing of evolforge: the errors written for people, the bounds
params fields are typed with, and the values no params file may hold (secrets).

- :class:`Refusal` is the base of every error whose message is written for people: bad params
  (:class:`ParamsError`), bad data (``DataError``), a missing or unusable model (``ModelError``,
  ``FetchError``), a broken prompt template (``PromptError``). Each names the file, the row, the field and the
  rule; a stage prints one as it is, with no traceback (:func:`evolforge.core.stage.run_stage`).
- The bounds are ``Annotated`` types whose ``annotated_types`` markers pydantic reads (``PositiveInt`` is an
  ``int >= 1``, ``Fraction`` a share ``0 < x <= 1``); :class:`Described` words a constraint that no marker
  can (a pattern). :func:`annotation_at` and :func:`field_names` find the declared type and the allowed keys
  below a settings class, for the messages that name them.
- Secrets are recognised by value (:func:`find_secrets`): params.yaml is committed, copied into ``dvc.lock``,
  experiment commits and DVC's run-cache, so a key written anywhere in it would leak -- whatever the key's name.

Every other module of the configuration (the settings classes, the roles, the loader, the messages) builds
on this one without a cycle.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import parse_qsl, urlsplit

from annotated_types import Ge, Gt, Le, MinLen
from typing_extensions import is_typeddict  # also knows typing_extensions.TypedDict (pydantic's)


class Refusal(Exception):
    """Refused input: the message says what to fix, so it is shown as it is (exit 2, no traceback)."""


# Bounds for section fields (pydantic reads these annotated_types markers).
PositiveInt = Annotated[int, Ge(1)]
NonNegativeInt = Annotated[int, Ge(0)]
NonNegativeFloat = Annotated[float, Ge(0)]
PositiveFloat = Annotated[float, Gt(0)]
Fraction = Annotated[float, Gt(0), Le(1)]  # a share of the items: 0 < x <= 1
Probability = Annotated[float, Ge(0), Le(1)]
NonEmptyStr = Annotated[str, MinLen(1)]

DEFAULT_FILE = "params.yaml"


class ParamsError(Refusal, ValueError):
    """params.yaml breaks the schema. ``problems`` holds one line per problem: ``path: what is wrong``."""

    def __init__(self, problems: list[str], file: str | Path = DEFAULT_FILE):
        self.file, self.problems = str(file), list(problems)
        if len(self.problems) == 1:
            super().__init__(f"{self.file} {self.problems[0]}")
        else:
            super().__init__(f"{self.file}: {len(self.problems)} problems\n"
                             + "\n".join(f"  {p}" for p in self.problems))


@dataclasses.dataclass(frozen=True)
class Described:
    """``Annotated`` metadata: how :func:`evolforge.config.messages.describe` words a constraint it cannot
    read (a pattern)."""

    words: str


# ---------------------------------------------------------------------------------------------------
# reading a settings class's annotations


def settable(cls: type) -> list[dataclasses.Field]:
    """The fields params may set: a field with metadata ``{"params": False}`` is set by code (a role's name)."""
    return [f for f in dataclasses.fields(cls) if f.init and f.metadata.get("params", True)]


def strip_optional(tp: Any) -> list[Any]:
    """The members of a union other than None (``int | None`` -> [int]); any other type as a list of one."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def base(tp: Any) -> Any:
    """The type under an ``Annotated`` (its bounds dropped)."""
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


def annotation_at(cls: Any, path: tuple) -> Any:
    """The declared type at ``path`` below ``cls`` (None when it cannot be told)."""
    tp = cls
    for step in path:
        nxt = None
        for member in strip_optional(base(tp)):
            member = base(member)
            origin = typing.get_origin(member)
            if dataclasses.is_dataclass(member) or is_typeddict(member):
                nxt = typing.get_type_hints(member, include_extras=True).get(step)
            elif origin is dict:
                nxt = typing.get_args(member)[1]
            elif origin is list and isinstance(step, int):
                nxt = typing.get_args(member)[0]
            if nxt is not None:
                break
        if nxt is None:
            return None
        tp = nxt
    return tp


def field_names(tp: Any) -> list[str]:
    """The keys params may write in a mapping of type ``tp`` (a settings class, a TypedDict, a dict keyed by a
    Literal), sorted; [] when the keys are free."""
    for member in strip_optional(base(tp)) if tp is not None else []:
        member = base(member)
        if dataclasses.is_dataclass(member):
            return sorted(f.name for f in settable(member))
        if is_typeddict(member):
            return sorted(typing.get_type_hints(member))
        if typing.get_origin(member) is dict and typing.get_origin(typing.get_args(member)[0]) is Literal:
            return sorted(typing.get_args(typing.get_args(member)[0]))
    return []


# ---------------------------------------------------------------------------------------------------
# secrets: recognised by value, reported by path and kind, never shown


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
    """(path, kind) of every secret-shaped value below ``value``; ``where`` prefixes the paths.

    Every value is walked (nested mappings and lists, keys included); the *path* and the *kind* of each
    secret-shaped one are reported, never the value. Recognised:

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
