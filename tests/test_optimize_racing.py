"""Racing (optimize.racing): candidates stopped once they cannot win choose what a full measurement chooses, in fewer
evolver calls; a candidate that misses its reply format stops early; a step none of whose candidates is an evolving
method says once that the optimizer model is the limit. On the scripted fakes of tests/test_optimize.py."""

from __future__ import annotations

import dataclasses
import json
import random
import re

import pytest

from evolforge.config.backend_specs import HfSettings
from evolforge.llm.backends.fake import FakeBackend
from evolforge.llm.cached import LLM
from evolforge.steps.optimize import racing
from evolforge.steps.optimize import step as optimize_step
from evolforge.steps.optimize.result import MethodScore, optimizer_limit, summary
from evolforge.steps.optimize.settings import OptimizeSettings
from evolforge.steps.optimize.dev import split_dev_pool
from test_optimize import (EVOLVE_SPLIT, EVOLVER_ROLE, OPTIMIZER_ROLE, PROMPTS, UNPARSEABLE, ZERO, evolver_reply, fails,
                           fenced, load_stage, run, stage_setup)


SMALL_BATCH = dataclasses.replace(EVOLVER_ROLE, settings=HfSettings(batch_size=2))  # two requests a round


def evolutions(fake: FakeBackend) -> int:
    """Evolving requests the fake evolver was sent (answers to evolved instructions left out)."""
    return sum(EVOLVE_SPLIT in r.messages[-1][1] for r in fake.sent)


def random_plan(seed: int, dev_size: int):
    """An optimizer whose candidates fail a seeded number of development items (some lose the marker, some are
    written back unchanged), differing with the method they rewrite and the sample index."""
    def plan(current: str, j: int) -> str:
        rng = random.Random(f"{seed}/{current}/{j}")
        kind = rng.random()
        if kind < 0.1:
            return fenced(current)  # written back unchanged
        if kind < 0.2:
            return UNPARSEABLE
        tag = "nomarker " if kind < 0.3 else ""
        return fenced(f"{tag}c{rng.randrange(10**6)} fails={rng.randint(0, dev_size)}")
    return plan


@pytest.mark.parametrize("seed", range(24))
@pytest.mark.parametrize("selection", ["lowest_failure", "no_regression"])
def test_racing_chooses_what_a_full_measurement_chooses(seed, selection):
    """Without the format cut (a judgement, not a bound), racing never stops a candidate that could still become
    the result or the method a later step starts from: the result and every step's choice are a full
    measurement's, from fewer (never more) evolutions."""
    dev_size = 6
    steps, patience = [(1, None), (3, None), (4, 1), (4, 2), (3, 2)][seed % 5]
    options = dict(steps=steps, patience=patience, candidates=3, dev_size=dev_size, selection=selection,
                   initial=f"m0 fails={seed % (dev_size + 1)}", n=dev_size + 8, format_cut=0,
                   evolver_role=SMALL_BATCH if seed % 2 else EVOLVER_ROLE)
    full = run(random_plan(seed, dev_size), racing=False, **options)
    raced = run(random_plan(seed, dev_size), racing=True, **options)
    assert (raced.result.method, raced.result.best.failures) == (full.result.method, full.result.best.failures)
    assert raced.result.outcome.split(" (")[0] == full.result.outcome.split(" (")[0]
    assert raced.result.steps_run == full.result.steps_run and raced.result.stop_reason == full.result.stop_reason
    last = raced.result.steps_run - 1  # a step after which none runs may keep its method where the paper moves on
    assert [r["chosen"] for r in raced.result.log][:last] == [r["chosen"] for r in full.result.log][:last]
    assert evolutions(raced.evolver_fake) <= evolutions(full.evolver_fake)


def test_racing_saves_evolutions_on_candidates_that_cannot_win():
    """The shipped case: one step, every candidate worse than the initial method: each stops at the failure that
    makes it unable to win, and the metrics say how far each got and why it stopped."""
    plan = {"m0 fails=1": [fenced("m1 fails=4"), fenced("m2 fails=3")]}
    full, raced = run(plan, racing=False), run(plan, racing=True)
    assert raced.result.method == full.result.method == "m0 fails=1"
    assert evolutions(raced.evolver_fake) < evolutions(full.evolver_fake)
    rows = summary(raced.result, {})["loop"][0]["candidates"]
    assert [(c["measured"], c["cut"], c["failures"]) for c in rows] == [(1, "cannot_win", 1), (1, "cannot_win", 1)]
    assert raced.result.log[0]["chosen"] is None  # no later step reads the step's choice: none is measured
    assert full.result.log[0]["chosen"] == 1 and all(c["cut"] is None for c in summary(full.result, {})["loop"][0]
                                                      ["candidates"])
    assert raced.result.outcome == ("kept the initial method: it fails 1 of 4 development items and no candidate "
                                    "failed fewer (2 stopped before the end of the set, unable to fail fewer "
                                    "(optimize.racing))")


def test_a_candidate_that_can_win_is_measured_in_full():
    raced = run({"m0 fails=2": [fenced("m1 fails=1"), fenced("m2 fails=3")]}, racing=True, initial="m0 fails=2")
    first, second = raced.result.log[0]["candidates"]
    assert first["dev"]["measured"] == 4 and first["dev"]["cut"] is None and raced.result.method == "m1 fails=1"
    assert second["dev"]["cut"] in ("cannot_win", "outranked") and second["dev"]["measured"] < 4


def test_a_candidate_missing_its_reply_format_stops_after_format_cut_items():
    """dev 8, two candidates share the evolver's batch of 8: four items each a round; the one whose first three
    answers lack the final marker stops there, and is no evolving method."""
    plan = {"m0 fails=6": [fenced("nomarker fails=0"), fenced("m2 fails=5")]}
    raced = run(plan, racing=True, initial="m0 fails=6", dev_size=8, n=20, format_cut=3)
    nomarker, other = raced.result.log[0]["candidates"]
    assert (nomarker["dev"]["measured"], nomarker["dev"]["cut"]) == (4, "no_reply_format")
    assert nomarker["not_a_method"] == "no_reply_format" and other["not_a_method"] is None
    assert other["dev"]["measured"] == 8 and raced.result.method == "m2 fails=5"
    off = run(plan, racing=True, initial="m0 fails=6", dev_size=8, n=20, format_cut=0)
    assert off.result.log[0]["candidates"][0]["dev"]["cut"] == "cannot_win"  # the limit stops it: 6 failures


def test_an_unchanged_candidate_outranks_with_its_known_total():
    """A candidate written back unchanged has the current method's total: under lowest_failure a candidate that
    fails more cannot be the step's choice, even where later steps read it."""
    plan = {"m0 fails=1": [fenced("m0 fails=1"), fenced("m2 fails=3")]}
    raced = run(plan, racing=True, steps=2, evolver_role=SMALL_BATCH)
    unchanged, worse = raced.result.log[0]["candidates"]
    assert unchanged["unchanged"] and worse["dev"]["cut"] == "outranked" and worse["dev"]["measured"] == 2
    assert raced.result.log[0]["chosen"] == run(plan, racing=False, steps=2).result.log[0]["chosen"] == 0


def test_race_rules_follow_the_selection_and_the_step():
    settings = OptimizeSettings(format_cut=2)
    best, current = (MethodScore(failure_rate=k / 10, failures=k, missing_marker=0, success=1 - k / 10, score=0.0)
                     for k in (2, 5))
    assert racing.Race.for_step(settings, best, current, last=True) == racing.Race(limit=2, rank=True, format_cut=2)
    assert racing.Race.for_step(settings, best, current, last=False) == racing.Race(limit=None, rank=True, format_cut=2)
    regression = OptimizeSettings(selection="no_regression")
    assert racing.Race.for_step(regression, best, current, last=False) == racing.Race(limit=6, format_cut=3)
    assert racing.Race.for_step(OptimizeSettings(racing=False), best, current, last=True) is None


# --- the optimizer model as the limit -----------------------------------------------------------------------

def copying_optimizer(request) -> str:
    """Answers the optimization turn with a 'method' that is a plan about the trajectory's first case."""
    if len(request.messages) == 1:
        return "feedback: case 0 failed"
    trajectory = json.loads(re.search(r"(\[\{.*\}\])", request.messages[0][1], re.S).group(1))
    return fenced(f"Plan: {trajectory[0]['stage0']} with more detail, then {trajectory[0]['stage0']} again fails=0")


def long_items(n: int) -> list[dict]:
    subjects = ["a brave knight who saves the quiet mountain village", "a lonely robot that learns to paint sunsets",
                "a young baker who opens a shop by the harbour", "an old sailor who maps the northern islands"]
    return [{"id": f"id{i:02d}", "instruction": f"Write a short story about {subjects[i % 4]} number {i}.",
             "input": ""} for i in range(n)]


def test_candidates_that_copy_their_trajectory_are_no_methods_and_the_limit_is_said():
    rng = random.Random(0)
    dev, pool = split_dev_pool(long_items(14), dev_size=4, batch_size=2, rng=rng)
    evolver = LLM(FakeBackend(evolver_reply(lambda m, q: False)), None, role=EVOLVER_ROLE)
    optimizer = LLM(FakeBackend(copying_optimizer, model="fake-optimizer"), None, role=OPTIMIZER_ROLE)
    result = optimize_step.optimize_method(pool, dev, initial_method="m0 fails=1", evolver=evolver, optimizer=optimizer,
                                           prompts=PROMPTS, rng=rng, call=ZERO, settings=OptimizeSettings(
                                               steps=2, candidates=2, batch_size=2, dev_size=4, patience=None))
    assert all(c["not_a_method"] == "copies_trajectory" for r in result.log for c in r["candidates"])
    assert result.optimizer_limit.startswith("the optimizer model is the limit: in 2 of 2 step(s) none of its "
                                             "candidates was an evolving method (4 x a plan about the trajectory")
    assert "roles.optimizer" in result.optimizer_limit and "optimize.candidates_file" in result.optimizer_limit


@pytest.mark.parametrize("copy_cut", [True, False])
def test_a_candidate_that_copies_its_trajectory_is_not_measured_under_racing(copy_cut):
    """optimize.copy_cut: a plan about the trajectory's cases costs no development run; the outcome and the limit
    are said as when it was measured, and the metrics say why it was not."""
    rng = random.Random(0)
    dev, pool = split_dev_pool(long_items(14), dev_size=4, batch_size=2, rng=rng)
    fake = FakeBackend(evolver_reply(lambda m, q: q == dev[0]["instruction"]))
    evolver = LLM(fake, None, role=EVOLVER_ROLE)
    optimizer = LLM(FakeBackend(copying_optimizer, model="fake-optimizer"), None, role=OPTIMIZER_ROLE)
    result = optimize_step.optimize_method(pool, dev, initial_method="m0 fails=1", evolver=evolver, optimizer=optimizer,
                                           prompts=PROMPTS, rng=rng, call=ZERO, settings=OptimizeSettings(
                                               steps=1, candidates=2, batch_size=2, dev_size=4, patience=None,
                                               copy_cut=copy_cut))
    rows = summary(result, {})["loop"][0]["candidates"]
    assert result.method == "m0 fails=1" and all(r["not_a_method"] == "copies_trajectory" for r in rows)
    assert result.optimizer_limit.startswith("the optimizer model is the limit")
    if copy_cut:
        assert [(r["measured"], r["cut"], r["failure_rate"]) for r in rows] == [(0, "copies_trajectory", None)] * 2
        assert evolutions(fake) == 4 + 2  # the development set and the trajectory, with the initial method
        assert "2 not measured, a plan about its trajectory's instructions (optimize.copy_cut)" in result.outcome
    else:
        assert all(r["measured"] and r["cut"] != "copies_trajectory" for r in rows)
        assert evolutions(fake) > 4 + 2 and "copy_cut" not in result.outcome


SHIPPED_CONTROLS = {"assistant_prefix": "```Optimized Method\n", "stop": ["```"]}  # params.yaml optimize.controls


@pytest.mark.parametrize("change,stops", [({}, True), ({"copy_cut": False}, False), ({"keep_reply_format": True}, False),
                                          ({"optimization_prompt": "amend"}, False), ({"controls": {}}, False)])
def test_the_optimization_turn_may_stop_where_its_answer_copies_the_trajectory(change, stops):
    """Under racing and copy_cut, where the answer is the method itself, the optimization turn carries the
    trajectory's phrases the current method lacks (Controls.stop_phrases): an in-process backend ends the answer
    once it holds METHOD_COPY_PHRASES of them, a candidate that is not measured anyway. The fake decodes it whole,
    as a server would, and the outcome is the same."""
    from evolforge.steps.common.copying import METHOD_COPY_PHRASES, method_phrases

    rng = random.Random(0)
    dev, pool = split_dev_pool(long_items(14), dev_size=4, batch_size=2, rng=rng)
    optimizer_fake = FakeBackend(copying_optimizer, model="fake-optimizer")
    settings = OptimizeSettings(**{"steps": 1, "candidates": 2, "batch_size": 2, "dev_size": 4, "patience": None,
                                   "controls": SHIPPED_CONTROLS, **change})
    result = optimize_step.optimize_method(
        pool, dev, initial_method="m0 fails=1", evolver=LLM(FakeBackend(evolver_reply(lambda m, q: False)), None,
                                                            role=EVOLVER_ROLE),
        optimizer=LLM(optimizer_fake, None, role=OPTIMIZER_ROLE), prompts=PROMPTS, rng=rng, call=ZERO,
        settings=settings)
    turns = [r for r in optimizer_fake.sent if len(r.messages) == 3]
    assert len(turns) == 2 and result.method == "m0 fails=1"
    if not stops:
        assert all(not r.controls.stop_phrases for r in turns if r.controls is not None)
        return
    trajectory = result.log[0]["trajectory"]
    expected = {p for case in trajectory for k, text in case.items() if k.startswith("stage")
                for p in method_phrases(text)} - method_phrases("m0 fails=1")
    for r in turns:
        assert {tuple(p.split()) for p in r.controls.stop_phrases} == expected
        assert r.controls.stop_phrases_at_least == METHOD_COPY_PHRASES and r.controls.assistant_prefix
    rows = summary(result, {})["loop"][0]["candidates"]
    assert [(r["measured"], r["cut"]) for r in rows] == [(0, "copies_trajectory")] * 2


def test_a_step_with_one_evolving_method_is_no_limit():
    log = [{"candidates": [{"not_a_method": "no_reply_format"}, {"not_a_method": None}]}]
    assert optimizer_limit(log) is None
    log.append({"candidates": [{"not_a_method": "unparsed"}, {"not_a_method": "no_reply_format"}]})
    assert optimizer_limit(log).startswith("the optimizer model is the limit: in 1 of 2 step(s)")


def test_the_limit_reaches_the_stage_log_metrics_and_report_once(tmp_path, monkeypatch, capsys):
    from evolforge.report.sections import optimize_html

    stage = load_stage()
    evolver = LLM(FakeBackend(evolver_reply(lambda m, q: fails(m) > int(q.split()[-1]) % 4)), None, role=EVOLVER_ROLE)
    optimizer = LLM(FakeBackend(lambda request: "feedback" if len(request.messages) == 1
                                else fenced(f"nomarker fails=0 {request.sample_index}"), model="fake-opt"), None)
    monkeypatch.setattr(optimize_step, "open_models", lambda llms, **kw: dict(evolver=evolver, optimizer=optimizer))
    argv, out = stage_setup(tmp_path, "auto")
    stage.main(argv)
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert printed.count("the optimizer model is the limit") == 1
    assert metrics["optimizer_limit"].startswith("the optimizer model is the limit: in 1 of 1 step(s)")
    page = optimize_html({"optimize_metrics": metrics})
    assert page.count("the optimizer model is the limit") == 1 and "no_reply_format" in page


def test_nothing_is_measured_where_the_best_fails_nothing():
    """A last step whose best method fails no development item: no candidate can fail fewer, none is measured."""
    raced = run({"m0 fails=0": [fenced("m1 fails=0"), fenced("m2 fails=2")]}, racing=True, initial="m0 fails=0")
    assert [(c["dev"]["measured"], c["dev"]["cut"]) for c in raced.result.log[0]["candidates"]] == [
        (0, "cannot_win"), (0, "cannot_win")]
    assert evolutions(raced.evolver_fake) == 4 + 2  # the development set and the trajectory, with the initial method
