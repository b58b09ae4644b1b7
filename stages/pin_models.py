"""models stage: pin every role's model to an identity, without loading any model.

Reads:  params.yaml `roles`; each role's local model folder, the local Hugging Face cache or the hub
        (hub ids), or the server's `GET /models` (openai roles)
Writes: models/identity.json -- {role: {backend, model, revision, identity, engine}}, where identity is a
        sha256 of a local folder's weights, config and tokenizer files, the commit sha of a hub revision, or
        the model id a server serves (never its URL), and engine the options the role's cache keys carry,
        with an hf role's `device: auto` / `dtype: auto` resolved on this machine (cpu/float32, or
        cuda/bfloat16 where torch sees a GPU)

Every LLM, scoring, training and evaluation stage depends on its own roles' entries of this file (DVC
`params:` on models/identity.json), never on a model folder. The stage always runs (`always_changed`): it is
the one place that notices weights replaced in place, a hub branch that moved, or a server that now serves
another model, wherever the model lives. Re-pinning an unchanged folder costs a `stat` per file (the digest
is remembered in .evolforge/model_hashes.json); when nothing changed the file is rewritten byte for byte and
nothing downstream runs.
"""

import argparse
import json

from evolforge.core.params import load_params, load_role, section
from evolforge.core.records import write_json
from evolforge.llm import identity_entry, resolve_identity, resolved_engine
from evolforge.core.errors import run_stage

MEMO = ".evolforge/model_hashes.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    params = load_params(args.params)
    entries = {}
    for name in sorted(section(params, "roles")):
        role = load_role(params, name)
        entries[name] = identity_entry(role, resolve_identity(role, memo=MEMO), engine=resolved_engine(role))
    write_json(args.out, entries)
    for name, entry in entries.items():
        print(f"models: {name:<9} {entry['backend']:<6} {entry['model']} -> {json.dumps(entry['identity'])[:80]}")


if __name__ == "__main__":
    run_stage(main)
