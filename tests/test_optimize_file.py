"""Candidate methods from a file (optimize.candidates_file): read and checked with one clear error, measured beside
the initial method by the same rules (the fakes of tests/test_optimize.py, then the tiny model), the steps starting
from the best; the shipped file and where DVC tracks it."""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
from pathlib import Path

import pytest
import yaml

from evolforge.config.bounds import Refusal
from evolforge.core.prompts import DEFAULT_PROMPTS_DIR, PromptLibrary
from evolforge.llm.backends.fake import FakeBackend
from evolforge.llm.cached import LLM
from evolforge.steps.optimize import step as optimize_step
from evolforge.steps.optimize.dev import split_dev_pool
from evolforge.steps.optimize.method_file import FileMethod, candidate_methods, parse_methods, read_methods
from evolforge.steps.optimize.result import summary
from evolforge.steps.optimize.settings import OptimizeSettings
from evolforge.steps.optimize.step import optimize_method
from test_optimize import (EVOLVER_ROLE, OPTIMIZER_ROLE, PROMPTS, ZERO, evolver_reply, fails, fenced, items, load_stage,
                           optimizer_reply, stage_setup)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "prompts" / "optimize" / "candidates" / "evol_in_depth.yaml"


def entry(name: str, method: str, source: str = "written for a test") -> dict:
    return {"name": name, "source": source, "method": method}


# --- reading the file --------------------------------------------------------------------------------------

def test_yaml_and_jsonl_files_read_alike(tmp_path):
    entries = [entry("a", "m1 fails=0"), entry("b", "m2 fails=3", "a stronger model, run 7")]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"about": "two methods", "methods": entries}), encoding="utf-8")
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(e) + "\n\n" for e in entries), encoding="utf-8")
    expected = [FileMethod("a", "written for a test", "m1 fails=0"), FileMethod("b", "a stronger model, run 7",
                                                                                "m2 fails=3")]
    assert read_methods(tmp_path / "m.yaml") == read_methods(tmp_path / "m.jsonl") == expected


@pytest.mark.parametrize("content, error", [
    ({"methods": []}, "expected a non-empty list of methods"),
    ({"method": [entry("a", "m")]}, "expected a mapping with a 'methods' list"),
    ({"methods": [entry("a", "m")], "extra": 1}, "unknown key(s) extra"),
    ({"methods": ["just text"]}, "method 1: expected a mapping {name, source, method}, got str"),
    ({"methods": [entry("a", "m"), {"name": "b", "method": "m"}]}, "method 2: field 'source' must be a non-empty"),
    ({"methods": [entry("a", "   ")]}, "method 1: field 'method' must be a non-empty string"),
    ({"methods": [{**entry("a", "m"), "licence": "x"}]}, "method 1: unknown field(s) licence"),
    ({"methods": [entry("a", "m"), entry("a", "n")]}, "method 2: field 'name': 'a' is used by an earlier method"),
    ({"methods": [entry("a", "Rewrite it.\n\n#Instruction#:\n")]}, "ends in '#Instruction#:', which prompts/optimize"),
])
def test_a_bad_file_gets_one_error_naming_the_method_and_field(tmp_path, content, error):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(content), encoding="utf-8")
    with pytest.raises(ValueError, match="^" + str(path).replace("\\", "\\\\") + ": .*" + error.replace("(", r"\(")
                       .replace(")", r"\)").replace("{", r"\{").replace("}", r"\}")):
        read_methods(path)


def test_jsonl_errors_name_the_line_and_the_suffix_is_checked(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps(entry("a", "m")) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"m.jsonl: line 2: not JSON"):
        read_methods(tmp_path / "m.jsonl")
    (tmp_path / "m.txt").write_text("m", encoding="utf-8")
    with pytest.raises(ValueError, match=r"m.txt: a candidates file is .yaml, .yml or .jsonl"):
        read_methods(tmp_path / "m.txt")
    with pytest.raises(ValueError, match=r"nope.yaml: cannot read the candidates file"):
        read_methods(tmp_path / "nope.yaml")


def test_a_file_outside_prompts_optimize_is_refused(tmp_path):
    """DVC reruns the stage when a file under prompts/optimize/ changes (dvc.yaml lists the folder): elsewhere it
    would not, so the stage refuses the path before any request."""
    prompts = tmp_path / "prompts"
    shutil.copytree(DEFAULT_PROMPTS_DIR, prompts)
    outside = tmp_path / "mine.yaml"
    shutil.copy(SHIPPED, outside)
    with pytest.raises(Refusal, match=r"optimize.candidates_file: .*mine.yaml lies outside .*prompts/optimize/"):
        candidate_methods(OptimizeSettings(candidates_file=str(outside)), PromptLibrary(prompts))
    inside = prompts / "optimize" / "candidates" / "evol_in_depth.yaml"
    assert len(candidate_methods(OptimizeSettings(candidates_file=str(inside)), PromptLibrary(prompts))) == 4
    assert candidate_methods(OptimizeSettings(), PromptLibrary(prompts)) is None


def test_dvc_tracks_the_candidates_folder_for_the_optimize_stage():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["optimize"]
    assert "prompts/optimize" in stage["deps"] and SHIPPED.is_relative_to(ROOT / "prompts" / "optimize")
    assert "optimize" in stage["params"]  # the file's path is a param: naming another file reruns the stage


def test_the_shipped_file_is_evol_instructs_in_depth_template():
    """Each shipped method is prompts/evolve/depth.j2 for its in-depth method, the given prompt called the
    #Instruction#, in the reply format every Auto Evol-Instruct method is parsed by."""
    methods = read_methods(SHIPPED)
    assert [m.name for m in methods] == [f"evol_in_depth_{k}" for k in ("add_constraints", "deepening",
                                                                         "concretizing", "reasoning")]
    for m in methods:
        depth = PROMPTS.render("evolve/depth.j2", method=m.name.removeprefix("evol_in_depth_"), instruction="X")
        line = depth.split("with this method:\n", 1)[1].splitlines()[0]
        assert line.replace("#The Given Prompt#", "the #Instruction#") in m.method.splitlines()
        assert m.method.endswith("Reply strictly in this format:\n#Finally Rewritten Instruction#:")
        assert "prompts/evolve/depth.j2" in m.source


# --- measured beside the initial method ---------------------------------------------------------------------

def run_with_file(methods: list[str], plan, **overrides):
    settings = OptimizeSettings(**{"steps": 1, "candidates": 2, "batch_size": 2, "dev_size": 4, "patience": None,
                                   **overrides})
    rng = random.Random(settings.seed)
    dev, pool = split_dev_pool(items(14), dev_size=4, batch_size=2, rng=rng)
    dev_order = [d["instruction"] for d in dev]
    evolver_fake = FakeBackend(evolver_reply(lambda m, q: q in dev_order[:fails(m)]))
    evolver = LLM(evolver_fake, None, role=EVOLVER_ROLE)
    optimizer = LLM(FakeBackend(optimizer_reply(plan), model="fake-optimizer"), None, role=OPTIMIZER_ROLE)
    file_methods = [FileMethod(f"f{k}", "test", m) for k, m in enumerate(methods)]
    return optimize_method(pool, dev, initial_method="m0 fails=2", evolver=evolver, optimizer=optimizer,
                           prompts=PROMPTS, settings=settings, rng=rng, call=ZERO, file_methods=file_methods)


@pytest.mark.parametrize("racing", [False, True])
def test_the_best_file_method_is_where_the_steps_start(racing):
    result = run_with_file(["f fails=3", "f fails=1", "g fails=1"],
                           {"f fails=1": [fenced("m9 fails=0"), fenced("m8 fails=4")]}, racing=racing)
    assert result.file_chosen == 1  # fewest failures; the earlier of two equal ones
    assert result.log[0]["method_before"] == "f fails=1"  # step 1's trajectory and optimization start from it
    assert result.method == "m9 fails=0" and result.best.failures == 0
    rows = summary(result, {})["file_candidates"]
    assert [(r["name"], r["source"]) for r in rows] == [("f0", "test"), ("f1", "test"), ("f2", "test")]
    assert rows[1]["failures"] == rows[2]["failures"] == 1 and rows[1]["measured"] == rows[2]["measured"] == 4
    assert rows[0]["cut"] == ("cannot_win" if racing else None)  # it failed as many as the initial method


@pytest.mark.parametrize("racing", [False, True])
def test_file_methods_no_better_than_the_initial_leave_it_in_place(racing):
    result = run_with_file(["f fails=2", "f fails=4"], {}, racing=racing, steps=0)
    assert result.file_chosen is None and result.method == "m0 fails=2" and not result.log
    assert result.outcome.startswith("kept the initial method: it fails 2 of 4 development items and no candidate")


def test_steps_zero_measures_the_file_alone_and_names_the_method_it_keeps():
    result = run_with_file(["f fails=3", "g fails=0"], {}, steps=0)
    assert result.method == "g fails=0" and result.file_chosen == 1
    assert result.outcome == ("improved: f1 (optimize.candidates_file) fails 0 of 4 development items, the initial "
                              "2 of 4")


def test_no_regression_takes_a_file_method_by_the_reference_codes_rule():
    result = run_with_file(["f fails=2 long", "f fails=1"], {}, steps=0, selection="no_regression")
    assert result.file_chosen == 0 and result.method == "f fails=2 long"  # by score: as successful, longer answers


def test_the_stage_measures_the_file_and_writes_it_to_the_metrics(tmp_path, monkeypatch):
    stage = load_stage()
    argv, out = stage_setup(tmp_path, "auto")
    prompts = tmp_path / "prompts"
    shutil.copytree(DEFAULT_PROMPTS_DIR, prompts)
    path = prompts / "optimize" / "candidates" / "mine.jsonl"
    path.write_text(json.dumps(entry("mine", "m5 fails=0", "a stronger model")) + "\n", encoding="utf-8")
    params = json.loads((out / "params.yaml").read_text())
    params["optimize"].update(candidates_file=str(path), steps=0)
    (out / "params.yaml").write_text(json.dumps(params), encoding="utf-8")
    argv[argv.index("--prompts") + 1] = str(prompts)
    evolver = LLM(FakeBackend(evolver_reply(lambda m, q: fails(m) > int(q.split()[-1]) % 4)), None, role=EVOLVER_ROLE)
    optimizer = LLM(FakeBackend(optimizer_reply({})), None, role=OPTIMIZER_ROLE)
    monkeypatch.setattr(optimize_step, "open_models", lambda llms, **kw: dict(evolver=evolver, optimizer=optimizer))
    stage.main(argv)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "method" / "method.txt").read_text(encoding="utf-8") == "m5 fails=0"
    assert metrics["file_chosen"] == 0 and metrics["file_candidates"][0]["name"] == "mine"
    assert metrics["outcome"].startswith("improved: mine (optimize.candidates_file) fails 0 of 4")
    assert optimizer.stats["calls"] == 0  # steps 0: the optimizer is never asked
    meta = json.loads((out / "method" / "meta.json").read_text())
    assert meta["candidates_file"]["methods"] == ["mine"] and len(meta["candidates_file"]["sha256"]) == 64


def test_the_tiny_model_measures_the_shipped_file(tmp_path, monkeypatch, tiny_model):
    """The stage on a real model (the trained tiny one, every role): each shipped method is measured on the
    development set by real generations, and the metrics say how far each got."""
    monkeypatch.delenv("EVOLFORGE_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)  # no models/identity.json here: the tiny model's identity is resolved
    stage = load_stage()
    argv, out = stage_setup(tmp_path, "auto")
    params = json.loads((out / "params.yaml").read_text())
    params["roles"] = {name: {"backend": "hf", "model": str(tiny_model), "max_tokens": 48, "batch_size": 4}
                       for name in ("evolver", "optimizer")}
    params["optimize"].update(candidates_file=str(SHIPPED), steps=1, candidates=1)
    (out / "params.yaml").write_text(json.dumps(params), encoding="utf-8")
    stage.main(argv)
    metrics = json.loads((out / "metrics.json").read_text())
    rows = metrics["file_candidates"]
    assert [r["name"] for r in rows] == [m.name for m in read_methods(SHIPPED)]
    assert all(r["parsed"] and 1 <= r["measured"] <= metrics["dev_size"] for r in rows)
    assert all(r["measured"] == metrics["dev_size"] or r["cut"] for r in rows)
    assert metrics["llm"]["evolver"]["calls"] > 0 and metrics["steps_run"] == 1


def bench():
    spec = importlib.util.spec_from_file_location("autoevol_methods", ROOT / "bench" / "autoevol_methods.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_published_methods_become_a_candidates_file_without_their_instruction_heading():
    """bench/autoevol_methods.py fetch: the published file (here one written for the test, in its shape) checked by
    sha256, each step's evol_prompt a method that ends before the heading the method template adds."""
    import hashlib

    published = json.dumps([{"evol_prompt": "\n\nRewrite it.\nStep 4\n#Finally Rewritten Instruction#:\n\n\n"
                                            "#Instruction#:\n", "evol_trajectory": []}] * 2).encode("utf-8")
    module = bench()
    with pytest.raises(ValueError, match=r"sha256 .*, expected " + module.SHA256):
        module.as_candidates(published)
    converted = module.as_candidates(published, hashlib.sha256(published).hexdigest())
    assert "licence: none stated" in converted["about"] and module.COMMIT in converted["about"]
    methods = converted["methods"]
    assert [m["name"] for m in methods] == ["step_0", "step_1"]
    assert methods[0]["method"] == "Rewrite it.\nStep 4\n#Finally Rewritten Instruction#:"
    assert methods[1]["source"].startswith("Zeng-WH/Auto-Evol-Instruct@e26b08d data/autoevol_llama3_optimizer.json, "
                                           "entry 1")
    assert len(parse_methods(methods, "converted")) == 2  # a valid candidates file
