"""Compile the bytecode of what the pipeline's stages import, ahead of them: ``make run`` starts this in the
background, at low priority, beside ``dvc repro``.

Nothing is compiled at install (Makefile: uv without ``--compile-bytecode``): a module's bytecode is written the
first time a process imports it and read back by every later one. In a fresh venv the first stages to import torch,
transformers, TRL and lm-eval (fetch_model, finetune, evaluate_base) would compile them inline, about 24 s on two
AVX2 cores (``bench/bytecode.py``), while the model fetches before them leave the cores time to spare (each fetch is
mostly one core's work, waiting on its files at times; ``make run`` runs the three at once). Importing the same
modules here, at the lowest priority, writes the bytecode the stages then read. Python writes each file atomically,
so two processes compiling one module at once both leave a whole file.

Imports only: no model is loaded and nothing but bytecode is written. A module that fails to import is skipped
(the stage that needs it says why); the stamp (``--stamp``) makes a later ``make run`` skip the whole warm-up.
llama-cpp-python may still be compiling when the warm-up starts (``make run`` fetches the models meanwhile): its
modules (:data:`COMPILED`) come last, and only once the file ``--ready`` names exists (the install's stamp, written
after pip has put the whole package in place), so a half-installed package is never imported; otherwise the first
stage that loads llama.cpp compiles their bytecode itself.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

# what the stages import, the modules they load lazily included (each stage process's own imports):
# the llama.cpp and hf backends, the GGUF reader of fetch_model, TRL's trainer (finetune), the harness and the
# metrics its offline tasks import (evaluate, evaluate_base), the sentence encoder's model class (diversity)
MODULES = (
    "evolforge.core.stage", "evolforge.core.fetch", "gguf",
    "torch", "transformers", "transformers.models.llama.modeling_llama", "transformers.models.bert.modeling_bert",
    "transformers.models.qwen2.tokenization_qwen2", "transformers.generation.utils",
    "evolforge.llm.backends.llamacpp.backend", "evolforge.llm.backends.hf",
    "datasets", "peft", "accelerate", "trl", "trl.trainer.sft_trainer", "evolforge.train.finetune",
    "lm_eval.evaluator", "lm_eval.models.huggingface", "lm_eval.tasks",
    "lm_eval.tasks.hendrycks_math.utils", "math_verify", "langdetect", "nltk", "sklearn.metrics", "networkx",
    "evolforge.eval.harness",
)
COMPILED = ("llama_cpp",)  # llama-cpp-python's modules (its native library loads with them): last, once installed


def warm(modules: tuple[str, ...] = MODULES) -> tuple[int, list[str]]:
    """Import ``modules`` in order: (modules loaded in all, the names that failed to import)."""
    import evolforge  # noqa: F401  (its import hooks first, as in every stage: they change what transformers imports)

    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001  (an optional package missing here: the stage that needs it will say so)
            failed.append(name)
    return len(sys.modules), failed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stamp", type=Path, help="skip when this file exists; write it when done")
    parser.add_argument("--ready", type=Path, help="import llama-cpp-python's modules only if this file exists "
                                                     "when the others are done (its install's stamp)")
    args = parser.parse_args(argv)
    if args.stamp is not None and args.stamp.exists():
        return
    started = time.perf_counter()
    loaded, failed = warm()
    if args.ready is None or args.ready.exists():
        loaded, late = warm(COMPILED)
        failed += late
    else:
        print(f"warm_imports: {args.ready} not there yet: {', '.join(COMPILED)} left to the stage that loads it")
    print(f"warm_imports: {loaded} modules in {time.perf_counter() - started:.1f} s"
          + (f"; not importable here: {', '.join(failed)}" if failed else ""))
    if args.stamp is not None:
        args.stamp.touch()


if __name__ == "__main__":
    main()
