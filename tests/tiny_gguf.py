"""The tests' tiny Llama written as a GGUF file (float32 tensors) for the llamacpp backend, with its
tokenizer saved beside it as ``fetch_model`` (``format: gguf``) lays a folder out.

The tensors are named and laid out as llama.cpp reads a Llama: the query and key projections are
permuted from the rotate-half layout transformers uses to the interleaved one llama.cpp's rope expects.
The vocabulary is the tokenizer's own (byte-level BPE: tokens and merges as ``tokenizer.json`` holds
them), so token ids are the same under both backends.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """transformers' rotate-half rows of q / k to llama.cpp's interleaved pairs."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tensors(model_dir: Path, config: dict) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    state = load_file(model_dir / "model.safetensors")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    out = {"token_embd.weight": state["model.embed_tokens.weight"], "output_norm.weight": state["model.norm.weight"],
           "output.weight": state.get("lm_head.weight", state["model.embed_tokens.weight"])}
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for layer in range(config["num_hidden_layers"]):
        for hf_name, gguf_name in names.items():
            weight = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weight = _permute(weight, heads)
            elif gguf_name == "attn_k":
                weight = _permute(weight, kv_heads)
            out[f"blk.{layer}.{gguf_name}.weight"] = weight
    return {name: np.ascontiguousarray(t, dtype=np.float32) for name, t in out.items()}


# the matrices a quantized file stores quantized (as llama.cpp's quantizer leaves norms in float32)
QUANTIZED = ("token_embd", "output.weight", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
             "ffn_down")


def write_tiny_gguf(model_dir: str | Path, out_dir: str | Path, quant: str = "F32") -> Path:
    """``out_dir`` with ``model.gguf`` (the tiny model at ``model_dir``) and its tokenizer files. ``quant``:
    ``F32``, or a type of ``gguf.quants`` (``Q8_0``, ``Q4_0``: blocks of 32 along a row, which the tiny model's
    64- and 192-wide rows allow; the K-quants' 256 do not) for every matrix (norms stay float32)."""
    import gguf
    from gguf import quants

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    vocab = tokenizer["model"]["vocab"]
    tokens = [None] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    specials = {t["id"] for t in tokenizer["added_tokens"] if t["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]

    writer = gguf.GGUFWriter(str(out_dir / "model.gguf"), "llama")
    writer.add_name("evolforge tests' tiny llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_dimension_count(config["hidden_size"] // config["num_attention_heads"])
    writer.add_rope_freq_base(float(config.get("rope_theta") or config.get("rope_parameters", {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    qtype = None if quant == "F32" else gguf.GGMLQuantizationType[quant]
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if qtype is None else gguf.LlamaFileType[f"MOSTLY_{quant}"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i in specials else gguf.TokenType.NORMAL for i in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config["pad_token_id"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer_config["chat_template"] if "chat_template" in tokenizer_config
                             else (model_dir / "chat_template.jinja").read_text(encoding="utf-8"))
    for name, tensor in _tensors(model_dir, config).items():
        if qtype is not None and any(part in name for part in QUANTIZED):
            writer.add_tensor(name, quants.quantize(tensor, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (model_dir / name).exists():
            shutil.copy(model_dir / name, out_dir / name)
    return out_dir
