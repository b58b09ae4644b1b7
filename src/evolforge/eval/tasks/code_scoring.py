"""HumanEval and MBPP pass@1 through :mod:`evolforge.eval.sandbox`, for the task configs in ``tasks/``.

The harness's own ``humaneval`` / ``mbpp`` tasks score with the Hugging Face ``evaluate`` metric
``code_eval``: a script downloaded from the hub at import time, run in-process threads with no memory,
network or filesystem isolation, behind ``HF_ALLOW_CODE_EVAL=1``. The ``evolforge_humaneval`` and
``evolforge_mbpp`` tasks keep those tasks' prompts (the ``*_instruct`` variants: chat models answer inside
a prefilled code fence) and replace the scoring: each candidate program, with its tests, runs in its own
sandboxed subprocess.

Two switches, both set by :func:`evolforge.eval.harness.evaluate` for the duration of a run:

- ``EVOLFORGE_ALLOW_CODE_EXECUTION=1`` must be set, or scoring refuses to run model code at all;
- ``EVOLFORGE_SANDBOX_TIMEOUT_S`` and ``EVOLFORGE_SANDBOX_MEMORY_MB`` are the per-program limits (unset: the
  defaults of :mod:`evolforge.config.sandbox_limits`).

The verdict is never the program's to give: the program runs in one sandboxed process that only answers
calls with plain data, the tests in another that compares those values and alone can report success
(:func:`evolforge.eval.sandbox.run_untrusted` with ``tests``). For HumanEval the tests' process first runs the
problem's own prompt (trusted: helpers such as ``poly`` or ``encode_cyclic`` that the tests call are the
dataset's, not the model's), and only the entry point is the program's. For MBPP the tests' process runs the
task's ``test_setup_code`` and the import statements of the reference solution (``code``; the tests were
written against it, e.g. ``math.isclose``), and the functions that the reference defines are the program's.

A program scores 1 only when it passed. A sandbox that could not be set up (``error``) is tried once more
before the program scores 0; an ``error`` or a ``timeout`` (which a heavily loaded machine can cause) is
logged as a warning with its status, so a low score from the machine's side is visible.

pass@1 with one greedy sample per problem is the fraction of problems whose program passed.
"""

from __future__ import annotations

import ast
import logging
import os

from evolforge.config.sandbox_limits import MEMORY_MB, PROGRAM_TIMEOUT_S
from evolforge.eval.sandbox import run_untrusted

log = logging.getLogger(__name__)

ALLOW_ENV = "EVOLFORGE_ALLOW_CODE_EXECUTION"
TIMEOUT_ENV = "EVOLFORGE_SANDBOX_TIMEOUT_S"
MEMORY_ENV = "EVOLFORGE_SANDBOX_MEMORY_MB"
FENCE = "```"


def _code_in_open_fence(response: str) -> str:
    """The code a model wrote after a prefilled ```python fence: everything up to the closing fence.

    (The harness's ``mbpp.utils.extract_code_blocks`` prepends a fence and matches ``(?:\\w+)?``
    as the language tag, which swallows a leading ``def`` or ``import``; this does not.)
    """
    if response.lstrip().startswith(FENCE):  # the model opened a fence of its own anyway
        response = response.lstrip()[len(FENCE):].split("\n", 1)[-1]
    end = response.find(FENCE)
    return response if end == -1 else response[:end]


def humaneval_predictions(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Filter: the full function, i.e. the problem's prompt (signature + docstring) + the model's body."""
    return [[doc["prompt"] + _code_in_open_fence(r) for r in resp] for resp, doc in zip(resps, docs, strict=True)]


def mbpp_predictions(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    return [[_code_in_open_fence(r) for r in resp] for resp in resps]


def _first(results) -> str:
    """process_results gets one entry per request; a custom filter keeps each entry a list."""
    while isinstance(results, (list, tuple)):
        results = results[0]
    return results


def score_program(program: str, tests: str | None = None, *, setup: str = "",
                  calls: tuple[str, ...] | None = None) -> float:
    """1.0 when the program ran to its end and its tests passed against the values it returned, judged outside
    its process (``setup`` and ``calls``: see :func:`run_untrusted`), else 0.0."""
    if os.environ.get(ALLOW_ENV) != "1":
        raise RuntimeError(f"refusing to execute model-written code: {ALLOW_ENV}=1 is not set "
                           "(evaluate.allow_code_execution is false)")
    limits = {"timeout_s": float(os.environ.get(TIMEOUT_ENV, PROGRAM_TIMEOUT_S)),
              "memory_mb": int(os.environ.get(MEMORY_ENV, MEMORY_MB))}
    checks = {"tests": tests, "setup": setup, "calls": calls}
    result = run_untrusted(program, **checks, **limits)
    if result.status == "error":  # the sandbox itself could not be set up: not the program's verdict, try once more
        log.warning("sandbox could not run a program (%s); trying once more", result.stderr[-300:].strip())
        result = run_untrusted(program, **checks, **limits)
    if result.status in ("error", "timeout"):  # can be the machine's doing (a loaded box): shown, not hidden
        log.warning("sandbox %s after %.1f s: the program scores 0 (%s)", result.status, result.duration_s,
                    result.stderr[-300:].strip() or "no output")
    elif not result.passed:
        log.debug("sandbox %s: %s", result.status, result.stderr[-300:])
    return float(result.passed)


def humaneval_process_results(doc: dict, results: list) -> dict[str, float]:
    tests = f"{doc['test']}\ncheck({doc['entry_point']})\n"
    return {"pass@1": score_program(_first(results), tests, setup=doc["prompt"], calls=(doc["entry_point"],))}


def reference_imports_and_functions(code: str) -> tuple[str, tuple[str, ...] | None]:
    """The import statements and the top-level function names of a reference solution (trusted data).

    None for the functions when the reference does not parse or defines none: the sandbox's default rule
    (the program's callables that the tests name) applies then."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return "", None
    imports = "\n".join(ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    functions = tuple(n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return imports, functions or None


def mbpp_process_results(doc: dict, results: list) -> dict[str, float]:
    setup = doc.get("test_setup_code") or ""
    imports, functions = reference_imports_and_functions(doc.get("code") or "")
    return {"pass@1": score_program(f"{setup}\n{_first(results)}\n", "\n".join(doc["test_list"]) + "\n",
                                    setup=f"{imports}\n{setup}\n", calls=functions)}


def mbpp_fewshot_samples() -> list[dict]:
    """The three MBPP prompt-split examples that the harness's ``mbpp_instruct`` uses as shots."""
    return [
        {"task_id": 2, "text": "Write a function to find the similar elements from the given two tuple lists.",
         "code": "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n"
                 "  return (res) ",
         "test_list": ["assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
                       "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
                       "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)"],
         "is_fewshot": True},
        {"task_id": 3, "text": "Write a python function to identify non-prime numbers.",
         "code": "import math\r\ndef is_not_prime(n):\r\n    result = False\r\n    for i in "
                 "range(2,int(math.sqrt(n)) + 1):"
                 "\r\n        if n % i == 0:\r\n            result = True\r\n    return result",
         "test_list": ["assert is_not_prime(2) == False", "assert is_not_prime(10) == True",
                       "assert is_not_prime(35) == True"],
         "is_fewshot": True},
        {"task_id": 4, "text": "Write a function to find the largest integers from a given list of numbers using heap "
                               "queue algorithm.",
         "code": "import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = hq.nlargest(n, nums)\r\n"
                 "  return largest_nums",
         "test_list": ["assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
                       "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
                       "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]"],
         "is_fewshot": True},
    ]
