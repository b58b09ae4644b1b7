"""Every dvc.yaml command agrees with its stage script's arguments, and every stage script is thin.

A stage script run by hand must not quietly read another input than ``dvc repro`` gives it (a default of
``data/responses`` where dvc.yaml passes ``data/clean``), so every path flag is required: the only defaults
left are ``--params`` and ``--prompts``, the repository's own configuration, and the ``optional`` flags a
script names. The scripts' arguments are read from their source (the ``arguments(...)`` call of
:mod:`evolforge.core.stage`), so no script runs: a path it reads is one of the stage's deps, a path it writes
one of its outs, metrics or plots, and every declared output is written through one of its flags.

No code reads another stage's output at a path of its own: the package's and the scripts' string constants name no
path under ``data/``, ``metrics/`` or ``models/`` (:data:`NOT_READS` lists the few that read nothing), so what a
stage reads comes from its flags, and through them from dvc.yaml.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_FLAGS = {"--params", "--prompts"}  # the repository's configuration, the same for every stage
OUTPUT_FLAGS = {"--out", "--metrics", "--plot", "--plots", "--samples", "--live"}
MAX_LINES = 50  # a stage script maps paths to its step and loads its sections and roles


def script_flags(script: Path) -> dict[str, dict]:
    """``{flag: {"kind": reads | writes | values | optional | config, "default": value}}`` from the script's
    ``arguments(...)`` call."""
    calls = [node for node in ast.walk(ast.parse(script.read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "arguments"]
    assert len(calls) == 1, f"{script.name}: {len(calls)} arguments(...) calls; a stage script has one"
    keywords = {k.arg: ast.literal_eval(k.value) for k in calls[0].keywords if k.arg != "argv"}
    flags = {"--params": {"kind": "config", "default": "params.yaml"}}
    if keywords.get("prompts"):
        flags["--prompts"] = {"kind": "config", "default": "prompts"}
    for kind in ("reads", "writes", "values"):
        flags.update({f: {"kind": kind, "default": None} for f in keywords.get(kind, ())})
    flags.update({f: {"kind": "optional", "default": d} for f, d in keywords.get("optional", {}).items()})
    return flags


def stage_commands() -> list[tuple[str, dict]]:
    """``(stage name, stage)`` for every stage, a ``foreach`` stage once with its ``do`` template."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return [(name, stage.get("do", stage)) for name, stage in stages.items()]


def command_flags(cmd: str) -> tuple[str, dict[str, str]]:
    words = shlex.split(cmd)
    assert words[0] == "python" and words[1].startswith("stages/"), cmd
    flags = dict(zip(words[2::2], words[3::2]))
    assert len(words[2:]) % 2 == 0 and all(f.startswith("--") for f in flags), f"not --flag value pairs: {cmd}"
    return words[1], flags


def entries(stage: dict, keys: tuple[str, ...]) -> set[str]:
    """The paths a stage lists under ``keys`` (deps, outs, metrics, plots)."""
    paths = set()
    for key in keys:
        for entry in stage.get(key, []):
            paths.update(entry if isinstance(entry, dict) else [entry])
    return paths


def overlaps(value: str, path: str) -> bool:
    """``value`` and ``path`` name the same file, or one is a folder holding the other."""
    value, path = value.rstrip("/"), path.rstrip("/")
    return value == path or value.startswith(path + "/") or path.startswith(value + "/")


STAGES = stage_commands()


@pytest.mark.parametrize("name,stage", STAGES, ids=[name for name, _ in STAGES])
def test_command_matches_script(name, stage):
    script, given = command_flags(stage["cmd"])
    flags = script_flags(REPO / script)
    assert not set(given) - set(flags), f"{name}: dvc.yaml passes flags {script} does not take: {set(given) - set(flags)}"
    missing = {f for f, spec in flags.items() if spec["kind"] in ("reads", "writes", "values")} - set(given)
    assert not missing, f"{name}: dvc.yaml does not pass {script}'s required {missing}"
    defaulted = {f for f, spec in flags.items() if isinstance(spec["default"], str) and f not in CONFIG_FLAGS}
    assert not defaulted, f"{name}: {script} has default paths for {defaulted}; make them required"
    deps, outs = entries(stage, ("deps",)), entries(stage, ("outs", "metrics", "plots"))
    for flag, value in given.items():
        kind = flags[flag]["kind"]
        if kind == "reads" or (kind == "optional" and flag not in OUTPUT_FLAGS):  # an optional input is read too
            assert any(overlaps(value, d) for d in deps), f"{name}: {flag} {value} is read but is not among the stage's deps"
        if kind == "writes" or (kind == "optional" and flag in OUTPUT_FLAGS):
            assert any(overlaps(value, p) for p in outs), f"{name}: {flag} {value} is not among the stage's outs, metrics or plots"
    written = [given[f] for f, spec in flags.items() if f in given and (spec["kind"] == "writes" or f in OUTPUT_FLAGS)]
    for path in outs:
        assert any(overlaps(value, path) for value in written), f"{name}: {path} is declared but no flag of {script} writes it"


def test_every_stage_script_is_a_stage():
    """A script under stages/ is either a dvc.yaml stage or says it is run by hand."""
    used = {command_flags(stage["cmd"])[0] for _, stage in STAGES}
    for script in sorted((REPO / "stages").glob("*.py")):
        rel = f"stages/{script.name}"
        assert rel in used or "run by hand" in script.read_text(), f"{rel} is in no dvc.yaml stage"


def test_stage_scripts_are_thin():
    """A stage script parses its arguments, calls its step and writes the outputs: the logic lives in the package."""
    long = {script.name: n for script in sorted((REPO / "stages").glob("*.py"))
            if (n := len(script.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"stage scripts over {MAX_LINES} lines (move the logic into src/evolforge/steps/): {long}"


def test_the_checks_catch_a_disagreement(tmp_path):
    """The reading of a script's flags sees what dvc.yaml would have to pass."""
    script = tmp_path / "s.py"
    script.write_text('args = arguments(__doc__, reads=["--items"], writes=["--out"], values=["--round"],\n'
                      '                 optional={"--model": None}, prompts=True)\n')
    flags = script_flags(script)
    assert {f: spec["kind"] for f, spec in flags.items()} == {
        "--params": "config", "--prompts": "config", "--items": "reads", "--out": "writes", "--round": "values",
        "--model": "optional"}
    assert not overlaps("data/clean", "data/cleaner") and overlaps("data/evolved", "data/evolved/round_1")


ARTIFACTS = ("data", "metrics", "models")  # the folders of the stages' outputs
# string constants naming a path there that read no stage's output, per file, and why
NOT_READS = {
    # every LLM stage's pinned identities: dvc.yaml declares the file under each such stage's `params:`
    "src/evolforge/llm/identity.py": {"models/identity.json"},
    "src/evolforge/steps/autoif/settings.py": {"data/seeds/demo.jsonl"},  # a params default (autoif.query.source)
    # the names pick_pool records when its caller gives none; the stage passes its flags
    "src/evolforge/steps/pool/step.py": {"data/responses", "data/autoif/responses"},
    "src/evolforge/steps/evolve/step.py": {"data/method/meta.json fallback: "},  # a message
    "src/evolforge/plan/stages.py": {"models/"},  # the planner sorts dvc.yaml's outs into kinds
    "src/evolforge/eval/tasks/__init__.py": {"data"},  # the offline benchmarks' folder inside a task folder it writes
    # the Hub's layout inside the selection (data/train-*.parquet), and the tiny test model's name
    "src/evolforge/steps/select/card.py": {"data", "data/train-*.parquet", "models/tiny"},
    "src/evolforge/steps/select/shards.py": {"data", "data/"},
}


def artifact_paths(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of the string constants of ``path`` (docstrings aside) that name a path in one of
    :data:`ARTIFACTS`: ``"data/..."``, or a bare ``"data"`` joined with ``/``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    joined = {id(side) for node in ast.walk(tree) if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
              for side in (node.left, node.right)}
    return sorted((node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                  and (node.value.split("/")[0] in ARTIFACTS and "/" in node.value
                       or node.value in ARTIFACTS and id(node) in joined))


def test_no_code_reads_an_artifact_at_a_fixed_path():
    """What a stage reads comes from its flags (dvc.yaml), never from a path written in the package or a script."""
    found = [f"{rel}:{line}: {text!r}" for path in sorted([*(REPO / "src").rglob("*.py"), *(REPO / "stages").glob("*.py")])
             for rel in [path.relative_to(REPO).as_posix()] for line, text in artifact_paths(path)
             if text not in NOT_READS.get(rel, ())]
    assert not found, "paths of stage outputs written in the code (take them from the stage's flags):\n" + "\n".join(found)


def test_the_scan_sees_a_fixed_path(tmp_path):
    """The scan finds a path written whole or joined with ``/``, and leaves docstrings and params sections alone."""
    module = tmp_path / "m.py"
    module.write_text('"""Reads data/clean."""\n'
                      'from pathlib import Path\n'
                      'def f(root, params):\n'
                      '    """The rows of metrics/select.json."""\n'
                      '    a = root / "data" / "clean"\n'
                      '    b = Path("metrics/pool.json")\n'
                      '    return a, b, params["data"]\n')
    assert artifact_paths(module) == [(5, "data"), (6, "metrics/pool.json")]


RAW_MAPPING = {"dict", "Mapping", "dict[str, Any]", "Mapping[str, Any]", "typing.Mapping[str, Any]", "Any"}


def params_arguments(source: str) -> list[str]:
    """The arguments of the module-level ``run`` functions of ``source`` that take params.yaml's raw mapping:
    one named ``params``, or annotated as an untyped mapping."""
    found = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == "run":
            for arg in node.args.args + node.args.kwonlyargs:
                annotation = ast.unparse(arg.annotation) if arg.annotation is not None else ""
                if arg.arg == "params" or annotation in RAW_MAPPING:
                    found.append(f"{node.name}:{node.lineno} {arg.arg}: {annotation or '(no annotation)'}")
    return found


def test_no_step_takes_the_params_mapping():
    """A step's ``run()`` takes the typed settings and the roles it uses (TRL's ``main(script_args, ...)``): its
    stage script reads params.yaml and loads them, so the signature is the step's dependency list."""
    assert params_arguments("def run(items: str, params: dict[str, Any]) -> None: ...") == [
        "run:1 params: dict[str, Any]"]
    assert params_arguments("def run(items: str, sections: Mapping[str, Any]) -> None: ...") == [
        "run:1 sections: Mapping[str, Any]"]
    assert params_arguments("def run(items: str, cfg: JudgeSettings, llms: RoleLLMs) -> None: ...") == []
    steps = sorted((REPO / "src" / "evolforge" / "steps").rglob("*.py"))
    runs = {path.relative_to(REPO).as_posix(): params_arguments(path.read_text(encoding="utf-8")) for path in steps
            if "\ndef run(" in path.read_text(encoding="utf-8")}
    assert len(runs) >= 18  # every step module with a run(), the evolve report's included
    assert {path: found for path, found in runs.items() if found} == {}


# the modules that end a process: a stage's or the command line's end (run_stage), the crash watcher's own script,
# the llama.cpp probe's child process, make run's parallel stages and its DVC command line (their exit status is make's)
EXITS = {"src/evolforge/core/stage.py", "src/evolforge/core/native.py", "src/evolforge/llm/backends/llamacpp/probe.py",
         "src/evolforge/core/parallel_repro.py", "src/evolforge/core/dvc_cli.py"}


def test_the_package_refuses_with_refusals_not_exits():
    """Library code raises a Refusal (printed as one message, exit 2, by :func:`evolforge.core.stage.run_stage`),
    never ``SystemExit`` or ``sys.exit``: a caller that is not a stage (a test, a notebook) gets an error it can
    catch by type."""
    found = [f"{path.relative_to(REPO).as_posix()}:{i}" for path in sorted((REPO / "src" / "evolforge").rglob("*.py"))
             if path.relative_to(REPO).as_posix() not in EXITS
             for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if "raise SystemExit" in line or "sys.exit(" in line]
    assert found == []
