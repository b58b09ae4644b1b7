"""Where one version's artifacts lie, as dvc.yaml declares them: the paths the reading stage's command gives.

The dataset card (select stage) and the report page (report stage) read many stages' outputs. Each path they read
comes from their stage's command in dvc.yaml, one flag per artifact and each flag's path one of the stage's deps,
never from a path written in the code (``tests/test_stage_interfaces.py`` checks both). The commands around them
(``evolforge card``, ``evolforge report``, ``evolforge lineage``) read the same flags back from dvc.yaml
(:func:`stage_flags`), so every path is written once, in dvc.yaml::

    >>> layout = Layout.from_flags({"--seed": "data/seed", "--items": "data/clean"}, clean="items")
    >>> layout.clean, layout.under("exp_a").seed, layout.judged
    (PosixPath('data/clean'), PosixPath('exp_a/data/seed'), None)

A field left None is an artifact the reader was not given: it reads as absent (the card and the report show what
a version has).
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any, Mapping

import yaml


@dataclasses.dataclass(frozen=True)
class Layout:
    """The paths of one version's artifacts, each given by a flag of the same name (``--pool-metrics`` ->
    ``pool_metrics``); ``root``: the folder they are under (``.`` for the workspace, a version's copy for
    ``evolforge report --compare``)."""

    seed: Path | None = None
    evolved: Path | None = None  # the folder holding each round's output (round_<k>/)
    responses: Path | None = None
    pool: Path | None = None
    dedup: Path | None = None
    clean: Path | None = None
    judged: Path | None = None
    scores: Path | None = None
    diversity: Path | None = None
    verified: Path | None = None
    selected: Path | None = None
    identities: Path | None = None  # the models stage's identity file
    pool_metrics: Path | None = None  # the pick_scenario stage's metrics: which pool went on
    score_metrics: Path | None = None  # the score stage's metrics: the scorer's name
    metrics_dir: Path | None = None  # the report: every stage's metrics file, by the name its stage gives it
    root: Path = Path(".")

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any], **aliases: str) -> Layout:
        """The fields named by ``flags`` (``--pool-metrics`` or ``pool_metrics``: a command's words or an
        ``argparse`` namespace's ``vars``); ``aliases`` map a field to the flag that gives it (``clean="items"``).
        Flags that name no field, and flags whose value is None, are left out."""
        given = {key.lstrip("-").replace("-", "_"): value for key, value in flags.items()}
        names = {f.name for f in dataclasses.fields(cls)} - {"root"}
        paths = {name: given.get(aliases.get(name, name)) for name in names}
        return cls(**{name: Path(value) for name, value in paths.items() if value is not None})

    def under(self, root: str | Path) -> Layout:
        """The same layout in the version folder ``root``."""
        root = Path(root)
        moved = {name: root / path for name, path in self.given().items()}
        return dataclasses.replace(self, root=root, **moved)

    def given(self) -> dict[str, Path]:
        """``{field: path}`` of the artifacts given."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "root" and getattr(self, f.name) is not None}

    def relative(self, path: Path) -> str:
        """``path`` as the version names it: relative to :attr:`root`, or as given when it lies elsewhere."""
        return (path.relative_to(self.root) if path.is_relative_to(self.root) else path).as_posix()


def stage_flags(stage: str, dvc_yaml: str | Path = "dvc.yaml") -> dict[str, str]:
    """``{flag: value}`` of ``stage``'s command in ``dvc_yaml`` (``python stages/X.py --flag value ...``)."""
    path = Path(dvc_yaml)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no dvc.yaml here; the paths of a version's artifacts are read from the "
                                f"{stage} stage's command (run this in the pipeline's repository)")
    stages = yaml.safe_load(path.read_text(encoding="utf-8")).get("stages") or {}
    if stage not in stages or "cmd" not in stages[stage]:
        raise ValueError(f"{path}: no stage {stage!r} with a command")
    words = shlex.split(stages[stage]["cmd"])[2:]  # after `python stages/X.py`
    return dict(zip(words[::2], words[1::2]))
