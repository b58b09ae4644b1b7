"""datatrove's MinHash dedup on the items ``bench/growth.py --peers`` wrote: the peer dedup is measured against.

    .evolforge/peers-venv/bin/python bench/peer_datatrove.py --items DIR --out DIR [--n-grams 3] [--buckets 32] [--rows 4]

Reads ``DIR/items.parquet`` (columns ``id`` and ``text``: the text evolforge's dedup compares, written by
growth.py with ``evolforge.core.text.item_text``, so this script needs no evolforge) and runs datatrove's four
MinHash steps (signatures, buckets, clusters, filter) with ``LocalPipelineExecutor``, one worker: one process,
as evolforge's stage. The kept documents go to ``--out/kept/*.parquet``; signatures, bucket matches and the
ids to remove to scratch folders beside them, logs to ``--out/logs``.

It runs in its own virtual environment, never the project's: :func:`peer_python` creates
``.evolforge/peers-venv`` (the git-ignored cache folder) once with :data:`REQUIREMENTS` (datatrove is
Apache-2.0) and reuses it while the pins are the same. The script imports datatrove only in :func:`run`, so ``--help`` works anywhere.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

# datatrove with its "processing" extra (what its dedup module imports: tokenizers, xxhash, regex), the Parquet
# reader and writer's pyarrow, and the English word tokenizer the MinHash steps load (spaCy's blank "en": no
# model download)
REQUIREMENTS = ["datatrove[processing]==0.10.1", "spacy==3.8.18", "pyarrow==26.0.1"]
VENV = Path(__file__).resolve().parents[1] / ".evolforge" / "peers-venv"


def peer_python(venv: Path = VENV) -> Path:
    """The Python of ``venv`` with :data:`REQUIREMENTS` installed, creating it (from PyPI) when it is missing
    or was made with other pins. Uses uv when it sits beside this interpreter or on PATH, else venv + pip."""
    python, stamp = venv / "bin" / "python", venv / "peer-requirements.txt"
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    uv = Path(sys.executable).with_name("uv")
    uv = str(uv) if uv.exists() else shutil.which("uv")
    print(f"creating {venv} with {' '.join(REQUIREMENTS)}", flush=True)
    if uv:
        subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
        subprocess.run([uv, "pip", "install", "--quiet", "--python", str(python), *REQUIREMENTS], check=True)
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS], check=True)
    stamp.write_text(wanted)
    return python


def split_tokenizer():
    """A datatrove word tokenizer that splits on whitespace: the words evolforge's shingles are made of."""
    from datatrove.utils.word_tokenizers import WordTokenizer

    class Split(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    return Split()


def run(items: Path, out: Path, n_grams: int, buckets: int, rows: int, seed: int, word_tokenizer: str) -> None:
    """The four MinHash steps on ``items/items.parquet``, one task at a time in this process."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.text import TextNormConfig
    from datatrove.utils.typeshelper import Languages

    # the text is already evolforge's normalised text (casefolded, whitespace collapsed): datatrove's own
    # normalisation is kept to what evolforge does; its default number folding would turn every synthetic
    # word ("w123") into the same "w0"
    norm = TextNormConfig(lowercase=True, norm_whitespace=True, remove_punctuation=False,
                          norm_unicode_diacritics=False, norm_numbers=False)
    config = MinhashConfig(n_grams=n_grams, num_buckets=buckets, hashes_per_bucket=rows, seed=seed, norm_config=norm)

    def reader() -> ParquetReader:
        return ParquetReader(str(items), glob_pattern="items.parquet", text_key="text", id_key="id")

    def executor(pipeline: list, name: str, tasks: int = 1) -> LocalPipelineExecutor:
        return LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=str(out / "logs" / name))

    language = Languages.english if word_tokenizer == "spacy" else split_tokenizer()
    executor([reader(), MinhashDedupSignature(output_folder=str(out / "signatures"), config=config, language=language)],
             "signatures").run()
    executor([MinhashDedupBuckets(input_folder=str(out / "signatures"), output_folder=str(out / "buckets"), config=config)],
             "buckets", tasks=buckets).run()
    executor([MinhashDedupCluster(input_folder=str(out / "buckets"), output_folder=str(out / "remove_ids"), config=config)],
             "clusters").run()
    executor([reader(), MinhashDedupFilter(input_folder=str(out / "remove_ids")), ParquetWriter(str(out / "kept"))],
             "filter").run()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=Path, required=True, help="folder with items.parquet (id, text)")
    ap.add_argument("--out", type=Path, required=True, help="kept documents in OUT/kept, scratch beside them")
    ap.add_argument("--n-grams", type=int, default=3, help="words per shingle (dedup.shingle_size)")
    ap.add_argument("--buckets", type=int, default=32, help="LSH bands (evolforge's lsh_bands(0.7, 128): 32 x 4)")
    ap.add_argument("--rows", type=int, default=4, help="hashes per band")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--word-tokenizer", choices=["split", "spacy"], default="split",
                    help="split: on whitespace, as evolforge; spacy: datatrove's default for English (about 4x the CPU)")
    args = ap.parse_args()
    run(args.items, args.out, args.n_grams, args.buckets, args.rows, args.seed, args.word_tokenizer)


if __name__ == "__main__":
    main()
