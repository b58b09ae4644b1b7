"""Other quantizations of the shipped GGUF against it on this machine: which tensors llama.cpp repacks for its CPU
kernels, and the engine's rates.

    flock /work/heavy.lock python bench/quantizations.py [--model models/Qwen2.5-Coder-1.5B-Instruct-GGUF]
        [--variants q4_0 q4_0_q6k_output q8_0 q4_k_output] [--threads 2] [--repeats 1] [--workdir DIR]
        [--quality data/seeds/demo.jsonl] [--json out.json]

Each variant is written from the shipped file by llama.cpp's own quantizer (``llama_model_quantize`` with
``allow_requantize``: the weights are dequantized and quantized again, so a variant can only lose what the shipped
file holds, never recover what its 4 bits lost):

- ``q4_0``: every matrix Q4_0, the output projection and token embedding too: the type llama.cpp repacks on x86
  in every matrix (``q4_0_8x8``);
- ``q4_0_q6k_output``: Q4_0 with llama.cpp's default for the output projection (Q6_K);
- ``q8_0``: every matrix Q8_0 (twice the bytes; the 4-bit weights held at 8 bits);
- ``q4_k_output``: Q4_K_M again, the output projection in Q4_K instead of Q6_K (llama.cpp's recipe then picks its
  own layers for Q6_K, so other matrices change type too).

For the shipped file and each variant: the tensors' types (parameters per type), the tensors llama.cpp repacks at
load (its load log's ``repack tensor ... with <layout>`` lines, from a child process), and the engine's rates as
``bench/stage_account.py`` measures them (prefill tokens/s at several lengths, tokens/s of a step of n
sequences). The llama.cpp build is the one importable here: with ``PYTHONPATH`` naming another build (one compiled
for AVX2 alone, say) the same run measures that build's kernels. With ``--quality SEEDS`` each model also answers
the seeds of that file that carry a ``check``, as the respond step asks (its template, greedy, ``respond.max_tokens``
of params.yaml), and each answer is checked (the seed's number, or its Python tests run on the answer's code): right
per model, and how many answers are word for word the shipped file's. Run it on an idle machine (under the lock on
a shared one): the figures are throughputs.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import yaml
from stage_account import measure_engine

# variant -> (llama_ftype name, type of the output projection and token embedding or None: llama.cpp's default)
VARIANTS = {
    "q4_0": ("MOSTLY_Q4_0", "Q4_0"),
    "q4_0_q6k_output": ("MOSTLY_Q4_0", None),
    "q8_0": ("MOSTLY_Q8_0", None),
    "q4_k_output": ("MOSTLY_Q4_K_M", "Q4_K"),
}
SHIPPED = "shipped"
REPACK = re.compile(r"repack tensor '?([\w.]+)'? with (\w+)")


def requantize(source: Path, target: Path, variant: str, threads: int) -> None:
    """Write ``variant`` of the GGUF ``source`` to ``target`` with llama.cpp's quantizer."""
    import llama_cpp

    ftype, output = VARIANTS[variant]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{ftype}")
    params.allow_requantize = True
    params.nthread = threads
    if output is not None:
        params.output_tensor_type = params.token_embedding_type = getattr(llama_cpp, f"GGML_TYPE_{output}")
    partial = target.with_name(target.name + ".partial")  # a run stopped halfway leaves no file taken as whole
    if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not write {variant} of {source}")
    partial.replace(target)


def link_tokenizer(source_folder: Path, folder: Path) -> None:
    """Links in ``folder`` (a variant's GGUF) to the shipped folder's other files: tokenizer, chat template."""
    for f in source_folder.iterdir():
        if f.suffix != ".gguf" and f.is_file() and not (folder / f.name).exists():
            (folder / f.name).symlink_to(f.resolve())


def tensor_types(path: Path) -> dict[str, float]:
    """Millions of parameters per tensor type in the GGUF."""
    from gguf import GGUFReader

    params: Counter[str] = Counter()
    for t in GGUFReader(str(path)).tensors:
        params[t.tensor_type.name] += int(t.n_elements)
    return {k: round(v / 1e6, 1) for k, v in sorted(params.items())}


def repacked(path: Path) -> dict[str, int]:
    """Tensors llama.cpp repacks when it loads ``path`` with its extra buffer types here, by layout (a child
    process: llama.cpp writes its load log to the process's stderr)."""
    code = ("import sys, llama_cpp; llama_cpp.Llama(sys.argv[1], n_ctx=64, n_threads=1, verbose=True)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"llama.cpp could not load {path}:\n{out.stderr[-2000:]}")
    return dict(sorted(Counter(m.group(2) for m in REPACK.finditer(out.stderr)).items()))


def checkable_seeds(path: Path) -> list[tuple[dict, str]]:
    """(record, its check as canonical JSON) of each seed of ``path`` that carries a ``check``, read as the seed
    stage reads them."""
    from evolforge.steps.common.source import read_checks
    from evolforge.steps.common.source_read import ROW, read_source

    records = read_source(str(path))
    if not isinstance(records, list):
        raise SystemExit(f"{path}: --quality reads a JSON or JSONL seed file")
    by_row = {r[ROW]: r for r in records}
    return [(by_row[row], check) for row, check in read_checks(records, str(path)).items()]


def answers(folder: Path, seeds: list[dict], threads: int, max_tokens: int, batch_size: int) -> list[str | None]:
    """The model's greedy answers to ``seeds``, asked as the respond step asks (no call cache)."""
    from evolforge.core.prompts import PromptLibrary
    from evolforge.llm.backends.llamacpp.backend import LlamaCppBackend
    from evolforge.llm.cached import LLM
    from evolforge.steps.common.responses import respond

    llm = LLM(LlamaCppBackend(str(folder), threads=threads, batch_size=batch_size), None, batch_size=batch_size)
    done = respond(llm, PromptLibrary("prompts"), [s["instruction"] for s in seeds],
                   [s.get("input") or "" for s in seeds], temperature=0.0, max_tokens=max_tokens)
    return [None if c.failed else c.text for c in done]


def quality(folders: dict[str, Path], seeds_file: Path, threads: int) -> dict[str, dict]:
    """Per model: the checkable seeds answered right, and answers the same as the shipped file's."""
    from evolforge.steps.common.answer_check import check_answer

    params = yaml.safe_load(Path("params.yaml").read_text())
    max_tokens = int(params["respond"].get("max_tokens") or params["roles"]["responder"]["max_tokens"])
    batch_size = int(params["roles"]["responder"]["batch_size"])
    seeds = checkable_seeds(seeds_file)
    records = [record for record, _ in seeds]
    texts = {name: answers(folder, records, threads, max_tokens, batch_size) for name, folder in folders.items()}
    out = {}
    for name, got in texts.items():
        right = [check_answer(check, a).passed for (_, check), a in zip(seeds, got)]
        out[name] = {"checked": len(seeds), "right": sum(right),
                     "right_ids": [k for k, ok in enumerate(right) if ok],
                     "same_as_shipped": sum(a == b for a, b in zip(got, texts[SHIPPED]))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/Qwen2.5-Coder-1.5B-Instruct-GGUF", help="the shipped GGUF's folder")
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=1, help="best of this many measurements per size")
    ap.add_argument("--workdir", default=None, help="where the variants are written (default: a temporary folder)")
    ap.add_argument("--quality", default=None, help="a seed file (JSONL): answer its checkable seeds with each model")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()

    from evolforge.llm.backends.llamacpp.backend import gguf_file

    source_folder = Path(args.model)
    source = gguf_file(str(source_folder))
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="quantizations-"))
    folders = {SHIPPED: source_folder}
    for variant in args.variants:
        target = work / variant / "model.gguf"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            requantize(source, target, variant, args.threads)
        link_tokenizer(source_folder, target.parent)
        folders[variant] = target.parent

    rows = {}
    for name, folder in folders.items():
        path = gguf_file(str(folder))
        engine = measure_engine(str(folder), args.threads, repeats=args.repeats)
        rows[name] = {"bytes": path.stat().st_size, "types_mparams": tensor_types(path), "repacked": repacked(path),
                      "prefill": engine["prefill"], "step": engine["step"], "extra_bufts": engine["extra_bufts"],
                      "cpu": engine["cpu"]}
    shipped = rows[SHIPPED]
    top = max(shipped["prefill"])
    print(f"{'model':<18}{'MiB':>7}  {'prefill ' + str(top):>12}" + "".join(f"{'step ' + str(n):>11}"
                                                                          for n in shipped["step"])
          + "  (tokens/s; x the shipped file)")
    for name, row in rows.items():
        cells = [f"{row['prefill'][top]:6.1f} {row['prefill'][top] / shipped['prefill'][top]:4.2f}x"]
        cells += [f"{row['step'][n]:5.1f} {row['step'][n] / shipped['step'][n]:3.2f}" for n in shipped["step"]]
        print(f"{name:<18}{row['bytes'] / 2**20:7.0f}  {cells[0]:>12}" + "".join(f"{c:>11}" for c in cells[1:]))
    for name, row in rows.items():
        print(f"{name}: types (M parameters) {row['types_mparams']}; repacked at load {row['repacked'] or 'none'}")
    if args.quality:
        for name, found in quality(folders, Path(args.quality), args.threads).items():
            rows[name]["quality"] = found
            print(f"{name}: {found['right']} of {found['checked']} checkable seeds answered right; "
                  f"{found['same_as_shipped']} answers word for word the shipped file's")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "models": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
