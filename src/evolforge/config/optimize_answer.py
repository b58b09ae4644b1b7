"""What the optimization turn's answer must hold for a candidate to parse, checked against its controls before
any request (``evolforge check`` and the models stage, through :func:`evolforge.schema.cross_checks`, and the
optimize stage). A config module: checking a whole params file loads only the config and the steps' settings.

A candidate is the text of a ```` ```Optimized Method ```` block (:func:`evolforge.steps.optimize.candidates.
parse_optimized_method`). The answer is ``assistant_prefix`` (when set) followed by what the model writes, and
every backend applies ``stop`` and ``banned_strings`` to what the model writes after the prefix (llama.cpp's
server through its grammar: :func:`evolforge.llm.backends.openai.request.text_grammar`). So a stop or banned
string inside the prefix is harmless, but one inside the part of the block's opening the model must write
itself ends or forbids every block: every candidate would be empty, and the optimization would run its steps
for nothing.

>>> from evolforge.config.roles import Controls
>>> format_problems(Controls(assistant_prefix="```Optimized Method\\n", stop=("```",)))
[]
>>> format_problems(Controls(stop=("```",)))[0].startswith("optimize.controls.stop: '```' is in the block's")
True
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from evolforge.config.roles import Controls, load_role

OPENING = "```Optimized Method"  # as the optimization prompt asks for it (prompts/optimize/optimization.j2)
# the opening fence the parser accepts: any case, with or without spaces or an underscore
OPENER = re.compile(r"```[ \t]*optimized[ _\t]*method[ \t]*:?[ \t]*\n?", re.IGNORECASE)


def to_write(prefix: str) -> str:
    """The part of the block's opening the model writes after ``prefix``: none when the prefix opens the block,
    the rest when the prefix is its start ("```"), else all of it."""
    if OPENER.search(prefix):
        return ""
    for k in range(len(OPENING), 0, -1):
        if prefix.endswith(OPENING[:k]):
            return OPENING[k:]
    return OPENING


def format_problems(controls: Controls, where: str = "optimize.controls") -> list[str]:
    """One message per stop or banned string that would keep every candidate from parsing."""
    prefix = controls.assistant_prefix or ""
    needed = to_write(prefix)
    problems = []
    for name, strings in (("stop", controls.stop), ("banned_strings", controls.banned_strings)):
        for s in strings:
            if s and s in needed:
                written = (f"after assistant_prefix {prefix!r}" if prefix else "with no assistant_prefix")
                problems.append(
                    f"{controls.source(name, where)}.{name}: {s!r} is in the block's opening {OPENING!r}, which the "
                    f"optimizer writes itself {written}, so every candidate would be "
                    f"{'cut before its method' if name == 'stop' else 'kept from being written'}; start the answer "
                    f"inside the block (optimize.controls.assistant_prefix: \"{OPENING}\\n\"), or remove {s!r}")
    return problems


def answer_problems(params: Mapping[str, Any]) -> list[str]:
    """:func:`format_problems` of the optimization turn's controls (roles.optimizer's under optimize.controls),
    when the optimize stage makes calls (``evolve.strategy: auto``)."""
    evolve, optimize = params.get("evolve") or {}, params.get("optimize") or {}
    if not isinstance(evolve, Mapping) or evolve.get("strategy", "evol") != "auto":
        return []
    try:
        controls = load_role(params, "optimizer").controls.merged(
            optimize.get("controls") if isinstance(optimize, Mapping) else None, "optimize.controls")
    except (ValueError, TypeError):
        return []  # the sections' own checks name what is wrong (a missing role among them)
    return format_problems(controls)
