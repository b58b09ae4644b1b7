"""``evolforge plan`` on a small DVC project (respond -> judge, the stage scripts of this repository) whose
roles are served by the local fake OpenAI-compatible server with prices set and a tokenizer the server
counts with: the first stale stage's requests exactly and its prompt tokens within 1%; after a run a cap
stopped, only the rest; a cap at half the planned cost stops under it, the rest ``budget_exhausted``, and
a rerun with a raised cap writes what an uncapped run writes; after editing one prompt, only the stages
and calls that prompt feeds, also behind always-changed stages that rerun with the outputs dvc.lock records."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from evolforge.io.records import write_output
from evolforge.plan import make_plan
from evolforge.plan.table import render
from fake_openai import FakeOpenAIServer, chat_body
from tiny import CHAT_TEMPLATE, train_tokenizer

# evolforge plan and dvc on a copy of the repository: end to end (make test-slow)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_proxy")]  # no_proxy: tests/conftest.py

REPO = Path(__file__).resolve().parents[1]
ITEMS = 24
PRICES = {"price_per_mtok_prompt": 2000.0, "price_per_mtok_completion": 6000.0}
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A small byte-level BPE tokenizer with a chat template: the roles' ``tokenizer``, and the server's."""
    texts = [p.read_text() for p in (REPO / "prompts").rglob("*.j2")] + [instruction(i) for i in range(ITEMS)]
    tok = train_tokenizer(texts, 600)
    tok.chat_template = CHAT_TEMPLATE
    out = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(out)
    return out


@pytest.fixture
def server(tokenizer_dir):
    from evolforge.core.models import load_tokenizer

    tok = load_tokenizer(str(tokenizer_dir))

    def reply(body: dict):
        text = tok.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
        prompt_tokens = len(tok(text, add_special_tokens=False)["input_ids"])
        digest = hashlib.sha256(text.encode()).hexdigest()
        # 40 to 47 words of max_tokens' 48: an uncapped run costs more than half the planned upper bound
        answer = " ".join(digest[i % 60 : i % 60 + 4] for i in range(0, 4 * (40 + int(digest[0], 16) % 8), 4))
        return 200, chat_body(answer, prompt_tokens, len(answer.split())), {}

    with FakeOpenAIServer(reply) as fake:
        yield fake


def instruction(i: int) -> str:
    return f"Explain step {i} of making bread" + ", with reasons" * (i % 4) + "."


def project(root: Path, server: FakeOpenAIServer, tokenizer_dir: Path, budget: dict | None = None) -> Path:
    """A DVC project: evolved items -> respond -> judge, both roles on the fake server."""
    root.mkdir(parents=True)
    shutil.copytree(REPO / "prompts", root / "prompts")
    rows = [{"id": f"i{k}", "root_id": f"r{k}", "parent_id": f"r{k}", "round": 1, "method": "deepening",
             "status": "evolved", "failure_reason": None, "instruction": instruction(k), "input": "", "output": "",
             "template_hash": "t", "model": "fake@x", "finish_reason": "stop"} for k in range(ITEMS)]
    write_output(root / "data/evolved/round_1", pl.DataFrame(rows))
    write_params(root, server, tokenizer_dir, budget)
    py, stages = sys.executable, REPO / "stages"
    dvc = {"stages": {
        "respond": {"cmd": f"{py} {stages}/respond.py --evolved data/evolved --seed data/seed --out data/responses --metrics metrics/respond.json",
                    "deps": ["data/evolved/round_1", "prompts/respond"], "params": ["respond", "roles.responder"],
                    "outs": ["data/responses"], "metrics": [{"metrics/respond.json": {"cache": False}}]},
        "judge": {"cmd": f"{py} {stages}/judge.py --items data/responses --out data/judged --metrics metrics/judge.json "
                         f"--plot metrics/difficulty.json",
                  "deps": ["data/responses", "prompts/judge/difficulty_level.j2", "prompts/judge/difficulty_score.j2"],
                  "params": ["judge", "roles.judge"], "outs": ["data/judged", {"metrics/difficulty.json": {"cache": False}}],
                  "metrics": [{"metrics/judge.json": {"cache": False}}]}}}
    (root / "dvc.yaml").write_text(json.dumps(dvc))
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=root, check=True)
    return root


def behind_always_changed(root: Path) -> Path:
    """``project`` behind two always-changed stages, as the shipped pipeline's ``seed`` and ``models``:
    ``evolved`` copies data/source, which it does not declare (as seed reads a hub dataset), to
    data/evolved/round_1; ``models`` pins the roles in models/identity.json, which respond and judge read
    (the plan does not run it: it writes under models/)."""
    (root / "data/evolved/round_1").rename(root / "data/source")
    dvc = json.loads((root / "dvc.yaml").read_text())
    first = {"models": {"cmd": f"{sys.executable} {REPO}/stages/pin_models.py --out models/identity.json",
                        "always_changed": True, "params": ["roles"],
                        "outs": [{"models/identity.json": {"cache": False}}]},
             "evolved": {"cmd": "mkdir -p data/evolved && cp -r data/source data/evolved/round_1",
                         "always_changed": True, "outs": ["data/evolved/round_1"]}}
    dvc["stages"] = {**first, **dvc["stages"]}
    for reader in ("respond", "judge"):
        dvc["stages"][reader]["deps"].append("models/identity.json")
    (root / "dvc.yaml").write_text(json.dumps(dvc))
    return root


def write_params(root: Path, server: FakeOpenAIServer, tokenizer_dir: Path, budget: dict | None = None,
                 local: bool = False) -> None:
    served = {"backend": "openai", "model": "test-model", "base_url": server.base_url, "concurrency": 4,
              "timeout_s": 10, "max_retries": 1, "tokenizer": str(tokenizer_dir), "max_model_len": 100000, **PRICES}
    if local:  # as the shipped run: an in-process model folder, no price (the dry run never loads the model)
        served = {"backend": "hf", "model": str(tokenizer_dir), "device": "cpu", "dtype": "float32"}
    params = {"cache": {"path": ".evolforge/cache.sqlite"}, "llm": {"budget": budget or {}},
              "evolve": {"rounds": {"round_1": {"src": "data/seed", "index": 1}}}, "respond": {"rounds": [1]}, "judge": {"constrain": True},
              "roles": {"responder": {**served, "temperature": 0.0, "max_tokens": 48},
                        "judge": {**served, "temperature": 0.0, "max_tokens": 8}}}
    (root / "params.yaml").write_text(json.dumps(params))


def run_stage(root: Path, name: str) -> subprocess.CompletedProcess:
    cmd = json.loads((root / "dvc.yaml").read_text())["stages"][name]["cmd"]
    return subprocess.run(cmd, shell=True, cwd=root, capture_output=True, text=True, env=env())


def env() -> dict:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(REPO / "src")}


def planned(root: Path, monkeypatch, **kw):
    monkeypatch.chdir(root)
    monkeypatch.setenv("PATH", env()["PATH"])
    monkeypatch.setenv("PYTHONPATH", env()["PYTHONPATH"])
    return make_plan(root, **kw)


def stage_rows(plan, stage: str) -> list:
    return [r for r in plan.rows if r.stage == stage]


def test_first_stale_stage_exact_then_only_the_rest_and_a_raised_cap_finishes_as_uncapped(tmp_path, server, tokenizer_dir,
                                                                                          monkeypatch):
    root = project(tmp_path / "p", server, tokenizer_dir)
    plan = planned(root, monkeypatch)
    assert plan.stale == ["respond", "judge"]
    [respond] = stage_rows(plan, "respond")
    assert respond.requests == ITEMS and respond.counted == "tokenizer"
    assert respond.completion_tokens_max == ITEMS * 48 and respond.cost_max is not None
    assert server.answered == 0 and not (root / "data/responses").exists()  # nothing sent, nothing written
    assert "respond" in render(plan) and "total" in render(plan)

    # a cap at half the planned cost: the stage stops at or under it and says how to raise it
    cap = respond.cost_max / 2
    write_params(root, server, tokenizer_dir, {"run": {"cost": cap}})
    done = run_stage(root, "respond")
    assert done.returncode != 0 and "llm.budget.run.cost" in done.stderr and "budget_exhausted" in done.stderr
    assert not (root / "data/responses").exists()
    sent = server.answered
    assert 0 < sent < ITEMS
    from evolforge.llm.budget import SpendLedger

    spent = SpendLedger(root / ".evolforge/cache.sqlite").spent(role="responder")
    assert spent.calls == sent and spent.cost <= cap
    # the planned prompt tokens of what was sent: within 1% of what the server counted
    actual_prompt = spent.prompt_tokens

    again = planned(root, monkeypatch)
    [rest] = stage_rows(again, "respond")
    assert rest.requests == ITEMS - sent  # only the requests the cap kept back
    assert abs((respond.prompt_tokens - rest.prompt_tokens) - actual_prompt) <= 0.01 * actual_prompt
    assert rest.completion_tokens_expected is not None and rest.seconds is not None  # observed now

    write_params(root, server, tokenizer_dir, {"run": {"cost": respond.cost_max * 2}})
    assert run_stage(root, "respond").returncode == 0
    assert server.answered == ITEMS
    metrics = json.loads((root / "metrics/respond.json").read_text())["llm"]["responder"]
    assert metrics["cost"] > 0 and metrics["prompt_tokens"] > 0  # stage metrics carry tokens and cost per role

    free = project(tmp_path / "free", server, tokenizer_dir)
    assert run_stage(free, "respond").returncode == 0
    capped_then_raised = pl.read_parquet(root / "data/responses/items.parquet")
    assert capped_then_raised.equals(pl.read_parquet(free / "data/responses/items.parquet"))


def test_after_a_run_another_params_file_and_a_prompt_edit_plan_only_what_they_change(tmp_path, server, tokenizer_dir,
                                                                                     monkeypatch, capsys):
    """One run of the project (`dvc repro`), then two plans on it: ``evolforge plan --params OTHER.yaml`` (what is
    stale and what the calls ask, with OTHER.yaml as params.yaml; the workspace's params.yaml is neither read for
    it nor changed), and after editing one prompt, only the stages and calls that prompt feeds."""
    root = project(tmp_path / "p", server, tokenizer_dir)
    repro = subprocess.run([str(BIN / "dvc"), "repro", "-q"], cwd=root, capture_output=True, text=True, env=env())
    assert repro.returncode == 0, (repro.stdout + repro.stderr)[-3000:]
    assert planned(root, monkeypatch).rows == []

    shipped = (root / "params.yaml").read_text()
    other = json.loads(shipped)
    other["roles"]["judge"]["max_tokens"] = 9  # judge's role changes: judge is stale, respond is not
    (root / "other.yaml").write_text(json.dumps(other))
    plan = planned(root, monkeypatch, params_file="other.yaml")
    assert plan.stale == ["judge"]
    assert {(r.stage, r.role) for r in plan.rows} == {("judge", "judge")}
    assert any(n == "planned with other.yaml as params.yaml" for n in plan.notes)
    assert (root / "params.yaml").read_text() == shipped and planned(root, monkeypatch).rows == []

    from evolforge import cli

    monkeypatch.setattr(sys, "argv", ["evolforge"])
    cli.main(["plan", "--params", "other.yaml", "--json"])  # the command line passes the file on
    shown = json.loads(capsys.readouterr().out)
    assert shown["stale"] == ["judge"]

    level = root / "prompts/judge/difficulty_level.j2"
    level.write_text(level.read_text().replace("label how difficult", "say how difficult"))
    plan = planned(root, monkeypatch)
    assert plan.stale == ["judge"]
    assert [(r.stage, r.role, r.requests) for r in plan.rows] == [("judge", "judge", ITEMS)]  # levels; scores cached

    level.write_text(level.read_text().replace("say how difficult", "label how difficult"))
    response = root / "prompts/respond/response.j2"
    response.write_text(response.read_text() + "\nBe brief.\n")
    plan = planned(root, monkeypatch)
    assert plan.stale == ["respond", "judge"]  # judge runs after respond...
    assert [(r.stage, r.requests) for r in plan.rows] == [("respond", ITEMS)]  # ...but judges the same instructions
    assert "stale, sending nothing: judge" in render(plan)


def test_always_changed_stages_that_write_what_dvc_lock_records_leave_the_rest_out(tmp_path, server, tokenizer_dir,
                                                                                   monkeypatch):
    root = behind_always_changed(project(tmp_path / "p", server, tokenizer_dir))
    repro = subprocess.run([str(BIN / "dvc"), "repro", "-q"], cwd=root, capture_output=True, text=True, env=env())
    assert repro.returncode == 0, (repro.stdout + repro.stderr)[-3000:]
    sent = server.answered
    plan = planned(root, monkeypatch)
    assert plan.stale == [] and plan.rows == []  # dvc status lists models and evolved; dvc repro reruns nothing else
    assert render(plan).startswith("nothing is stale")
    [models, evolved] = plan.notes
    assert models.startswith("models: always changed") and "not the plan" in models
    assert evolved.startswith("evolved: always changed") and "writes what dvc.lock records" in evolved

    level = root / "prompts/judge/difficulty_level.j2"
    level.write_text(level.read_text().replace("label how difficult", "say how difficult"))
    plan = planned(root, monkeypatch)
    assert plan.stale == ["judge"]
    assert [(r.stage, r.role, r.requests) for r in plan.rows] == [("judge", "judge", ITEMS)]
    assert "stale, sending nothing" not in render(plan)

    # what evolved copies changes (dvc status cannot see it): its copy hashes apart, and what reads it runs
    level.write_text(level.read_text().replace("say how difficult", "label how difficult"))
    source = pl.read_parquet(root / "data/source/items.parquet")
    twice = pl.when(pl.col("id").is_in(["i0", "i1"])).then(pl.col("instruction") + " Twice.")
    write_output(root / "data/source", source.with_columns(twice.otherwise(pl.col("instruction")).alias("instruction")))
    plan = planned(root, monkeypatch)
    assert plan.stale == ["evolved", "respond", "judge"]
    assert [n.split(":")[0] for n in plan.notes if "always changed" in n] == ["models"]
    # respond reads the copy evolved wrote in the plan: only the two changed instructions are new
    assert [(r.stage, r.requests) for r in stage_rows(plan, "respond")] == [("respond", 2)]
    assert server.answered == sent


def test_a_stage_named_is_planned_and_an_unknown_one_refused(tmp_path, server, tokenizer_dir, monkeypatch):
    root = project(tmp_path / "p", server, tokenizer_dir)
    with pytest.raises(ValueError, match="no such stage in dvc.yaml: nope"):
        planned(root, monkeypatch, only=["nope"])
    plan = planned(root, monkeypatch, only=["respond"])
    assert [r.stage for r in plan.rows] == ["respond"] and plan.to_json()["total"]["requests"] == ITEMS

    cmd = json.loads((root / "dvc.yaml").read_text())["stages"]["respond"]["cmd"]
    dry = subprocess.run(cmd + " --dry-run", shell=True, cwd=root, capture_output=True, text=True, env=env())
    assert dry.returncode == 0, dry.stderr
    assert "respond" in dry.stdout and f"{ITEMS:,}" in dry.stdout and "judge" not in dry.stdout
    assert server.answered == 0 and not (root / "data/responses").exists()
    other = subprocess.run(cmd + " --out elsewhere --dry-run", shell=True, cwd=root, capture_output=True, text=True, env=env())
    assert other.returncode != 0 and "evolforge plan STAGE" in other.stderr and "Traceback" not in other.stderr


def test_a_local_role_without_a_price_is_planned_in_tokens_and_time(tmp_path, server, tokenizer_dir, monkeypatch):
    root = project(tmp_path / "p", server, tokenizer_dir)
    write_params(root, server, tokenizer_dir, local=True)
    plan = planned(root, monkeypatch, only=["respond"])
    [respond] = plan.rows
    assert respond.requests == ITEMS and respond.counted == "tokenizer" and respond.prompt_tokens > ITEMS
    assert respond.cost_max is None and respond.cost_expected is None
    # no price: the cost column says "-"; nothing observed yet: expected tokens and time say "?"
    assert re.search(rf"respond +responder +respond +{ITEMS} +[\d,]+ +\? / [\d,]+ +- +\?", render(plan))
    assert server.answered == 0


def test_a_role_the_stage_makes_itself_is_priced_as_the_stage_had_it():
    """compare asks ``compare_tuned`` / ``compare_other`` (made from roles.base, named nowhere in params.yaml):
    the plan prices them as the dry run recorded them, never looks them up."""
    from evolforge.plan import estimate

    call = {"role": "compare_tuned", "backend": "hf", "label": "answers: tuned", "requests": 3,
            "prompt_tokens": 300, "max_tokens": 96, "counted": "tokenizer",
            "prices": {"prompt": None, "completion": None, "cached_prompt": None}}
    row = estimate("compare", call, {"roles": {"judge": {"backend": "hf", "model": "x"}}}, None)
    assert (row.role, row.requests, row.prompt_tokens, row.cost_max) == ("compare_tuned", 3, 300, None)
    priced = estimate("compare", {**call, "prices": {"prompt": 1.0, "completion": 2.0}}, {}, None)
    assert priced.cost_max == pytest.approx((300 * 1.0 + 96 * 2.0) / 1e6)


def test_roles_moved_to_a_server_are_planned_before_the_models_stage_pins_them(tmp_path, server, tokenizer_dir,
                                                                              monkeypatch):
    """The roles pointed at a server while models/identity.json still pins the in-process models (or
    before any models stage ran): every LLM stage's requests counted from params alone, no server asked, the
    figures marked as estimates."""
    root = project(tmp_path / "p", server, tokenizer_dir)
    local = {"backend": "llamacpp", "model": "models/Qwen", "revision": None, "identity": {"sha256": "0" * 64}}
    (root / "models").mkdir()
    (root / "models/identity.json").write_text(json.dumps({"responder": local, "judge": local}))
    plan = planned(root, monkeypatch)
    assert plan.failed == [] and plan.stale == ["respond", "judge"]
    [respond] = stage_rows(plan, "respond")
    assert respond.requests == ITEMS and respond.counted == "tokenizer" and not respond.pinned
    assert respond.prompt_tokens > ITEMS and respond.cost_max is not None
    assert {r.role for r in plan.rows if not r.pinned} == {"responder", "judge"}
    assert any(n.startswith("not pinned yet (marked *): roles.judge, roles.responder;") and "estimates" in n
               for n in plan.notes)
    assert "responder *" in render(plan)
    assert server.answered == 0 and not [s for s in server.seen if s["path"].endswith("/models")]  # nobody asked

    # no models/identity.json at all, and the server down: still counted, from params alone
    (root / "models/identity.json").unlink()
    params = json.loads((root / "params.yaml").read_text())
    for role in params["roles"].values():
        role["base_url"] = "http://127.0.0.1:9/v1"  # nothing listens there
    (root / "params.yaml").write_text(json.dumps(params))
    plan = planned(root, monkeypatch)
    assert plan.failed == [] and [(r.stage, r.requests, r.pinned) for r in stage_rows(plan, "respond")] == [
        ("respond", ITEMS, False)]
