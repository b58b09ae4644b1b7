"""models stage: pin every role's model to an identity, without loading any model.

Reads:  params.yaml, checked whole (the stages after it type only their own sections), for its `roles`;
        each role's local model folder, the local Hugging Face cache or the hub (hub ids), or `GET /models`
Writes: models/identity.json -- {role: {backend, model, revision, identity, engine}}: identity is a sha256 of a
        local folder's weights, config and tokenizer files, a hub revision's commit sha, or the model id a server
        serves (never its URL), with the server's kind; engine: the options its cache keys carry (hf `auto` resolved;
        llamacpp `extra_bufts: false` where its kernels crashed the model here: the probe's child, not this process)
Every model stage depends on its roles' entries, never on a model folder. Always run: new weights, a moved hub
branch, another served model (and a setting the server cannot honour) are noticed here (digests: .evolforge).
"""

import json
from evolforge.core.stage import arguments, run_stage
from evolforge.config.roles import load_role
from evolforge.io.records import write_json
from evolforge.schema import asked_of_roles, load_params
from evolforge.config.servers import refuse_unservable
from evolforge.core.models import MODEL_HASHES
from evolforge.llm.identity import identity_entry
from evolforge.llm.pinning import resolve_identity
from evolforge.llm.keys import resolved_engine


def main() -> None:
    args = arguments(__doc__, writes=["--out"])
    params = load_params(args.params)
    entries = {}
    for name in sorted(params.get("roles") or {}):
        role = load_role(params, name)
        entries[name] = identity_entry(role, resolve_identity(role, memo=MODEL_HASHES), engine=resolved_engine(role))
    refuse_unservable(params, entries, asked_of_roles(params))  # what a server cannot honour, before any request
    write_json(args.out, entries)
    for name, entry in entries.items():
        print(f"models: {name:<9} {entry['backend']:<6} {entry['model']} -> {json.dumps(entry['identity'])[:80]}")


if __name__ == "__main__":
    run_stage(main)
