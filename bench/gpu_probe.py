"""GPU probe: evolforge's in-process GPU paths on a random-weight model of a named shape, in one command.

Builds a model of ``--shape`` (default Qwen2.5-1.5B's: 28 layers, hidden 1536, 12/2 heads, MLP 8960, tied
embeddings) over the vocabulary of ``--tokenizer``, random weights, bf16 on a GPU (fp32 on a CPU), saves it, and
times evolforge's own code on it; each figure is a JSON line starting ``RESULT`` (and ``--json`` writes them all):

* ``scorer``    :func:`evolforge.score.ifd.ifd_scores` on synthetic items of 140 to 560 tokens at each token
  budget (``--budgets``; ``device``: sized from the free GPU memory), packed rows where the GPU runs the
  variable-length kernel (and padded rows at the first budget); tokens/s and % of the bf16 peak (2 x parameters FLOPs
  per scored token, both passes), peak memory; and the one-item reference loop on a few items (speed ratio,
  largest IFD difference), and the padded rows on the same items (largest IFD difference: packing's check on the GPU).
* ``generate``  ``HFBackend.generate`` greedy and sampled (temperature 0.7, top_p 0.95) against transformers'
  ``model.generate`` (one left-padded static batch, as many new tokens) at each ``--gen`` size (requests x
  tokens); random weights never end a turn, so every request runs to its max_tokens. Each is timed ``--repeat``
  times and the best run reported beside the first: the first run at a batch size pays its warm-up (on an H100 it
  took up to twice as long, for either implementation, whichever ran first).
* ``finetune``  :func:`evolforge.train.finetune.finetune`, full and LoRA (rank 8, all linear), a few steps:
  tokens/s, model FLOPs utilisation (6 x parameters per trained token for full, 4 x for LoRA: no weight
  gradients), peak memory, whether batches were padding-free; and the steady figures, from a clock of every
  optimizer step (device synchronised): the median step after the first sixth, split into its forward and
  backward passes and the rest (clipping, AdamW). ``--ft-variants`` adds runs with ``compile`` (torch.compile),
  ``padded`` (no padding-free batches), ``lora-compile``, ``packed`` (``finetune.packing``: conversations packed into
  rows of max_length tokens), ``packed-compile`` or ``lora-packed``. Where ``liger-kernel`` is installed every run
  uses Liger's kernels (TRL's ``use_liger_kernel``; each record says whether it did) but ``no-liger``. There the
  scorer is also timed with Liger's RMSNorm, SwiGLU and RoPE kernels on a second copy of the model.

A section that fails prints its error as a RESULT line and the next one runs; ``--section-s`` bounds each
measurement (a slow one is recorded as timed out). ``--profile`` adds torch profiler tables (the 20 costliest
operations by device and by host time, and the device's busy share) of a scorer run, of a greedy decode by either
generate (the first ``--gen`` size) and of three fine-tuning steps mid-run, to see where the time goes;
``--compile`` scores once more with ``compile=True`` and once with ``compile="loss"`` (the loss alone).

    python bench/gpu_probe.py --tokenizer tok-qwen                       # on a GPU machine, all sections
    python bench/gpu_probe.py --tokenizer tok-qwen --sections scorer --budgets 65536,device
    python bench/gpu_probe.py --tokenizer models/tiny --small            # CPU smoke run, a few-M model

On a GPU machine without a package index or model hub (docs/how-to/gpu-probe.md has the whole recipe), carry, in
folders that ``.git/info/exclude`` ignores: ``tok-qwen/`` (the shipped GGUF folder's ``tokenizer.json``, gzipped:
``tokenizer.json.gz`` is read as is, plus ``tokenizer_config.json`` and ``chat_template.jinja``: about 2.1 MB)
and ``.whl/`` (the wheels the GPU image lacks, ``pip download --no-deps --only-binary=:all: --python-version
3.12 --platform manylinux_2_17_x86_64``: polars 1.20.0, pydantic + pydantic-core + annotated-types +
typing-inspection, orjson, trl 1.16.0, datasets 5.2.0, dill, multiprocess: about 36 MiB). The checkout's own
``src/``, ``prompts/`` and ``bench/`` travel as tracked files. Then::

    pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:$PWD/src HF_HUB_OFFLINE=1 python bench/gpu_probe.py --tokenizer tok-qwen --json $OUT/probe.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import json
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from gpu import bf16_peak  # noqa: E402 (the vendors' dense bf16 peaks)

SHAPES = {  # name -> Qwen2 config fields (vocabulary: the tokenizer's)
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6),
    "small": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=4096),
}
WORDS = ("the a function list number value string return compute write given each which total sum with from into "
         "python code file data table rows items answer question step first second third output input sorted "
         "prime even odd integer float dictionary key array index loop while for if else error test case").split()
RECORDS: list[dict] = []


def emit(record: dict) -> None:
    RECORDS.append(record)
    print("RESULT " + json.dumps(record), flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


@contextlib.contextmanager
def deadline(seconds: int):
    """Raise TimeoutError in the block after ``seconds`` (checked between Python steps)."""
    def expire(*_):
        raise TimeoutError(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def timed(limit: int, fn, *args, **kwargs):
    """(result, seconds) of ``fn(*args, **kwargs)``, the device synchronised on both sides, at most ``limit`` s."""
    sync()
    start = time.perf_counter()
    with deadline(limit):
        out = fn(*args, **kwargs)
        sync()
    return out, time.perf_counter() - start


def profile_tables(prof, seconds: float) -> dict:
    """Where a profiled span's time went: the 20 costliest operations by device time and by host time, and the
    device's busy share of the wall time (its kernels' summed time over ``seconds``)."""
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]  # not the operators above them
    device = sum(e.self_device_time_total for e in kernels) / 1e6
    tables = {"by_host": events.table(sort_by="self_cpu_time_total", row_limit=20)}
    if torch.cuda.is_available():
        tables["by_device"] = events.table(sort_by="self_cuda_time_total", row_limit=20)
    for table in tables.values():
        print(table, flush=True)
    return {"wall_s": round(seconds, 4), "device_busy_s": round(device, 4),
            "device_busy_pct": round(100 * device / seconds, 1) if seconds else None, **tables}


def profiled(section: str, what: str, fn, *args, **kwargs):
    """Run ``fn`` under torch's profiler and emit where its time went (:func:`profile_tables`), from the same run
    as its figures."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        sync()
        seconds = time.perf_counter() - start
    emit({"section": section, "profile": what, **profile_tables(prof, seconds)})
    return out


def step_clock(section: str, what: str, profile_steps: tuple[int, int] | None = None):
    """A transformers ``TrainerCallback`` that times every optimizer step, device synchronised: its forward and
    backward passes (to the optimizer's call) and the rest (clipping, AdamW, the scheduler); at the end of
    training it emits the median step and its split, and with ``profile_steps`` (first, count) the profiler's
    tables of those steps (:func:`profile_tables`)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.steps, self.prof, self.mark = [], None, 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if profile_steps and state.global_step == profile_steps[0]:
                from torch.profiler import ProfilerActivity, profile

                activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
                self.prof, self.profiled_from = profile(activities=activities), time.perf_counter()
                self.prof.__enter__()
            sync()
            self.mark = self.begin = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            sync()
            self.mark = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            end = time.perf_counter()
            self.steps.append((self.mark - self.begin, end - self.mark))
            if self.prof is not None and state.global_step == profile_steps[0] + profile_steps[1]:
                self.prof.__exit__(None, None, None)
                emit({"section": section, "profile": f"{what}, steps {profile_steps[0] + 1}-{state.global_step}",
                      **profile_tables(self.prof, end - self.profiled_from)})
                self.prof = None

        def median(self) -> tuple[float, float]:
            """(forward and backward, the rest) of the median step after the first sixth (their warm-up)."""
            steady = sorted(self.steps[len(self.steps) // 6:], key=sum)
            return steady[len(steady) // 2] if steady else (float("nan"), float("nan"))

        def median_step(self) -> float:
            return sum(self.median())

        def on_train_end(self, args, state, control, **kwargs):
            if self.prof is not None:  # training ended inside the profiled steps
                self.prof.__exit__(None, None, None)
                emit({"section": section, "profile": f"{what}, steps {profile_steps[0] + 1}-{state.global_step}",
                      **profile_tables(self.prof, time.perf_counter() - self.profiled_from)})
                self.prof = None
            forward_backward, rest = self.median()
            emit({"section": section, "step_clock": what, "steps": len(self.steps),
                  "first_steps_s": [round(sum(step), 3) for step in self.steps[:4]],
                  "median_step_s": round(forward_backward + rest, 4),
                  "forward_backward_s": round(forward_backward, 4), "optimizer_s": round(rest, 4)})

    return StepClock()


def words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def measured_cpu_peak() -> float:
    """FLOP/s of an fp32 1024^3 matmul here (the CPU's figure to divide by)."""
    a = torch.randn(1024, 1024)
    a @ a
    start, reps = time.perf_counter(), 5
    for _ in range(reps):
        a @ a
    return 2 * 1024**3 * reps / (time.perf_counter() - start)


def tokenizer_folder(path: str, work: Path) -> str:
    """``path``, or a copy of it with ``tokenizer.json.gz`` unpacked (how the 11 MiB file travels)."""
    src = Path(path)
    if (src / "tokenizer.json").exists() or not (src / "tokenizer.json.gz").exists():
        return path
    dst = work / "tokenizer"
    shutil.copytree(src, dst, dirs_exist_ok=True)
    with gzip.open(src / "tokenizer.json.gz", "rb") as packed, open(dst / "tokenizer.json", "wb") as out:
        shutil.copyfileobj(packed, out)
    return str(dst)


def build_model(tokenizer_dir: str, shape: str, out: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(vocab_size=len(tokenizer), tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    with torch.no_grad():  # smaller weights: random logits stay finite and spread
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(0.5)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    emit({"section": "build", "shape": shape, "params": sum(p.numel() for p in model.parameters()),
          "vocab": config.vocab_size, "seconds": round(time.perf_counter() - start, 1),
          "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
          "torch": torch.__version__, "transformers": __import__("transformers").__version__})
    del model
    reset_peak()
    return out


def section_scorer(model_dir: Path, args, peak: float) -> None:
    from evolforge.core.models import load_scorer
    from evolforge.score.ifd import ifd_scores, reference_ifd_scores
    from evolforge.score.device import device_token_budget, use_packing
    from evolforge.score.passes import encode_items
    from evolforge.score.varlen import kernel_name

    rng = random.Random(1)
    n = args.score_items
    (q_lo, q_hi), (a_lo, a_hi) = args.item_words
    items = {"instructions": [words(rng, q_lo, q_hi) for _ in range(n)], "inputs": None,
             "responses": [words(rng, a_lo, a_hi) for _ in range(n)]}
    model, tokenizer = load_scorer(str(model_dir))
    params = sum(p.numel() for p in model.parameters())
    encoded, encode_s = timed(args.section_s, encode_items, tokenizer, items["instructions"], [""] * n,
                              items["responses"])
    tokens = sum(len(e.conditioned_ids) + len(e.direct_ids) for e in encoded)  # both passes
    packed = use_packing(model)
    # encode_s: the tokenization inside each ifd_scores call below (host time the GPU may wait for)
    emit({"section": "scorer", "packed_by_default": packed, "kernel": kernel_name(str(model.device)),
          "device_budget": device_token_budget(model, None), "items": n, "tokens": tokens,
          "encode_s": round(encode_s, 2)})
    modes = [None, False] if packed else [None, True] if args.small else [None]
    warm = {k: (v[:32] if v else v) for k, v in items.items()}
    eager = None  # the plain scores at the device budget, which the compiled and Liger runs are checked against
    for index, budget in enumerate(args.budgets):
        cap = None if budget == "device" else int(budget)
        for packing in modes if index == 0 else modes[:1]:  # the other layout at the first budget only
            label = {None: "auto", True: "packed", False: "padded"}[packing]
            try:
                ifd_scores(model, tokenizer, **warm, max_batch_tokens=cap, packing=packing, progress=False)
                reset_peak()
                scores, seconds = timed(args.section_s, ifd_scores, model, tokenizer, **items, max_batch_tokens=cap,
                                        packing=packing, progress=False)
            except Exception as err:  # noqa: BLE001 (recorded; the next measurement runs)
                emit({"section": "scorer", "max_batch_tokens": budget, "packing": label, "error": repr(err)[:500]})
                continue
            emit({"section": "scorer", "impl": "evolforge ifd_scores", "max_batch_tokens": budget,
                  "packing": label, "packed": packed if packing is None else packing, "seconds": round(seconds, 2),
                  "tokens_per_s": round(tokens / seconds), "items_per_s": round(n / seconds, 1),
                  "pct_of_peak": round(100 * 2 * params * tokens / seconds / peak, 2), "peak_gib": peak_gib(),
                  "nulls": int(scores["ifd"].null_count())})
            if budget == "device" and packing is None:
                eager = scores
    if eager is None and (args.compile or liger_available()):
        eager = ifd_scores(model, tokenizer, **items, progress=False)
    if args.compile:
        for parts in (True, "loss"):
            _scorer_compiled(model, tokenizer, items, warm, tokens, params, peak, args, parts, eager)
    if liger_available():
        _scorer_liger(model_dir, items, warm, tokens, params, peak, args, eager)
    if args.profile:
        part = {k: (v[: max(2, n // 8)] if v else v) for k, v in items.items()}
        profiled("scorer", f"ifd_scores, {max(2, n // 8)} items, device budget", ifd_scores, model, tokenizer, **part,
                 progress=False)
    m = args.reference_items
    if not m:
        return
    subset = {k: (v[:m] if v else v) for k, v in items.items()}
    reference, seconds = timed(args.section_s, reference_ifd_scores, model, tokenizer, **subset)
    ours = ifd_scores(model, tokenizer, **subset, progress=False)
    padded = ifd_scores(model, tokenizer, **subset, packing=False, progress=False)
    emit({"section": "scorer", "impl": "reference (one item, HF labels, three passes)", "items": m,
          "seconds": round(seconds, 2), "items_per_s": round(m / seconds, 1),
          "ifd_max_abs_diff_vs_ifd_scores": largest_difference(ours, reference),
          "ifd_max_abs_diff_padded_vs_ifd_scores": largest_difference(ours, padded)})


def largest_difference(a, b) -> float | None:
    """The largest difference between two score tables' IFDs, item by item (None where no item has both)."""
    diffs = [abs(x - y) for x, y in zip(a["ifd"].to_list(), b["ifd"].to_list()) if x is not None and y is not None]
    return max(diffs) if diffs else None


def _scorer_compiled(model, tokenizer, items: dict, warm: dict, tokens: int, params: int, peak: float, args,
                     parts, eager) -> None:
    """``ifd_scores(compile=parts)`` (True: the trunk and the loss; "loss": the loss alone) at the device budget:
    its compilation (on the warm-up items), its tokens/s and the largest IFD difference against ``eager``'s."""
    from evolforge.score.ifd import ifd_scores

    torch._dynamo.reset()
    try:
        _, compile_s = timed(args.section_s, ifd_scores, model, tokenizer, **warm, compile=parts, progress=False)
        reset_peak()
        scores, seconds = timed(args.section_s, ifd_scores, model, tokenizer, **items, compile=parts, progress=False)
    except Exception as err:  # noqa: BLE001 (recorded; the section goes on)
        emit({"section": "scorer", "compile": parts, "error": repr(err)[:1500]})
        return
    emit({"section": "scorer", "impl": f"evolforge ifd_scores, compile={parts!r}", "max_batch_tokens": "device",
          "warm_up_with_compilation_s": round(compile_s, 1), "seconds": round(seconds, 2),
          "tokens_per_s": round(tokens / seconds), "pct_of_peak": round(100 * 2 * params * tokens / seconds / peak, 2),
          "peak_gib": peak_gib(), "ifd_max_abs_diff_vs_eager": largest_difference(scores, eager)})


@contextlib.contextmanager
def modelling_restored():
    """Qwen2's modelling module as it was before the block: applying Liger's kernels (here, or TRL's
    ``use_liger_kernel``) also swaps the module's RoPE function and its norm and MLP classes, for every model loaded
    after; put back, the next measurement runs what it names."""
    from transformers.models.qwen2 import modeling_qwen2

    saved = dict(vars(modeling_qwen2))
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(modeling_qwen2, name, value)


def liger_available() -> bool:
    """Liger's Triton kernels can run: ``liger-kernel`` installed, and a CUDA device."""
    from evolforge.train.device import liger_installed

    return torch.cuda.is_available() and liger_installed()


def _scorer_liger(model_dir: Path, items: dict, warm: dict, tokens: int, params: int, peak: float, args,
                  eager) -> None:
    """``ifd_scores`` at the device budget on a second copy of the scorer with Liger's RMSNorm, SwiGLU and RoPE
    kernels (fused, where eager PyTorch runs the fp32 norm and the MLP's products as separate kernels): tokens/s
    and the largest IFD difference against ``eager``'s."""
    from evolforge.core.models import load_scorer
    from evolforge.score.ifd import ifd_scores

    try:  # the import too: Liger's Triton may not load on this image, and the section goes on without it
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        model, tokenizer = load_scorer(str(model_dir))
        with modelling_restored():
            _apply_liger_kernel_to_instance(model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                            fused_linear_cross_entropy=False)
            ifd_scores(model, tokenizer, **warm, progress=False)
            reset_peak()
            scores, seconds = timed(args.section_s, ifd_scores, model, tokenizer, **items, progress=False)
        del model
    except Exception as err:  # noqa: BLE001 (recorded; the section goes on)
        emit({"section": "scorer", "liger": True, "error": repr(err)[:1500]})
        return
    emit({"section": "scorer", "impl": "evolforge ifd_scores, Liger's RMSNorm/SwiGLU/RoPE", "max_batch_tokens":
          "device", "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds),
          "pct_of_peak": round(100 * 2 * params * tokens / seconds / peak, 2), "peak_gib": peak_gib(),
          "ifd_max_abs_diff_vs_eager": largest_difference(scores, eager)})


def section_generate(model_dir: Path, args, peak: float) -> None:
    from evolforge.llm.backends.hf.backend import HFBackend
    from evolforge.llm.requests import ChatRequest

    backend = HFBackend(str(model_dir), dtype="auto", device="auto")
    emit({"section": "generate", "runs_with": backend.runs_with()})
    tokenizer, model = backend.tokenizer, backend.model
    for size in args.gen:
        n, max_tokens = (int(x) for x in size.split("x"))
        rng = random.Random(2)
        prompts = [words(rng, *args.prompt_words) for _ in range(n)]
        for temperature in (0.0, 0.7):
            top_p = 0.95 if temperature else 1.0
            requests = [ChatRequest.chat([{"role": "user", "content": p}], temperature=temperature, top_p=top_p,
                                         max_tokens=max_tokens, seed=i) for i, p in enumerate(prompts)]
            common = {"section": "generate", "requests": n, "max_tokens": max_tokens, "temperature": temperature}
            try:
                backend.generate(requests[:4])  # warm-up
                runs = [timed(args.section_s, backend.generate, requests) for _ in range(max(1, args.repeat))]
                outs, seconds = min(runs, key=lambda run: run[1])
                ours = sum(o.completion_tokens or 0 for o in outs) / seconds
                emit({**common, "impl": "evolforge HFBackend.generate", "seconds": round(seconds, 2),
                      "first_run_s": round(runs[0][1], 2), "runs": len(runs),
                      "tokens_per_s": round(ours), "failures": sum(1 for o in outs if o.failed)})
            except Exception as err:  # noqa: BLE001
                emit({**common, "impl": "evolforge HFBackend.generate", "error": repr(err)[:500]})
                ours = None
            texts = [backend.render(r) for r in requests]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            sampling = dict(do_sample=bool(temperature), max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                            pad_token_id=tokenizer.pad_token_id)
            if temperature:
                sampling.update(temperature=temperature, top_p=top_p)
            try:
                with torch.inference_mode():
                    runs = [timed(args.section_s, model.generate, **batch, **sampling)
                            for _ in range(max(1, args.repeat))]
                out, seconds = min(runs, key=lambda run: run[1])
                theirs = (out.shape[1] - batch["input_ids"].shape[1]) * n / seconds
                emit({**common, "impl": "transformers model.generate (static batch)", "seconds": round(seconds, 2),
                      "first_run_s": round(runs[0][1], 2), "runs": len(runs), "tokens_per_s": round(theirs),
                      "evolforge_vs_transformers": round(ours / theirs, 2) if ours else None})
            except Exception as err:  # noqa: BLE001
                emit({**common, "impl": "transformers model.generate (static batch)", "error": repr(err)[:500]})
            if args.profile and size == args.gen[0] and not temperature:
                _profile_generate(backend, requests, batch, sampling)


def _profile_generate(backend, requests, batch, sampling) -> None:
    """Where a greedy decode's time goes, warm, in ``HFBackend.generate`` and in transformers' ``generate`` on the
    same prompts (:func:`profiled`): the host's per-step work beside the device's."""
    try:
        profiled("generate", f"HFBackend.generate, {len(requests)} requests, greedy", backend.generate, requests)
        with torch.inference_mode():
            profiled("generate", f"transformers model.generate, {len(requests)} requests, greedy",
                     backend.model.generate, **batch, **sampling)
    except Exception as err:  # noqa: BLE001 (recorded; the section goes on)
        emit({"section": "generate", "profile": "greedy", "error": repr(err)[:500]})


def section_finetune(model_dir: Path, args, peak: float) -> None:
    from transformers import AutoTokenizer

    from evolforge.config.training import FinetuneSettings

    rng = random.Random(3)
    (q_lo, q_hi), (a_lo, a_hi) = args.row_words
    rows = [{"prompt": [{"role": "user", "content": words(rng, q_lo, q_hi)}],
             "completion": [{"role": "assistant", "content": words(rng, a_lo, a_hi)}]} for _ in range(args.ft_rows)]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = [min(args.ft_max_length, len(tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=True,
                                                                         return_dict=False)))
               for r in rows]
    tokens = sum(lengths)  # every conversation, truncated; a step trains batch rows of tokens / train_rows each
    base = FinetuneSettings(batch_size=args.ft_batch, grad_accum=1, max_steps=args.ft_steps,
                            max_length=args.ft_max_length, logging_steps=5, warmup_ratio=0.0, lr=2e-5,
                            gradient_checkpointing=False)
    lora = dataclasses.replace(base, mode="lora", lora_rank=8, lora_alpha=8, lora_dropout=0.0,
                               lora_target_modules="all-linear", lr=1e-4)
    runs = [("full", base, {}), ("lora", lora, {})]
    variants = {"compile": (dataclasses.replace(base, compile=True), {}),
                "padded": (base, {"padding_free": False}),
                "lora-compile": (dataclasses.replace(lora, compile=True), {}),
                "packed": (dataclasses.replace(base, packing=True), {}),
                "packed-compile": (dataclasses.replace(base, packing=True, compile=True), {}),
                "lora-packed": (dataclasses.replace(lora, packing=True), {}),
                "no-liger": (base, {"liger": False})}
    runs += [(name, *variants[name]) for name in args.ft_variants]
    for label, settings, options in runs:
        reset_peak()
        profile_steps = (args.ft_steps // 2, 3) if args.profile and label in ("full", "lora") else None
        clock = step_clock("finetune", label, profile_steps)
        try:
            with liger_off(not options.pop("liger", True)), modelling_restored():
                result = _trained(model_dir, rows, settings, label, args.section_s, callbacks=[clock], **options)
        except Exception as err:  # noqa: BLE001
            emit({"section": "finetune", "mode": label, "error": repr(err)[:1500]})
            continue
        m = result.metrics
        step_tokens = args.ft_batch * tokens / m["train_rows"]
        factor = 6 if settings.mode == "full" else 4  # LoRA: no weight gradients
        median = clock.median_step()
        emit({"section": "finetune", "mode": label, "steps": m["steps"], "batch": args.ft_batch,
              "max_length": args.ft_max_length, "bf16": m["bf16"], "padding_free": m.get("padding_free"),
              "packing": m["packing"], "liger": m["liger"], "compile": settings.compile,
              "trainable": m["trainable_params"], "total": m["total_params"],
              "train_runtime_s": m["runtime_s"], "step_tokens": round(step_tokens),
              "tokens_per_s": round(m["steps"] * step_tokens / m["runtime_s"]),
              "mfu_pct": round(100 * factor * m["total_params"] * m["steps"] * step_tokens / m["runtime_s"] / peak, 2),
              "median_step_s": round(median, 4), "steady_tokens_per_s": round(step_tokens / median),
              "steady_mfu_pct": round(100 * factor * m["total_params"] * step_tokens / median / peak, 2),
              "peak_gib": peak_gib(), "loss_final": m["train_loss_final"]})


@contextlib.contextmanager
def liger_off(off: bool):
    """With ``off``, fine-tuning in the block runs without Liger's kernels even where they are installed."""
    from evolforge.train import finetune

    installed = finetune.liger_installed
    if off:
        finetune.liger_installed = lambda: False
    try:
        yield
    finally:
        finetune.liger_installed = installed


def _trained(model_dir: Path, rows: list[dict], settings, mode: str, limit: int, **options):
    """:func:`evolforge.train.finetune.finetune` on ``rows`` into a temporary folder, at most ``limit`` s
    (``options``: more of its keyword arguments)."""
    from evolforge.train.finetune import finetune

    out = Path(tempfile.mkdtemp(prefix=f"probe-{mode}-"))
    try:
        with deadline(limit):
            return finetune(str(model_dir), rows, out / "model", settings, **options)
    finally:
        shutil.rmtree(out, ignore_errors=True)


SECTIONS = {"scorer": section_scorer, "generate": section_generate, "finetune": section_finetune}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="a tokenizer folder (tokenizer.json or .json.gz, "
                                                           "its config, a chat template)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    parser.add_argument("--small", action="store_true", help="the CPU smoke run: the small shape, sizes of seconds")
    parser.add_argument("--sections", default="scorer,generate,finetune")
    parser.add_argument("--budgets", help="scorer token budgets, comma-separated ('device': from free memory); "
                                          "default 16384,65536,device")
    parser.add_argument("--gen", help="generate sizes, requests x tokens; default 64x64,256x256")
    parser.add_argument("--section-s", type=int, default=300, help="seconds one measurement may take")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: the data sheet's; "
                                                          "on a CPU a measured fp32 matmul)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile a scorer run and a few fine-tuning steps (their costliest operations)")
    parser.add_argument("--reference-items", type=int,
                        help="items the one-item reference loop scores (0: none); default 200 (--small: 3)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="timed runs of each generate measurement, the first included (its warm-up at that "
                             "batch size: the allocator, the kernels' choices); the best is reported beside the first")
    parser.add_argument("--compile", action="store_true",
                        help="also score with compile=True and compile='loss' at the device budget (against the eager "
                             "scores)")
    parser.add_argument("--ft-variants", default="",
                        help="more fine-tuning runs, comma-separated: compile, padded, lora-compile, packed, "
                             "packed-compile, lora-packed, no-liger")
    parser.add_argument("--work", help="folder for the model (default: a temporary one)")
    parser.add_argument("--json", help="also write every RESULT record to this file")
    args = parser.parse_args()
    small = args.small
    if small:
        args.shape = "small"
    args.budgets = (args.budgets or ("512,device" if small else "16384,65536,device")).split(",")
    args.ft_variants = [v for v in args.ft_variants.split(",") if v]
    args.gen = (args.gen or ("4x8,8x8" if small else "64x64,256x256")).split(",")
    # sizes (words of synthetic text: instruction, response; prompt; training prompt, completion)
    args.score_items = 12 if small else 4000
    if args.reference_items is None:
        args.reference_items = 3 if small else 200
    args.item_words = ((5, 20), (10, 40)) if small else ((40, 160), (100, 400))
    args.prompt_words = (5, 20) if small else (30, 200)
    args.ft_rows, args.ft_steps, args.ft_batch, args.ft_max_length = (8, 2, 4, 96) if small else (1024, 30, 8, 1024)
    args.row_words = ((5, 15), (10, 30)) if small else ((40, 150), (150, 450))

    if args.peak_tflops:
        peak = args.peak_tflops * 1e12
    elif torch.cuda.is_available():
        peak = bf16_peak(torch.cuda.get_device_name()) or 989e12
    else:
        peak = measured_cpu_peak()
    emit({"section": "peak", "flops_per_s": peak, "from": "given" if args.peak_tflops else
          "data sheet" if torch.cuda.is_available() else "measured fp32 matmul"})
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu-probe-"))
    try:
        model_dir = build_model(tokenizer_folder(args.tokenizer, work), args.shape, work / "model")
        for name in args.sections.split(","):
            start = time.perf_counter()
            try:
                SECTIONS[name](model_dir, args, peak)
            except Exception:  # noqa: BLE001 (recorded; the next section runs)
                emit({"section": name, "error": traceback.format_exc()[-3000:]})
            emit({"section": name, "done_s": round(time.perf_counter() - start, 1)})
            reset_peak()
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(RECORDS, indent=1) + "\n", encoding="utf-8")
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
