"""The params.yaml schema: which sections exist, the class that types each one, and the checks of a whole file.

A stage reads only its own sections (:func:`evolforge.config.loader.load_section` with the class its step
imports), so an edit to one step's settings reruns that step alone. Checking a whole file -- every section,
unknown ones, the rules that span sections -- is this module's job, run by ``evolforge check`` and by the
models stage, which ``dvc repro`` runs first (:func:`load_params`).

To add a section, write its dataclass in its step's settings module (``steps/<step>/settings.py``; the
sections of no step in :mod:`~evolforge.config.runtime`, ``data``, ``fetch_model`` and ``training``): typed fields with
defaults, bounds from :mod:`evolforge.config.bounds`, allowed values as ``Literal``; then add one line to
``SECTIONS``. ``roles`` is the one section that is a mapping of entries (role name ->
:class:`~evolforge.config.roles.Role`). A section that is absent from the file takes its dataclass's defaults.
:func:`check_params` checks every section, then :func:`cross_checks` the rules that span sections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from evolforge.config.bounds import DEFAULT_FILE, ParamsError, secret_problems
from evolforge.config.loader import check_section, control_character_problems, load_section, read_yaml
from evolforge.config.messages import non_ascii_problem, suggest
from evolforge.config.roles import ROLE_NAMES, Role
from evolforge.config.runtime import CacheSettings, LLMSettings
from evolforge.config.servers import Asked
from evolforge.config.data import DataSettings
from evolforge.config.fetch_model import FetchSettings
from evolforge.config.training import EvaluateSettings, FinetuneSettings
from evolforge.steps.autoif.settings import AutoIFSettings
from evolforge.steps.compare.settings import CompareSettings
from evolforge.steps.decontaminate.settings import DecontaminateSettings
from evolforge.steps.dedup.settings import DedupSettings
from evolforge.steps.diversity.settings import DiversitySettings
from evolforge.steps.evolve.settings import EvolveSection
from evolforge.steps.evolver_analysis.settings import AnalysisSettings
from evolforge.steps.judge.settings import JudgeSettings
from evolforge.config.optimize_answer import answer_problems
from evolforge.steps.optimize.settings import OptimizeSettings
from evolforge.steps.respond.settings import RespondSettings
from evolforge.steps.score.settings import ScoreSettings
from evolforge.steps.seed.settings import SeedSettings
from evolforge.steps.select.settings import CardSettings, SelectSettings
from evolforge.steps.verify.settings import VerifySettings

SECTIONS: dict[str, type] = {
    "cache": CacheSettings,
    "llm": LLMSettings,
    "fetch_model": FetchSettings,
    "roles": Role,  # roles.<name>: one Role each, name in ROLE_NAMES
    "seed": SeedSettings,
    "optimize": OptimizeSettings,
    "evolve": EvolveSection,
    "respond": RespondSettings,
    "data": DataSettings,
    "dedup": DedupSettings,
    "decontaminate": DecontaminateSettings,
    "judge": JudgeSettings,
    "score": ScoreSettings,
    "diversity": DiversitySettings,
    "verify": VerifySettings,
    "select": SelectSettings,
    "card": CardSettings,
    "finetune": FinetuneSettings,
    "evaluate": EvaluateSettings,
    "autoif": AutoIFSettings,
    "compare": CompareSettings,
    "evolver_analysis": AnalysisSettings,
}


def load_params(path: str | Path = DEFAULT_FILE) -> dict[str, Any]:
    """Read ``path`` and check the whole file against the schema (every section, not only the caller's);
    raises :class:`ParamsError` listing every problem. Returns the mapping as written (no defaults added):
    typed sections come from :func:`~evolforge.config.loader.load_section`."""
    params = read_yaml(path)
    check_params(params, path)
    return params


def asked_of_roles(params: Mapping[str, Any]) -> Asked:
    """What the stages will ask of the roles, from their typed sections (defaults included), for the checks of
    :mod:`evolforge.config.servers`: the evolve strategy and the settings that ask the judge to rank."""
    evolve = load_section(params, "evolve", EvolveSection)
    judge, verify = load_section(params, "judge", JudgeSettings), load_section(params, "verify", VerifySettings)
    rankings = (("judge.probabilities", judge.probabilities),
                ("verify.probabilities", verify.enabled and verify.probabilities))
    return Asked(evolve.strategy, tuple(setting for setting, on in rankings if on))


def check_params(params: Mapping[str, Any], file: str | Path = DEFAULT_FILE) -> None:
    """Check a whole params mapping; raise :class:`ParamsError` listing every problem. Secrets are looked
    for first, so no other message can echo one."""
    problems = secret_problems(dict(params))
    if problems:  # stop here: the messages below show the values they refuse
        raise ParamsError(problems, file)
    problems = control_character_problems(dict(params))
    for name, data in params.items():
        if name not in SECTIONS:
            problems.append(_unknown(str(name), "", "section", list(SECTIONS)))
            continue
        if name == "roles":
            problems += check_roles(data)
        else:
            problems += check_section(SECTIONS[name], data, name)
    problems += cross_checks(params)
    if problems:
        raise ParamsError(problems, file)


def check_roles(data: Any) -> list[str]:
    if data is None:
        return []
    if not isinstance(data, dict):
        return ["roles: expected a mapping of role name -> settings"]
    problems = []
    for name, role in data.items():
        if name not in ROLE_NAMES:
            problems.append(_unknown(str(name), "roles.", "role", list(ROLE_NAMES)))
            continue
        try:  # the schema, then the rules a stage applies when it opens the role: the key's variable name, the servers
            Role.from_params(name, role)
        except ParamsError as err:
            problems += err.problems
    return problems


def _unknown(name: str, prefix: str, what: str, allowed: list[str]) -> str:
    if not (name.isascii() and name.isprintable()):
        return non_ascii_problem(prefix + name, name, allowed)
    return f"{prefix}{name}: unknown {what}{suggest(name, allowed)}; {what}s: {', '.join(allowed)}"


def cross_checks(params: Mapping[str, Any]) -> list[str]:
    """Rules that span sections (or keys of one section that a type alone cannot tie together)."""
    problems = []
    autoif = params.get("autoif")
    for where, source in (("seed", params.get("seed")),
                          ("autoif.queries", autoif.get("queries") if isinstance(autoif, dict) else None)):
        fields = source.get("fields") if isinstance(source, dict) else None
        if isinstance(fields, dict) and "instruction" in fields and fields["instruction"] is None:
            problems.append(f"{where}.fields.instruction: got null; allowed: the name of the source column that holds "
                            "the instruction (only input and output may be null: left empty)")
    problems += answer_problems(params)  # a stop or banned string that would empty every optimizer candidate
    evolve, respond = params.get("evolve") or {}, params.get("respond") or {}
    if isinstance(evolve, dict) and isinstance(respond, dict) and isinstance(evolve.get("rounds"), dict):
        indices = {r.get("index") for r in evolve["rounds"].values() if isinstance(r, dict)}
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in indices):
            return problems  # the evolve section's own check names the bad index
        rounds = respond.get("rounds")
        missing = [k for k in rounds if isinstance(k, int) and k not in indices] if isinstance(rounds, list) else []
        if missing:
            problems.append(f"respond.rounds: {missing} are not indices of evolve.rounds "
                            f"({sorted(i for i in indices if isinstance(i, int))})")
    return problems
