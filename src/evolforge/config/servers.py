"""What the roles served by OpenAI-compatible servers are asked to do, checked against what each server offers
(and the in-process roles against what their backend offers: config/backend_specs.py), before any request: every
generation control where it is written (``evolve.controls``, ``optimize.controls``, ``roles.<role>``) and
judge.probabilities. ``evolforge check`` runs it without asking any server (a role whose
``server`` is auto is held to what every kind offers); the models stage runs it with the kinds it found."""

from __future__ import annotations

from typing import Any, Mapping

from evolforge.config.backend_specs import spec_of
from evolforge.config.roles import Controls, Role, controls_problems


def _stage_controls(params: Mapping[str, Any], roles: Mapping[str, Role]) -> list[tuple[str, Controls]]:
    """(role, controls) of each kind of call the stages make, sources recorded."""
    evolve, optimize = params.get("evolve") or {}, params.get("optimize") or {}
    calls = [(name, role.controls) for name, role in roles.items()]
    if "evolver" in roles:
        evolver = roles["evolver"].controls
        if evolve.get("strategy", "auto") == "evol":
            calls.append(("evolver", evolver.merged(evolve.get("controls"), "evolve.controls")))
        method = evolve.get("method_controls")
        calls.append(("evolver", evolver.merged(evolve.get("controls"), "evolve.controls") if method is None
                      else evolver.merged(method, "evolve.method_controls")))
    if "optimizer" in roles:
        calls.append(("optimizer", roles["optimizer"].controls.merged(optimize.get("controls"), "optimize.controls")))
    return calls


def server_problems(params: Mapping[str, Any], kinds: Mapping[str, str] | None = None) -> list[str]:
    """One message per setting an openai role's server, or an in-process role's backend, cannot honour (a stage's
    controls; a role's own are refused when it loads). ``kinds``: role -> the server kind found (vllm | llamacpp
    | openai); without it, a role's ``server`` setting, and for auto what no kind offers."""
    roles = {}
    for name, fields in (params.get("roles") or {}).items():
        if isinstance(fields, Mapping) and spec_of(str(fields.get("backend"))).runs:
            try:
                roles[name] = Role.from_params(name, fields)
            except ValueError:
                continue  # the loader reports it
    kinds = dict(kinds or {})

    def backend(name: str) -> str:
        if not roles[name].served:
            return roles[name].backend
        kind = kinds.get(name) or roles[name].settings.server
        return f"openai:{kind}" if kind in ("vllm", "llamacpp") else "openai:any" if kind == "auto" else "openai"

    problems: list[str] = []
    for name, controls in _stage_controls(params, roles):
        for problem in controls_problems(backend(name), controls, f"roles.{name}"):
            if problem not in problems:
                problems.append(problem)
    judge = params.get("judge") or {}
    if "judge" in roles and judge.get("probabilities"):
        kind = backend("judge")
        if not spec_of(kind).ranks:
            problems.append(f"judge.probabilities: the judge's {'server' if roles['judge'].served else 'backend'} "
                            f"(roles.judge) cannot score answers by their probabilities; set judge.probabilities: "
                            f"false")
        elif kind == "openai:vllm" and not roles["judge"].settings.tokenizer:
            # vLLM's echoed prompt log-probabilities; the other kinds walk top_logprobs (no tokenizer needed)
            problems.append("judge.probabilities: on vLLM's server it needs roles.judge.tokenizer (the served model's "
                            "tokenizer, with its chat template) and roles.judge.max_model_len, to put each answer "
                            "after the prompt; or set judge.probabilities: false")
    return problems


def refuse_unservable(params: Mapping[str, Any], entries: Mapping[str, Mapping[str, Any]]) -> None:
    """The models stage's check: with the server kinds its ``models/identity.json`` ``entries`` record, raise
    :class:`ParamsError` listing every setting a role's server cannot honour."""
    from evolforge.config.bounds import ParamsError

    kinds = {n: e["identity"].get("server", "openai") for n, e in entries.items() if spec_of(e["backend"]).served}
    problems = server_problems(params, kinds)
    if problems:
        raise ParamsError(problems)
