"""The experiments kept under docs/experiments/ (tools/keep_experiment.py, bench/judge_calibration.py) hold what
the results pages and docs/explanation/verification.md say of them, and the shipped settings follow from them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "docs" / "experiments"


def kept(name: str) -> dict:
    return json.loads((EXPERIMENTS / name).read_text(encoding="utf-8"))


def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_judge_threshold_is_the_calibrated_one():
    """The table is recomputed from the kept probabilities and the labels; the shipped ``verify.right_at`` is the
    one the bench recommends from it: the lowest threshold at which enough answers called right are right enough,
    or null (the judge cannot vouch) where none is."""
    calibration = _bench("judge_calibration")
    result = kept("judge-calibration.json")
    rows = calibration.labelled()
    by_id = {item["id"]: item for item in result["per_item"]}
    assert set(by_id) == {r["id"] for r in rows}
    assert all(by_id[r["id"]]["label"] == r["label"] for r in rows)
    table = calibration.table(rows, [by_id[r["id"]]["p_right"] for r in rows],
                              [by_id[r["id"]]["reason_says"] for r in rows])
    assert table == result["table"]
    chosen = result["recommended"]
    assert (chosen["precision"], chosen["min_called"]) == (calibration.PRECISION, calibration.MIN_CALLED)
    assert chosen["right_at"] == calibration.recommended(table) == params()["verify"]["right_at"]


def test_the_shipped_selection_rests_on_checks_not_on_the_judge():
    """The committed shipped run: with ``verify.right_at`` null the judge calls nothing right, and every selected
    item is one a test, a seed's check or a recomputed number vouched for (none unsure, none unverified)."""
    verify = json.loads((ROOT / "metrics" / "verify.json").read_text(encoding="utf-8"))
    select = json.loads((ROOT / "metrics" / "select.json").read_text(encoding="utf-8"))
    assert params()["verify"]["right_at"] is None and params()["select"]["require_vouched"]
    assert verify["per_method"]["judge"]["right"] == 0
    checked_right = sum(verify["per_method"][m]["right"] for m in ("answer_check", "code_tests", "numeric"))
    assert 1 <= select["selected"] <= checked_right == verify["per_verdict"]["right"]
    assert select["removed_by_filter"]["not_vouched"] >= verify["per_method"]["judge"]["unsure"]


def test_the_shipped_optimizer_parses_a_candidate_every_step_on_a_dev_set_of_ten():
    optimize = json.loads((ROOT / "metrics" / "optimize.json").read_text(encoding="utf-8"))
    assert optimize["dev_size"] >= 10 and optimize["steps_run"] >= 1
    assert all(any(c["parsed"] for c in step["candidates"]) for step in optimize["loop"])
    assert optimize["outcome"].startswith(("improved", "kept the initial method: "))



def test_the_weak_method_experiment_measured_every_step_on_ten_items():
    """The kept Fig. 4 experiment (docs/results/auto-evol-fig4.md): run from the weak method, every step proposed candidates that
    parsed or were refused for a stated reason, each scored on the whole development set, and the outcome it records
    follows from its figures (kept: no candidate strictly below the starting method)."""
    weak = kept("weak-method.json")
    optimize = weak["metrics"]["optimize"]
    assert "optimize.initial_method=weak" in weak["command"] and optimize["dev_size"] >= 10
    assert optimize["steps_run"] == len(optimize["loop"]) >= 2
    for step in optimize["loop"]:
        assert all(c["parsed"] or c["parse_error"] for c in step["candidates"])
        assert all(c["failures"] is not None for c in step["candidates"] if c["parsed"])
    best_candidate = min(c["failures"] for step in optimize["loop"] for c in step["candidates"] if c["parsed"])
    if best_candidate < optimize["initial_failures"]:
        assert optimize["outcome"].startswith("improved") and optimize["best_failures"] == best_candidate
    else:
        assert optimize["outcome"].startswith("kept the initial method")
        assert optimize["best_failures"] == optimize["initial_failures"]


def test_the_autoif_experiment_keeps_verified_items():
    """The kept AutoIF experiment (docs/results/autoif.md): responses that pass their constraint's kept functions make the
    pool without a fallback; verify checks each item's content beside its constraint (no item rests on the
    constraint alone), and select keeps at least three items verified right, none of the others."""
    autoif = kept("autoif.json")
    metrics = autoif["metrics"]
    verify = metrics["verify"]
    assert "autoif.scenario=autoif" in autoif["command"]
    assert metrics["autoif/verify"]["constraints_verified"] >= 1
    assert metrics["pool"]["scenario"] == "autoif" and metrics["pool"]["fallback"] is None
    assert metrics["pool"]["autoif_items"] == metrics["autoif/respond"]["responses_kept"] >= 3
    assert sum(verify["constraint_passed_by_content"].values()) == verify["verified"]
    assert not any(verify["per_method"]["answer_check"].values())
    assert verify["constraint_passed_by_content"]["right"] == verify["per_verdict"]["right"]
    assert 3 <= metrics["select"]["selected"] <= verify["per_verdict"]["right"]


def test_the_zero_shot_weak_method_experiment_is_kept_as_it_ran():
    """The weak-method experiment with the papers' zero-shot evolving prompt (docs/results/auto-evol-fig4.md): every candidate
    measured on the 10 development items by the rounds' rules, the weak method kept because none failed fewer."""
    experiment = kept("weak-zero-shot.json")
    optimize = experiment["metrics"]["optimize"]
    assert "evolve.few_shot=false" in experiment["command"] and "initial_method=weak" in experiment["command"]
    assert optimize["dev_size"] >= 10 and optimize["steps_run"] >= 1 and optimize["parseable_candidates"] >= 1
    assert optimize["best_failures"] == optimize["initial_failures"] and not optimize["optimized"]


def test_the_whole_output_weak_method_experiment_found_no_decrease_once_answers_fail():
    """The weak-method experiment under the Auto Evol-Instruct code's parse (docs/results/auto-evol-fig4.md): its first run, on
    code whose not_an_instruction rule read answers in steps as requests, reported an improvement that was an
    evolver answering its instructions; on the code since, the same command keeps the weak method."""
    before, after = kept("weak-zero-shot-whole-output-b9862c5.json"), kept("weak-zero-shot-whole-output.json")
    assert before["command"] == after["command"] and "evolve.missing_marker=whole_output" in after["command"]
    first, now = before["metrics"]["optimize"], after["metrics"]["optimize"]
    assert first["optimized"] and first["best_failures"] < first["initial_failures"]
    assert not now["optimized"] and now["best_failures"] == now["initial_failures"] and now["dev_size"] >= 10
    assert all(c["failures"] == now["dev_size"] for step in now["loop"] for c in step["candidates"] if c["parsed"])


def test_the_guided_prompt_experiment_is_kept_with_its_reading():
    """The weak-method experiment with optimize.optimization_prompt guided (docs/results/auto-evol-fig4.md): the metrics report a
    decrease, and the method it chose carries an instruction of its own, which the kept reading says the evolver
    copied: the page must not read it as a better method."""
    experiment = kept("weak-guided.json")
    optimize = experiment["metrics"]["optimize"]
    assert "optimize.optimization_prompt=guided" in experiment["command"] and optimize["dev_size"] >= 10
    assert optimize["parseable_candidates"] == optimize["candidates_proposed"]
    assert optimize["best_failures"] < optimize["initial_failures"]
    assert "JavaScript function" in experiment["method"] and "not a better method" in experiment["method_read"]
    page = (ROOT / "docs" / "results" / "auto-evol-fig4.md").read_text(encoding="utf-8")
    assert "it is not a better method" in page and "weak-guided.json" in page


def test_the_guided_prompt_experiment_again_with_the_copied_method_rule_keeps_the_weak_method():
    """The guided experiment's command again, after evolve.elimination.copied_method (docs/results/auto-evol-fig4.md): the same
    candidates from the call cache, and the one that carried the method's own instruction now fails as copied; the
    decrease weak-guided.json reported is gone."""
    before, after = kept("weak-guided.json"), kept("weak-guided-copied.json")
    assert after["command"].replace("weak-guided-copied", "weak-guided") == before["command"]
    first, now = before["metrics"]["optimize"], after["metrics"]["optimize"]
    assert now["calls"] == 0 and now["cache_hits"] > 0  # the same answers, judged by the new rule
    assert first["best_failures"] < first["initial_failures"]
    assert not now["optimized"] and now["best_failures"] == now["initial_failures"]
    copied = [reasons for step in after["candidate_failures_by_reason"] for reasons in step
              if reasons and reasons.get("copied_method_text")]
    assert len(copied) == 1 and copied[0]["copied_method_text"] >= 4
    page = (ROOT / "docs" / "results" / "auto-evol-fig4.md").read_text(encoding="utf-8")
    assert "weak-guided-copied.json" in page


def test_four_candidates_a_step_found_no_better_method_than_the_weak_one():
    """The guided experiment with four candidates a step (docs/results/auto-evol-fig4.md): every candidate parsed, none failed
    fewer development items than the weak method, so the weak method is kept; the page says what the candidates
    were."""
    experiment = kept("weak-guided-m4.json")
    optimize = experiment["metrics"]["optimize"]
    assert "optimize.candidates=4" in experiment["command"] and optimize["dev_size"] >= 10
    assert optimize["parseable_candidates"] == optimize["candidates_proposed"] == 8
    failures = [c["failures"] for step in optimize["loop"] for c in step["candidates"]]
    assert min(failures) > optimize["initial_failures"] and not optimize["optimized"]
    assert experiment["candidate_failures_by_reason"][1][3] == {"missing_final_marker": optimize["dev_size"]}
    page = (ROOT / "docs" / "results" / "auto-evol-fig4.md").read_text(encoding="utf-8")
    assert "weak-guided-m4.json" in page


def test_the_whole_output_decrease_was_labelled_answers_and_is_gone_once_labels_fail():
    """The four-candidate guided experiment under whole_output (docs/results/auto-evol-fig4.md): its first run reported a decrease
    step by step, and its kept rewrites show every one of the chosen method's labelled "Rewritten Instruction:"; with
    that label failing as template words, the same answers from the call cache keep the weak method."""
    before, after = kept("weak-guided-m4-whole-5037f26.json"), kept("weak-guided-m4-whole.json")
    assert before["command"] == after["command"] and "evolve.missing_marker=whole_output" in after["command"]
    first, now = before["metrics"]["optimize"], after["metrics"]["optimize"]
    assert first["optimized"] and first["best_failures"] < first["initial_failures"]
    final = before["dev_rewrites"]["final"]
    assert len(final) == first["dev_size"] and all(r["rewrite"].startswith("Rewritten Instruction:") for r in final)
    assert now["calls"] == 0 and not now["optimized"] and now["best_failures"] == now["initial_failures"]
    assert "not a better method" in before["method_read"]
    page = (ROOT / "docs" / "results" / "auto-evol-fig4.md").read_text(encoding="utf-8")
    assert "weak-guided-m4-whole.json" in page and "weak-guided-m4-whole-5037f26.json" in page


def test_the_amend_experiment_lowers_the_weak_methods_failures_and_its_reading_is_kept():
    """Fig. 4 on the demo (docs/results/auto-evol-fig4.md): from the weak method, an optimizer that writes rules to add lowers the
    development failures; the record keeps the rewrites under both methods, and the items gained are the ones its
    reading names (harder rewrites and one paraphrase), each unchanged under the weak method."""
    experiment = kept("weak-amend.json")
    optimize = experiment["metrics"]["optimize"]
    assert "optimize.initial_method=weak" in experiment["command"]
    assert "optimize.optimization_prompt=amend" in experiment["command"]
    assert optimize["dev_size"] >= 10 and optimize["optimized"]
    assert optimize["best_failures"] < optimize["initial_failures"]
    weak, chosen = experiment["dev_rewrites"]["initial"], experiment["dev_rewrites"]["final"]
    assert len(weak) == len(chosen) == optimize["dev_size"]
    assert sum(r["reason"] is not None for r in weak) == optimize["initial_failures"]
    assert sum(r["reason"] is not None for r in chosen) == optimize["best_failures"]
    gained = [(w, c) for w, c in zip(weak, chosen) if w["reason"] is not None and c["reason"] is None]
    assert {w["reason"] for w, _ in gained} == {"unchanged"}
    named = ("muffins", "second_largest", "240-page book")  # two harder rewrites, one paraphrase
    assert sorted(next(n for n in named if n in c["parent"]) for _, c in gained) == sorted(named)
    assert experiment["method"].startswith("You are an Instruction Rewriter") and "Add a requirement" in experiment["method"]
    assert "2 of its 3 items are harder" in experiment["method_read"]


def test_two_rewrites_per_instruction_reach_round_3_with_one_judged_item_that_is_easier_when_read():
    """evolve.rewrites_per_instruction=2 on the shipped demo: round 3 keeps rewrites (none at k=1) and its mean expected
    score is above the seeds', but its one judged item, read, drops what its parent added: the record keeps both."""
    k2 = kept("harder-k2.json")
    assert "evolve.rewrites_per_instruction=2" in k2["command"]
    assert all(k2["metrics"][f"evolve/round_{r}"]["rewrites_per_instruction"] == 2 for r in (1, 2, 3))
    rounds = k2["metrics"]["evolve"]["difficulty"]["rounds"]
    per_round = k2["metrics"]["judge"]["per_round"]
    for name, r in [("seeds", "0"), ("round_1", "1"), ("round_2", "2"), ("round_3", "3")]:
        assert rounds[name]["judged"] == per_round[r]["items"]
        assert abs(rounds[name]["mean_expected"] - per_round[r]["mean_difficulty_expected"]) < 1e-3
    assert k2["metrics"]["evolve/round_3"]["evolved"] == len(k2["readings"]["round_3"]) == 2
    assert rounds["round_3"]["mean_expected"] > rounds["seeds"]["mean_expected"]
    judged = [r for r in k2["readings"]["round_3"] if r["judged"]]
    assert rounds["round_3"]["judged"] == len(judged) == 1 and judged[0]["label"] == "easier"


def test_the_vllm_recipe_ran_every_stage_to_select_without_a_failed_call():
    """docs/how-to/servers.md's vLLM recipe, word for word on the CPU build: the check passed, dvc repro reached
    select, and no stage's role recorded a failed call (the server answered every request)."""
    run = kept("servers-vllm-recipe.json")
    assert run["outcome"]["check_rc"] == 0 and run["outcome"]["repro_rc"] == 0
    assert run["outcome"]["stages_run"][-1] == "select" and run["metrics"]["select"]["selected"] >= 1
    roles = [(name, role, stats) for name, m in run["metrics"].items() for role, stats in (m.get("llm") or {}).items()]
    assert {role for _, role, _ in roles} == {"evolver", "optimizer", "responder", "judge"}
    assert all(stats["failures"] == 0 for _, _, stats in roles), roles
    assert all(sum(s["calls"] for _, r, s in roles if r == role) > 0 for role in ("evolver", "optimizer", "judge"))
