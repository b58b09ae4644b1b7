"""A stage's declared ``params:`` in dvc.yaml are the params sections its code reads, and where it declares a
section field by field, the fields, both ways (tools/stage_params.py reads the code of each stage's import closure)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("stage_params", REPO / "tools" / "stage_params.py")
stage_params = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage_params)


def test_every_stage_declares_the_params_its_code_reads_and_only_those(capsys):
    assert stage_params.main(["--check"]) == 0, capsys.readouterr().err[-3000:]


def test_select_declares_its_own_sections_only():
    """The dataset card quotes what select's inputs recorded, not params.yaml: select declares `select` and `card`,
    so a role or another stage's section leaves it up to date unless it changed one of its inputs."""
    text = (REPO / "dvc.yaml").read_text(encoding="utf-8")
    select = stage_params.yaml.safe_load(text)["stages"]["select"]
    assert stage_params.declared(select) == {"select", "card"}
    assert all(isinstance(entry, str) for entry in select["params"])  # no model identity either: it reads the file


def test_a_missing_and_an_extra_declaration_are_both_reported():
    text = (REPO / "dvc.yaml").read_text(encoding="utf-8")
    assert "    - dedup\n" in text
    without = text.replace("    params:\n    - dedup\n", "    params:\n    - judge\n", 1)  # dedup's params
    assert stage_params.compare(without)["dedup"] == {"undeclared": ["dedup"], "unread": ["judge"], "unknown": []}


def test_the_reads_it_sees(tmp_path):
    module = tmp_path / "step.py"
    module.write_text(
        "def run(params):\n"
        "    cfg = load_section(params, 'dedup', DedupSettings)\n"
        "    judge = open_role(params, 'judge', None)\n"
        "    llms = load_llm_params(params, ('responder', 'base'))\n"
        "    card = {k: params[k] for k in ('seed', 'evolve')}\n"
        "    return params.get('roles'), params[0]\n"
        "def open_role(params, name, cache):\n"
        "    return load_role(params, name)\n"
        "def guess(params, which):\n"
        "    return params.get(which + '_x')\n", encoding="utf-8")
    found, problems = stage_params.reads([module])
    assert found == {"dedup", "roles.judge", "roles.responder", "roles.base", "seed", "evolve", "roles"}
    assert problems == [f"{module}:10 (guess): reads a params section whose name cannot be told"]


def test_fields_are_compared_where_a_stage_declares_a_section_field_by_field():
    """verify hands `respond` to response_sampling, which reads temperature and max_tokens: the two fields it
    declares. One left out, or one more declared, is reported (a section-level check saw neither)."""
    text = (REPO / "dvc.yaml").read_text(encoding="utf-8")
    assert "    - respond.temperature\n    - respond.max_tokens\n    - roles.responder\n    - roles.judge\n" in text
    without = text.replace("    - respond.temperature\n    - respond.max_tokens\n    - roles.responder\n    - roles.judge\n",
                           "    - respond.temperature\n    - roles.responder\n    - roles.judge\n", 1)
    assert stage_params.compare(without)["verify"] == {"undeclared": ["respond.max_tokens"], "unread": [], "unknown": []}
    extra = text.replace("    - respond.temperature\n    - respond.max_tokens\n    - roles.responder\n    - roles.judge\n",
                         "    - respond.temperature\n    - respond.max_tokens\n    - respond.rounds\n    - roles.responder\n"
                         "    - roles.judge\n", 1)
    assert stage_params.compare(extra)["verify"] == {"undeclared": [], "unread": ["respond.rounds"], "unknown": []}


def test_the_fields_it_sees(tmp_path):
    module = tmp_path / "step.py"
    module.write_text(
        "class Cfg:\n"
        "    a: int = 1\n"
        "    b: int = 2\n"
        "    c: int = 3\n"
        "    def doubled(self):\n"
        "        return 2 * self.b\n"
        "class Other:\n"
        "    x: int = 0\n"
        "    y: int = 0\n"
        "def main(params):\n"
        "    cfg, other = load_section(params, 'one', Cfg), load_section(params, 'two', Other)\n"
        "    whole = load_section(params, 'three', Cfg)\n"
        "    return use(cfg, scale=cfg.doubled()), load_section(params, 'four', Other).y, asdict(whole), keep(other)\n"
        "def use(settings, scale):\n"
        "    return settings.a * scale\n"
        "def keep(o):\n"
        "    return [o]\n", encoding="utf-8")
    reads = stage_params.field_reads([module])
    assert reads == {"one": {"a", "b"}, "two": {"x", "y"}, "three": {"a", "b", "c"}, "four": {"y"}}
    spec = {"params": ["one.a", "two.x", "three", "four.y", "four.x"]}
    assert stage_params.field_differences([module], spec) == (["one.b", "two.y"], ["four.x"])
