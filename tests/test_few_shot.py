"""Few-shot demonstrations (evolve.few_shot): the shipped worked examples become earlier chat turns before
the evolving prompt; zero-shot (the papers' default) is the prompt alone, as it always was."""

from __future__ import annotations

import shutil

import pytest

from evolforge.core.prompts import PromptLibrary
from evolforge.steps.evolve.settings import EvolveSettings
from evolforge.steps.common.evolving import BREADTH, IN_DEPTH, evolving_messages, evolving_prompt, load_examples


def test_zero_shot_is_the_prompt_alone_and_the_default(repo):
    prompts = PromptLibrary(repo / "prompts")
    assert EvolveSettings().few_shot is False
    assert evolving_messages(prompts, "add_constraints", "Name a colour.") == [
        {"role": "user", "content": evolving_prompt(prompts, "add_constraints", "Name a colour.")}]


@pytest.mark.parametrize("method", [*IN_DEPTH, BREADTH, "auto"])
def test_few_shot_puts_each_worked_example_before_the_prompt(repo, method):
    prompts = PromptLibrary(repo / "prompts")
    method_text = "Rewrite the #Instruction#." if method == "auto" else None
    examples = load_examples(prompts, method)
    messages = evolving_messages(prompts, method, "Name a colour.", method_text, few_shot=True)
    assert len(messages) == 2 * len(examples) + 1
    for k, example in enumerate(examples):
        assert messages[2 * k] == {"role": "user",
                                   "content": evolving_prompt(prompts, method, example["instruction"], method_text)}
        assert messages[2 * k + 1] == {"role": "assistant", "content": example["answer"]}
    assert messages[-1]["content"] == evolving_prompt(prompts, method, "Name a colour.", method_text)


def test_a_broken_examples_file_is_one_clear_error(repo, tmp_path):
    shutil.copytree(repo / "prompts", tmp_path / "prompts")
    (tmp_path / "prompts/evolve/examples.yaml").write_text("add_constraints:\n  - instruction: only this\n")
    with pytest.raises(ValueError, match=r"examples.yaml: add_constraints: expected a non-empty list"):
        evolving_messages(PromptLibrary(tmp_path / "prompts"), "add_constraints", "q", few_shot=True)
