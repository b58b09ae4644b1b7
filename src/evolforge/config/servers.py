"""What the roles served by OpenAI-compatible servers are asked to do, checked against what each server offers (and
the in-process roles against what their backend offers: config/backend_specs.py), before any request: every
generation control where it is written (``evolve.controls``, ``optimize.controls``, ``roles.<role>``), and the
judge's rankings (``judge.probabilities``, ``verify.probabilities``) whatever its backend. ``evolforge check`` runs it
without asking any server (a role whose ``server`` is auto is held to what every kind offers); the models stage runs
it with the kinds it found; the verify stage checks its own ranking with the kind its judge's identity records
(:meth:`Role.ranking_problems`).

What the stages ask that the params as written do not say (a section's defaults live in its step's settings
class, which this layer does not import) comes typed, as :class:`Asked` (:func:`evolforge.schema.asked_of_roles`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from evolforge.config.backend_specs import spec_of
from evolforge.config.roles import Controls, Role, controls_problems


@dataclass(frozen=True)
class Asked:
    """What the stages will ask of the roles, from their typed sections: the evolve rounds' ``strategy`` and the
    settings that ask the judge to rank answers by their probabilities (``judge.probabilities`` when true,
    ``verify.probabilities`` when verify is enabled and it is true)."""

    strategy: str
    rankings: tuple[str, ...]


def _stage_controls(params: Mapping[str, Any], roles: Mapping[str, Role],
                    asked: Asked) -> list[tuple[str, Controls]]:
    """(role, controls) of each kind of call the stages make, sources recorded."""
    evolve, optimize = params.get("evolve") or {}, params.get("optimize") or {}
    calls = [(name, role.controls) for name, role in roles.items()]
    if "evolver" in roles:
        evolver = roles["evolver"].controls
        if asked.strategy == "evol":  # the hand-written methods' calls (the others: the step format's, below)
            calls.append(("evolver", evolver.merged(evolve.get("controls"), "evolve.controls")))
        method = evolve.get("method_controls")
        calls.append(("evolver", evolver.merged(evolve.get("controls"), "evolve.controls") if method is None
                      else evolver.merged(method, "evolve.method_controls")))
    if "optimizer" in roles:
        calls.append(("optimizer", roles["optimizer"].controls.merged(optimize.get("controls"), "optimize.controls")))
    return calls


def server_problems(params: Mapping[str, Any], asked: Asked, kinds: Mapping[str, str] | None = None) -> list[str]:
    """One message per setting a role cannot honour where it runs: a control an openai role's server, or an
    in-process role's backend, does not offer (a stage's controls; a role's own are refused when it loads), a
    ranking (:attr:`Asked.rankings`) the judge's backend cannot make. ``kinds``: role -> the server kind found
    (vllm | llamacpp | openai); without it, a role's ``server`` setting, and for auto what no kind offers."""
    roles, judge = {}, None
    for name, fields in (params.get("roles") or {}).items():
        try:
            if isinstance(fields, Mapping) and spec_of(str(fields.get("backend"))).runs:
                roles[name] = Role.from_params(name, fields)
            if name == "judge" and asked.rankings:
                judge = roles.get(name) or Role.from_params(name, fields)
        except ValueError:
            continue  # the loader reports it
    kinds = dict(kinds or {})

    def backend(name: str) -> str:
        if not roles[name].served:
            return roles[name].backend
        kind = kinds.get(name) or roles[name].settings.server
        return f"openai:{kind}" if kind in ("vllm", "llamacpp") else "openai:any" if kind == "auto" else "openai"

    problems: list[str] = []
    for name, controls in _stage_controls(params, roles, asked):
        for problem in controls_problems(backend(name), controls, f"roles.{name}"):
            if problem not in problems:
                problems.append(problem)
    if judge is not None:
        checked = backend("judge") if judge.served else judge.control_backend
        for setting in asked.rankings:
            problems += judge.ranking_problems(setting, checked)
    return problems


def refuse_unservable(params: Mapping[str, Any], entries: Mapping[str, Mapping[str, Any]], asked: Asked) -> None:
    """The models stage's check: with the server kinds its ``models/identity.json`` ``entries`` record, raise
    :class:`ParamsError` listing every setting a role's server cannot honour."""
    from evolforge.config.bounds import ParamsError

    kinds = {n: e["identity"].get("server", "openai") for n, e in entries.items() if spec_of(e["backend"]).served}
    problems = server_problems(params, asked, kinds)
    if problems:
        raise ParamsError(problems)
