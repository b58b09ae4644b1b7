"""A newcomer's first week: the version flag, the first fine-tuning step's learning rate, ..."""

from __future__ import annotations

import pytest

from evolforge import __version__
from evolforge.cli import main
from evolforge.train.finetune import warmup_steps


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"evolforge {__version__}"


@pytest.mark.parametrize("ratio, rows, kw, expected", [
    (0.03, 24, dict(epochs=1, max_steps=6, batch_size=4, grad_accum=1), 0),    # the shipped demo
    (0.5, 24, dict(epochs=1, max_steps=6, batch_size=4, grad_accum=1), 3),
    (0.1, 100, dict(epochs=2, max_steps=-1, batch_size=2, grad_accum=5), 2),  # 10 steps per epoch, 20 in all
    (0.0, 100, dict(epochs=1, max_steps=-1, batch_size=1, grad_accum=1), 0),
])
def test_warmup_steps_round_down(ratio, rows, kw, expected):
    assert warmup_steps(ratio, rows, **kw) == expected


def test_first_step_of_the_shipped_schedule_learns():
    """The scheduler transformers builds from the shipped finetune settings: step 1's learning rate is > 0."""
    import torch
    from transformers import get_scheduler

    from evolforge.config.loader import read_params, load_section
    from evolforge.config.training import FinetuneSettings
    from report_fixture import REPO

    cfg = load_section(read_params(REPO / "params.yaml"), "finetune", FinetuneSettings)
    total = cfg.max_steps if cfg.max_steps > 0 else 100
    warm = warmup_steps(cfg.warmup_ratio, 24, epochs=cfg.epochs, max_steps=cfg.max_steps, batch_size=cfg.batch_size,
                        grad_accum=cfg.grad_accum)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warm, num_training_steps=total)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(cfg.lr) and all(r > 0 for r in rates)
    # the old rounding (a ratio transformers rounds up to one step) started at 0
    old = get_scheduler(cfg.lr_scheduler, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr),
                        num_warmup_steps=1, num_training_steps=total)
    assert old.get_last_lr()[0] == 0.0


# --- experiments: the README's `dvc exp show` command and the queue example, on a small DVC repo -------------

def _readme_command(prefix: str) -> list[str]:
    import re
    import shlex

    from report_fixture import REPO

    text = (REPO / "README.md").read_text(encoding="utf-8")
    line = next(m.group(0) for m in re.finditer(rf"^{re.escape(prefix)}.*$", text, re.M))
    return shlex.split(line.split("  #")[0])


def _dvc(repo, *args, env=None):
    import os
    import subprocess
    import sys

    from pathlib import Path

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "160",
           "DVC_NO_ANALYTICS": "1", **(env or {})}
    done = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


@pytest.fixture(scope="module")
def exp_repo(tmp_path_factory):
    """A git + DVC repo holding the shipped run's committed metrics files, declared as dvc.yaml declares them,
    and a stage that rewrites them with one param changed (the selection's size), so experiments differ."""
    import shutil
    import subprocess

    import yaml

    from report_fixture import REPO

    repo = tmp_path_factory.mktemp("exp_repo")
    # the committed files, not what a local `make run` wrote over them (another number of rounds, other figures)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD", "metrics"], capture_output=True)
    if archive.returncode == 0:
        subprocess.run(["tar", "-x", "-C", str(repo)], input=archive.stdout, check=True)
        (repo / "metrics").rename(repo / "shipped")
    else:  # not a git checkout: the files as they are
        shutil.copytree(REPO / "metrics", repo / "shipped")
    (repo / "params.yaml").write_text("select:\n  top_fraction: 0.3\n")
    (repo / "rewrite.py").write_text(
        "import json, pathlib, shutil, yaml\n"
        "fraction = yaml.safe_load(open('params.yaml'))['select']['top_fraction']\n"
        "shutil.rmtree('metrics', ignore_errors=True)\nshutil.copytree('shipped', 'metrics')\n"
        "summary = json.loads(pathlib.Path('metrics/summary.json').read_text())\n"
        "summary['sel'].update(n=round(16 * fraction), diff=57.125)  # every column filled: the widest table\n"
        "summary['cost']['usd'] = 12.3456\n"
        "pathlib.Path('metrics/summary.json').write_text(json.dumps(summary))\n")
    declared = [m for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values()
                for entry in (stage.get("do") or stage).get("metrics", []) for m in entry]
    files = sorted({m.replace("${key}", k) for m in declared for k in ("round_1", "round_2", "round_3")})
    files = [f for f in files if (repo / "shipped" / f.removeprefix("metrics/")).is_file()]
    assert "metrics/summary.json" in files and "metrics/select.json" in files and len(files) > 12
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"rewrite": {
        "cmd": "python rewrite.py", "deps": ["rewrite.py", "shipped"], "params": ["select.top_fraction"],
        "metrics": [{f: {"cache": False}} for f in files]}}}))
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.com"], ["git", "config", "user.name", "t"]):
        subprocess.run(cmd, cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    _dvc(repo, "config", "core.analytics", "false")
    _dvc(repo, "repro", "-q")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "shipped run"], cwd=repo, check=True)
    return repo


def test_readme_exp_show_fits_160_columns_with_the_headline_metrics(exp_repo):
    for fraction in ("0.1", "0.5"):
        _dvc(exp_repo, "exp", "run", "-q", "-S", f"select.top_fraction={fraction}")
    command = _readme_command("dvc exp show")
    assert "--keep" in command
    table = _dvc(exp_repo, *command[1:], "--no-pager")
    lines = table.rstrip("\n").splitlines()
    assert max(len(line) for line in lines) <= 160 and "…" not in table, table
    header = next(line for line in lines if "Experiment" in line).split()
    assert header[1:] == ["cost.usd", "ev.gsm8k", "ev.humaneval", "ev.ifeval", "ev.math", "ev.mbpp", "sel.diff",
                          "sel.icifd", "sel.n", "surv.r1", "surv.r2", "surv.r3"]  # the file's (sorted) order
    experiments = [line for line in lines if "[" in line]  # `├── 1a2b3c4 [name]` rows
    assert len(experiments) == 2
    assert sorted(line.split()[2 + header.index("sel.n")] for line in experiments) == ["2", "8"]  # 16 x 0.1, 16 x 0.5
    plain = _dvc(exp_repo, "exp", "show", "--no-pager")  # what it replaces: every counter, squeezed into "…"
    assert "…" in plain or max(len(line) for line in plain.splitlines()) > 160


def test_readme_queue_example_queues_two_experiments(exp_repo):
    command = _readme_command("dvc exp run --queue")
    assert command[:5] == ["dvc", "exp", "run", "--queue", "-S"] and command[5] == "select.top_fraction=0.1,0.5"
    _dvc(exp_repo, *command[1:6])
    status = _dvc(exp_repo, "queue", "status")
    assert status.count("Queued") == 2, status
    _dvc(exp_repo, "queue", "remove", "--queued")


# --- seeds in chat form -------------------------------------------------------------------------------

def test_chat_format_seed_files_are_read(tmp_path):
    import json

    import polars as pl

    from evolforge.steps.common.source import build_seed

    openai = tmp_path / "messages.jsonl"
    openai.write_text("\n".join(json.dumps(r) for r in [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."},
                      {"role": "assistant", "content": "7."}, {"role": "user", "content": "Another?"}]},
        {"messages": [{"role": "user", "content": "Say hi."}]},
    ]) + "\n")
    table = build_seed(str(openai), fmt="chat").table.sort("instruction")
    assert table.select("instruction", "input", "output").rows() == [("Name a prime.", "", "7."), ("Say hi.", "", "")]

    sharegpt = tmp_path / "sharegpt.parquet"
    pl.DataFrame({"conversations": [[{"from": "human", "value": "Sum 2 and 3."}, {"from": "gpt", "value": "5"}]]}).write_parquet(sharegpt)
    assert build_seed(str(sharegpt), fmt="chat").table.select("instruction", "output").rows() == [("Sum 2 and 3.", "5")]


def test_chat_and_prompt_files_get_errors_that_say_how_to_read_them(tmp_path):
    import json

    from evolforge.io.validation import DataError
    from evolforge.steps.common.source import build_seed

    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n"
                    + json.dumps({"messages": [{"role": "assistant", "content": "Hello"}]}) + "\n")
    with pytest.raises(DataError, match="seed.format: chat"):
        build_seed(str(chat))
    with pytest.raises(DataError, match=r"row 2.*a chat record has a user turn.*\['assistant'\]"):
        build_seed(str(chat), fmt="chat")
    prompt = tmp_path / "pairs.jsonl"
    prompt.write_text(json.dumps({"prompt": "Add 1 and 1.", "completion": "2"}) + "\n")
    with pytest.raises(DataError, match=r"seed.fields: \{instruction: prompt, output: completion\}"):
        build_seed(str(prompt))
    table = build_seed(str(prompt), fields={"instruction": "prompt", "output": "completion"}).table
    assert table.select("instruction", "output").rows() == [("Add 1 and 1.", "2")]


def test_chat_format_is_a_params_choice():
    from evolforge.config.loader import load_section
    from evolforge.steps.seed.settings import SeedSettings

    assert load_section({"seed": {"source": "x.jsonl", "format": "chat"}}, "seed", SeedSettings).format == "chat"


# --- server roles: a stated identity, and a warning when the name alone stands for the weights ------------

@pytest.fixture
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def _served(url: str, **extra):
    from evolforge.config.roles import Role

    return Role.from_params("evolver", {"backend": "openai", "model": "test-model", "base_url": url,
                                        "timeout_s": 2, **extra})


def test_a_server_without_get_models_is_pinned_by_its_stated_identity(_no_proxy):
    import socket

    from evolforge.core.models import ModelError
    from evolforge.llm.pinning import resolve_identity

    with socket.socket() as s:  # a port nothing listens on: the server is not asked
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(ModelError, match="cannot list the models"):
        resolve_identity(_served(dead))
    stated = resolve_identity(_served(dead, served_identity="weights-2024-06-01"))
    assert stated == {"served_model": "test-model", "stated": "weights-2024-06-01"}
    assert resolve_identity(_served(dead, served_identity="v2")) != stated  # new weights, new cache keys


def test_served_identity_is_for_servers_only():
    from evolforge.config.bounds import ParamsError
    from evolforge.config.roles import Role

    with pytest.raises(ParamsError, match="roles.evolver.served_identity: a setting of backend openai, not of hf"):
        Role.from_params("evolver", {"backend": "hf", "model": "models/x", "served_identity": "v1"})


@pytest.mark.parametrize("listed, extra, warns", [
    (("test-model",), {}, True),                                           # a bare id: nothing follows the weights
    (({"id": "test-model", "root": "/models/a", "max_model_len": 4096},), {}, False),  # vLLM reports its weights
    (("test-model",), {"revision": "2024-06-01"}, False),                  # the user labels the weights
])
def test_warns_when_the_server_reports_nothing_that_changes_with_the_weights(_no_proxy, caplog, listed, extra, warns):
    import logging

    from fake_openai import FakeOpenAIServer, chat_body
    from evolforge.llm.backends.openai.served import served_model_identity

    with FakeOpenAIServer(lambda body: (200, chat_body("ok"), {}), listed) as server, \
            caplog.at_level(logging.WARNING, logger="evolforge.llm.backends.openai.served"):
        identity = served_model_identity(_served(server.base_url, **extra))
    assert identity["served_model"] == "test-model" and identity.get("revision") == extra.get("revision")
    assert ("changes with its weights" in caplog.text and "roles.evolver.revision" in caplog.text) == warns


# --- a stage refused under dvc repro keeps its previous outputs -------------------------------------------

STAGE = '''
import pathlib, sys, yaml
from evolforge.core.stage import run_stage
from evolforge.io.records import atomic_dir

def main():
    n = yaml.safe_load(open("params.yaml"))["n"]
    if n < 0:
        raise FileNotFoundError(f"params.yaml n: got {n}; refused")
    with atomic_dir("data/out") as tmp:
        for i in range(n):
            (tmp / f"part_{i}.txt").write_text(f"row {i}\\n")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "meta.txt").write_text(f"n={n}\\n")
    pathlib.Path("single.txt").write_text(f"n={n}\\n")

run_stage(main, name="toy")
'''


def test_a_stage_refused_under_dvc_repro_keeps_its_previous_outputs(tmp_path):
    import subprocess

    import yaml

    from report_fixture import REPO

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "stage.py").write_text(STAGE)
    (repo / "params.yaml").write_text("n: 2\n")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"toy": {
        "cmd": "python stage.py", "deps": ["stage.py"], "params": ["n"], "outs": ["data/out", "single.txt"]}}}))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    env = {"PYTHONPATH": str(REPO / "src")}
    _dvc(repo, "init", "-q")
    _dvc(repo, "repro", "-q", env=env)
    before = sorted(p.relative_to(repo).as_posix() for p in (repo / "data" / "out").rglob("*") if p.is_file())
    assert before == ["data/out/part_0.txt", "data/out/part_1.txt", "data/out/sub/meta.txt"]

    (repo / "params.yaml").write_text("n: -1\n")
    import os
    import sys
    from pathlib import Path

    done = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True, timeout=240,
                          env={**os.environ, **env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert done.returncode != 0 and "toy: error: params.yaml n: got -1; refused" in done.stderr
    assert "the previous outputs are back in place (from DVC's cache): data/out, single.txt" in done.stderr
    after = sorted(p.relative_to(repo).as_posix() for p in (repo / "data" / "out").rglob("*") if p.is_file())
    assert after == before and (repo / "data" / "out" / "sub" / "meta.txt").read_text() == "n=2\n"
    assert (repo / "single.txt").read_text() == "n=2\n"
    (repo / "params.yaml").write_text("n: 2\n")
    assert "up to date" in _dvc(repo, "status")  # what is back is what dvc.lock records


def test_headline_metrics_of_a_version(tmp_path):
    import json

    import polars as pl

    from evolforge.io.records import write_json, write_output
    from evolforge.report.summary import headline
    from report_fixture import REPORT

    version = REPORT.under(tmp_path)
    assert headline(version) == {"surv": {}, "sel": {"n": None, "problems": None, "diff": None, "icifd": None}, "ev": {}, "cost": {"usd": None}, "wall": {}}
    m = tmp_path / "metrics"
    write_json(m / "evolve.json", {"round_1": {"in": 16, "evolved": 4}, "round_2": {"in": 16, "evolved": 0},
                                   "total": {"in": 32, "evolved": 4}})
    write_json(m / "select.json", {"selected": 3, "selected_mean_ic_ifd": 0.9})
    write_json(m / "eval.json", {"finetuned": {"mbpp/pass@1": 0.75, "mbpp/n": 4, "ifeval/prompt_level_strict_acc": 0.2,
                                               "ifeval/inst_level_loose_acc": 0.5}})
    write_json(m / "judge.json", {"llm": {"judge": {"calls": 3, "cost": 0.25}}})
    write_json(m / "evolve" / "round_1.json", {"llm": {"evolver": {"cost": 1.5}, "responder": {"calls": 2}}})
    write_output(tmp_path / "data" / "selected", pl.DataFrame({"id": ["a", "b", "c"], "difficulty_score": [10.0, 20.0, 60.0],
                                                              "ic_ifd": [0.1, 0.2, 0.3]}))
    h = headline(version)
    assert h["surv"] == {"r1": 0.25, "r2": 0.0}
    assert h["sel"] == {"n": 3, "problems": None, "diff": 30.0, "icifd": 0.2}  # the selection's own rows, not select.json's 0.9
    assert h["ev"] == {"mbpp": 0.75, "ifeval": 0.2}
    assert h["cost"] == {"usd": 1.75}
    write_json(m / "summary.json", h)  # the file itself is never counted twice
    assert headline(version)["cost"] == {"usd": 1.75}
    assert json.loads((m / "summary.json").read_text())["sel"]["n"] == 3


def test_a_round_dropped_from_the_pipeline_is_no_figure_of_the_version(tmp_path):
    """A run of three rounds, then of two (evolve.rounds edited): DVC leaves round 3's metrics file in place; its
    wall time and cost belong to the older run, not to this version's summary."""
    from evolforge.io.records import write_json
    from evolforge.report.summary import headline
    from report_fixture import REPORT

    m = tmp_path / "metrics"
    write_json(m / "evolve.json", {"round_1": {"in": 6, "evolved": 3}, "round_2": {"in": 6, "evolved": 2},
                                   "total": {"in": 12, "evolved": 5}})
    for name, wall in (("round_1", 100.0), ("round_2", 80.0), ("round_3", 70.0)):  # round_3: the older run's
        write_json(m / "evolve" / f"{name}.json", {"wall_s": wall, "llm": {"evolver": {"cost": 1.0}}})
    h = headline(REPORT.under(tmp_path))
    assert h["wall"] == {"evolve@round_1": 100.0, "evolve@round_2": 80.0, "total": 180.0}
    assert h["cost"] == {"usd": 2.0} and h["surv"] == {"r1": 0.5, "r2": 0.3333}
