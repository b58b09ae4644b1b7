"""Evolving: which Evol-Instruct method each item gets (:func:`assign_methods`), the chat of one evolving call --
Evol-Instruct's in-depth and in-breadth templates, or an Auto Evol-Instruct method text -- with the method's
worked examples before it under ``evolve.few_shot`` (:func:`evolving_messages`), Auto Evol-Instruct's starting
method (:func:`initial_method_text`) and the call that applies a method text (:func:`evolve_with_method`), which
the evolve and optimize steps both make.

>>> assign_methods(["a", "b"], 1, breadth=False) == [assign_methods(["a"], 1, breadth=False)[0],
...                                                   assign_methods(["b"], 1, breadth=False)[0]]
True
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, NamedTuple, Sequence

import yaml

from evolforge.core.prompts import PromptLibrary
from evolforge.io.records import make_id
from evolforge.llm.cached import LLM
from evolforge.llm.requests import ChatRequest
from evolforge.llm.types import Completion
from evolforge.steps.common import copying, elimination

if TYPE_CHECKING:
    from evolforge.steps.evolve.settings import EvolveSettings, MissingMarker

IN_DEPTH = ["add_constraints", "deepening", "concretizing", "reasoning"]
BREADTH = "breadth"
METHOD_TEMPLATE = "optimize/evolve_with_method.j2"
INITIAL_TEMPLATES = {"initial": "optimize/initial_method.j2", "weak": "optimize/weak_method.j2"}


def _hash_int(*parts: Any) -> int:
    return int(hashlib.sha256("\0".join(map(str, parts)).encode("utf-8")).hexdigest()[:15], 16)


def assign_methods(ids: Sequence[str], round_index: int, assignment: str = "round_robin", breadth: bool = True,
                   seed: int = 0) -> list[str]:
    """Evol-Instruct method per item, from the item's id and the round only -- never its row position, so
    adding, removing or reordering items leaves every other item's method (and its cached calls) alone.

    ``round_robin``: each lineage walks the methods in order, one step per round, from a start fixed by
    a hash of its id (pass the items' ``root_id``): a chain never meets the same method twice in a row and
    meets every method once in ``len(methods)`` rounds, as the SLM paper's rotation by round intends.
    Over many items each method gets an equal share up to sampling noise (the hash is uniform).
    ``random``: an independent draw per (seed, round, item), as the original Evol-Instruct does.

    >>> assign_methods(["a", "b"], 1, breadth=False) == [assign_methods(["a"], 1, breadth=False)[0],
    ...                                                   assign_methods(["b"], 1, breadth=False)[0]]
    True
    """
    methods = IN_DEPTH + ([BREADTH] if breadth else [])
    if assignment == "random":
        return [methods[_hash_int(seed, round_index, i) % len(methods)] for i in ids]
    return [methods[(_hash_int(i) + round_index) % len(methods)] for i in ids]


def evolving_prompt(prompts: PromptLibrary, method: str, instruction: str, method_text: str | None = None) -> str:
    """The evolving prompt for ``instruction``: Evol-Instruct's breadth or in-depth template for those
    methods, otherwise (an Auto Evol-Instruct strategy) the evolving method ``method_text``."""
    if method == BREADTH:
        return prompts.render("evolve/breadth.j2", instruction=instruction)
    if method in IN_DEPTH:
        return prompts.render("evolve/depth.j2", method=method, instruction=instruction)
    if method_text is None:
        raise ValueError(f"method {method!r} needs an evolving method text")
    return prompts.render(METHOD_TEMPLATE, method=method_text, instruction=instruction)


EXAMPLE_FILES = {"evol": "evolve/examples.yaml", "auto": "optimize/examples.yaml"}  # under prompts/


@functools.lru_cache(maxsize=8)
def _parsed_yaml(path: Path, stamp: tuple[int, int]) -> Any:
    """``path`` parsed, once per version of the file (``stamp``: its mtime and size): the examples are read
    for every item evolved with few-shot examples, and parsing the file each time cost 20x the stage's CPU."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_examples(prompts: PromptLibrary, method: str) -> list[dict[str, str]]:
    """The worked examples of ``method`` (an Evol-Instruct method, or an Auto Evol-Instruct strategy),
    each {"instruction", "answer"}; one clear error when the file lacks them."""
    auto = method not in IN_DEPTH and method != BREADTH
    path = prompts.root / EXAMPLE_FILES["auto" if auto else "evol"]
    key = "auto" if auto else method
    try:
        stat = path.stat()
        found = _parsed_yaml(path, (stat.st_mtime_ns, stat.st_size))
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the few-shot examples (evolve.few_shot): {err}") from None
    examples = found.get(key) if isinstance(found, dict) else None
    answer = "answer" if auto else "rewritten"
    if not isinstance(examples, list) or not examples or not all(
            isinstance(e, dict) and isinstance(e.get("instruction"), str) and isinstance(e.get(answer), str)
            for e in examples):
        raise ValueError(f"{path}: {key}: expected a non-empty list of {{instruction, {answer}}} examples")
    return [{"instruction": e["instruction"], "answer": e[answer]} for e in examples]


def worked_example_additions(prompts: PromptLibrary, methods: Iterable[str]) -> frozenset[tuple[str, ...]]:
    """The phrases that the worked examples of ``methods`` add to their instructions (each example's final
    instruction against its instruction): a rewrite that holds one its parent lacks copied the example
    (the ``copied_example`` rule, :func:`evolforge.steps.common.copying.copies_example`)."""
    return copying.example_additions(
        (e["instruction"], elimination.parse_final_instruction(e["answer"]) or e["answer"])
        for method in sorted(set(methods)) for e in load_examples(prompts, method))


def evolving_messages(prompts: PromptLibrary, method: str, instruction: str, method_text: str | None = None,
                      few_shot: bool = False) -> list[dict[str, str]]:
    """The chat of one evolving call: the evolving prompt for ``instruction``; with ``few_shot``, after the
    method's worked examples, each an earlier turn (its prompt, answered by its rewrite)."""
    turns = []
    if few_shot:
        for example in load_examples(prompts, method):
            turns += [{"role": "user",
                       "content": evolving_prompt(prompts, method, example["instruction"], method_text)},
                      {"role": "assistant", "content": example["answer"]}]
    return [*turns, {"role": "user", "content": evolving_prompt(prompts, method, instruction, method_text)}]


def template_hash(prompts: PromptLibrary, method: str, method_text: str | None = None) -> str:
    if method == BREADTH:
        return prompts.hash("evolve/breadth.j2")
    if method in IN_DEPTH:
        return prompts.hash("evolve/depth.j2")
    return make_id(prompts.hash(METHOD_TEMPLATE), method_text)


def initial_method_text(prompts: PromptLibrary, which: str) -> str:
    """The starting method: the paper's initial method (Fig. 2) or its weak baseline (Fig. 9)."""
    if which not in INITIAL_TEMPLATES:
        raise ValueError(f"params.yaml optimize.initial_method: {which!r} is not one of {sorted(INITIAL_TEMPLATES)}")
    return prompts.render(INITIAL_TEMPLATES[which])


class Evolution(NamedTuple):
    """One instruction evolved with a method text."""

    instruction: str | None  # parsed after the final-instruction marker; None when missing (evolve.missing_marker)
    raw: str | None  # the evolver's whole answer; None when the call failed
    finish_reason: str | None  # "length": the answer stopped at max_tokens


@dataclass(frozen=True)
class EvolvingCall:
    """How an evolving call is asked and its answer read, built once from the ``evolve`` settings
    (:meth:`from_evolve`): the evolve rounds and optimize's development runs ask the same way.

    ``step_format``: the calls of an Auto Evol-Instruct method text, with their own controls and budget
    (``evolve.method_controls`` / ``method_max_tokens``); otherwise Evol-Instruct's (``evolve.controls`` /
    ``max_tokens``). ``missing_marker``: how a method's answer without its final-instruction marker reads."""

    temperature: float | None = None  # None: the role's
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    controls: Mapping[str, Any] | None = field(default=None, hash=False)  # over the role's
    step_format: bool = True
    few_shot: bool = False  # evolve.few_shot: the method's worked examples as earlier turns
    missing_marker: MissingMarker = "fail"

    @classmethod
    def from_evolve(cls, settings: EvolveSettings, *, step_format: bool, temperature: float | None = None,
                    top_p: float | None = None, seed: int | None = None) -> "EvolvingCall":
        """The call the ``evolve`` settings describe, at the given sampling."""
        controls, max_tokens = settings.step_format() if step_format else (settings.controls, settings.max_tokens)
        return cls(temperature, top_p, max_tokens, seed, controls, step_format, settings.few_shot,
                   settings.missing_marker)

    def requests(self, llm: LLM, prompts: PromptLibrary, methods: Sequence[str], instructions: Sequence[str],
                 method_texts: Sequence[str | None], sample_index: int | Sequence[int] = 0) -> list[ChatRequest]:
        """One request per instruction, each evolved by its method: an Evol-Instruct method, or a strategy with its
        method text (``method_texts``, one per instruction; None for Evol-Instruct's). ``sample_index``: one for all
        requests, or one per request (a round's further rewrites of an instruction)."""
        merged = llm.role.controls.merged(self.controls,
                                          "evolve.method_controls" if self.step_format else "evolve.controls")
        indices = [sample_index] * len(methods) if isinstance(sample_index, int) else list(sample_index)
        return [llm.request(evolving_messages(prompts, m, i, text, self.few_shot), temperature=self.temperature,
                            top_p=self.top_p, max_tokens=self.max_tokens, seed=self.seed, sample_index=index,
                            controls=merged)
                for m, i, text, index in zip(methods, instructions, method_texts, indices)]

    def parse(self, completion: Completion, method: str) -> Evolution:
        """The evolution an answer holds: an Evol-Instruct method's whole answer, a method text's after its
        final-instruction marker; a failed call holds none."""
        if completion.failed:
            return Evolution(None, None, None)
        evolved = (completion.text.strip() if method in IN_DEPTH or method == BREADTH
                   else elimination.parse_final_instruction(completion.text, self.missing_marker))
        return Evolution(evolved, completion.text, completion.finish_reason)


def evolve_pairs(llm: LLM, prompts: PromptLibrary, pairs: Sequence[tuple[str, str]], call: EvolvingCall,
                 desc: str = "evolve") -> list[Evolution]:
    """Each (method text, instruction) evolved, in one call to ``llm``. A failed call is an Evolution with no
    instruction and no raw text (as unparseable as a missing marker, and nothing to show)."""
    requests = call.requests(llm, prompts, ["auto"] * len(pairs), [i for _, i in pairs], [m for m, _ in pairs])
    return [call.parse(c, "auto") for c in llm.generate(requests, desc=desc)]


def evolve_with_methods(llm: LLM, prompts: PromptLibrary, instructions: list[str], method_texts: list[str],
                        call: EvolvingCall, desc: str = "evolve") -> list[Evolution]:
    """Apply each method text to each instruction in one call to ``llm`` (its batches filled across them):
    method-major, ``len(instructions)`` evolutions per method (:func:`evolve_pairs`)."""
    return evolve_pairs(llm, prompts, [(m, i) for m in method_texts for i in instructions], call, desc)


def evolve_with_method(llm: LLM, prompts: PromptLibrary, instructions: list[str], method_text: str,
                       call: EvolvingCall, desc: str = "evolve") -> list[Evolution]:
    """:func:`evolve_with_methods` for one method text."""
    return evolve_with_methods(llm, prompts, instructions, [method_text], call, desc)
