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

from evolforge.config.bounds import Refusal

# The repository's prompts/ folder; stages pass it explicitly, tests and the tiny-model builder use this.
DEFAULT_PROMPTS_DIR = Path(__file__).resolve().parents[3] / "prompts"


class PromptError(Refusal, ValueError):
    """A template that cannot be used: missing, not UTF-8, empty, a syntax error, or a variable it needs
    that the stage does not give. The message names the file (and the line, where Jinja knows it)."""


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
        self._sources: dict[str, str] = {}
        self._hashes: dict[str, str] = {}

    def source(self, name: str) -> str:
        """The template's text, read once per library."""
        if name in self._sources:
            return self._sources[name]
        path = self.root / name
        try:
            self._sources[name] = path.read_text(encoding="utf-8")
            return self._sources[name]
        except FileNotFoundError:
            raise PromptError(f"prompt {path}: no such template") from None
        except UnicodeDecodeError as err:
            raise PromptError(f"prompt {path}: not UTF-8 text (byte {err.start}: {err.reason})") from None

    def hash(self, name: str) -> str:
        """sha256 of the template source, first 16 hex digits (computed once per library)."""
        if name not in self._hashes:
            self._hashes[name] = hashlib.sha256(self.source(name).encode("utf-8")).hexdigest()[:16]
        return self._hashes[name]

    def template(self, name: str) -> jinja2.Template:
        if name not in self._templates:
            if not self.source(name).strip():
                raise PromptError(f"prompt {self.root / name}: the template is empty")
            try:
                template = self.env.get_template(name)
            except jinja2.TemplateError as err:
                raise self._refusal(name, err) from None
            # Jinja keeps a template's globals as a ChainMap over the environment's, and copies it on every
            # render (a third of a render's time); a plain dict of the same names renders the same. It is a
            # snapshot: globals added to the environment later do not reach this template (none are)
            template.globals = dict(template.globals)
            self._templates[name] = template
        return self._templates[name]

    def render(self, name: str, /, **variables) -> str:
        try:
            return self.template(name).render(**variables).strip()
        except jinja2.TemplateError as err:  # includes are loaded as the template renders
            raise self._refusal(name, err) from None

    def _refusal(self, name: str, err: jinja2.TemplateError) -> PromptError:
        if isinstance(err, jinja2.TemplateSyntaxError):  # in this file or one it includes
            where = Path(err.filename) if err.filename else self.root / name
            return PromptError(f"prompt {where}, line {err.lineno}: {err.message}")
        if isinstance(err, jinja2.TemplateNotFound):  # an include or import of a missing file
            return PromptError(f"prompt {self.root / name}: it includes {err.name!r}, which is not in {self.root}")
        return PromptError(f"prompt {self.root / name}: {err.message}")  # a variable the stage does not give

    @cached_property
    def names(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*.j2"))
