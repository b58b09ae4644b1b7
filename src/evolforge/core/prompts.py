"""Prompt templates: Jinja files under ``prompts/``, rendered with ``StrictUndefined``.

A template's hash (sha256 of its source, first 16 hex digits) goes into cache keys and artifact
metadata, so editing a prompt invalidates exactly the calls that used it.

A library reads, compiles and hashes each template once (Jinja's ``auto_reload`` is off: a stage renders
one template for thousands of rows and the files do not change under a running stage).

>>> env = PromptLibrary("prompts")                              # doctest: +SKIP
>>> env.render("respond/response.j2", instruction="Add 2 and 3", input="")  # doctest: +SKIP
'Given the following instruction, ...'
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

import jinja2

# The repository's prompts/ folder; stages pass it explicitly, tests and the tiny-model builder use this.
DEFAULT_PROMPTS_DIR = Path(__file__).resolve().parents[3] / "prompts"


class PromptLibrary:
    """Renders templates from one folder; a missing variable is an error, never an empty string."""

    def __init__(self, root: str | Path = DEFAULT_PROMPTS_DIR):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"prompts folder not found: {self.root}")
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(self.root)),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
            autoescape=False,
            auto_reload=False,  # no stat() of the template file per render
        )
        self._templates: dict[str, jinja2.Template] = {}
        self._hashes: dict[str, str] = {}

    def source(self, name: str) -> str:
        return (self.root / name).read_text(encoding="utf-8")

    def hash(self, name: str) -> str:
        """sha256 of the template source, first 16 hex digits (computed once per library)."""
        if name not in self._hashes:
            self._hashes[name] = hashlib.sha256(self.source(name).encode("utf-8")).hexdigest()[:16]
        return self._hashes[name]

    def template(self, name: str) -> jinja2.Template:
        if name not in self._templates:
            template = self.env.get_template(name)
            # Jinja keeps a template's globals as a ChainMap over the environment's, and copies it on every
            # render (a third of a render's time); a plain dict of the same names renders the same. It is a
            # snapshot: globals added to the environment later do not reach this template (none are)
            template.globals = dict(template.globals)
            self._templates[name] = template
        return self._templates[name]

    def render(self, name: str, /, **variables) -> str:
        try:
            return self.template(name).render(**variables).strip()
        except jinja2.UndefinedError as err:
            raise ValueError(f"prompt {self.root / name}: {err.message}") from err

    @cached_property
    def names(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*.j2"))
