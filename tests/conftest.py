"""Shared fixtures: an isolated FMHUB_HOME, no network, and real tiny models built locally from small configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TQDM_DISABLE"] = "1"  # keep test logs readable
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def one_thread():
    """Bit-identical results across processes need the same kernels: one torch thread for the module's tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("fmhub_home")
    os.environ["FMHUB_HOME"] = str(home)
    yield home


@pytest.fixture(scope="session")
def tiny_text_backbone(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide BERT with the MiniLM tokenizer: random weights, real architecture, seconds to train."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from fmhub.models.auto import resolve_model_path

    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)  # the same random weights in every session: a failure seen once is seen again
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_intent_model(tiny_text_backbone, tmp_path_factory) -> Path:
    """The tiny backbone fine-tuned on the embedded intent data through the real CLI and loop."""
    from fmhub.cli import main

    out = tmp_path_factory.mktemp("cs_model")
    code = main(
        [
            "train",
            "--scenario",
            "customer-service",
            "--model",
            str(tiny_text_backbone),
            "--output-dir",
            str(out),
            "--epochs",
            "15",
            "--learning-rate",
            "2e-3",
            "--head-learning-rate",
            "2e-3",
            "--batch-size",
            "32",
            "--report-to",
            "none",
            "--early-stopping-patience",
            "0",
            "--no-freeze-embeddings",  # random-init token embeddings must learn (freezing suits pretrained ones)
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="session")
def tiny_image_model(tmp_path_factory) -> Path:
    """timm's `test_efficientnet` (random init, 64 px) fine-tuned on a small slice of the embedded medical images."""
    from fmhub.cli import main

    out = tmp_path_factory.mktemp("mi_model")
    code = main(
        [
            "train", "--scenario", "medical-image", "--model", "test_efficientnet", "--no-pretrained",
            "--image-size", "64", "--max-samples-per-class", "24", "--epochs", "2", "--batch-size", "16",
            "--output-dir", str(out), "--report-to", "none",
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="session")
def tiny_audio_backbone(tmp_path_factory) -> Path:
    """A 1-layer, 32-wide Whisper-style encoder with the 64-mel, 1 s, 20 ms-frame feature extractor (the default's
    architecture): random weights, real architecture."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    folder = tmp_path_factory.mktemp("tiny_whisper")
    config = WhisperConfig(num_mel_bins=64, d_model=32, encoder_layers=1, encoder_attention_heads=2,
                           encoder_ffn_dim=64, max_source_positions=25, classifier_proj_size=32)
    WhisperForAudioClassification(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=64, chunk_length=1, hop_length=320).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_audio_model(tiny_audio_backbone, tmp_path_factory) -> Path:
    """The tiny audio model trained on 64 clips per class of the embedded speech corpus through the real CLI."""
    from fmhub.cli import main
    from fmhub.scenarios.voice_command import VoiceCommand

    out = tmp_path_factory.mktemp("vc_model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(VoiceCommand, "fa_stream_seconds", 60.0)  # a 1-minute false-accept stream (default: 15 minutes)
        code = main(["train", "--scenario", "voice-command", "--model", str(tiny_audio_backbone), "--no-pretrained",
                     "--max-samples-per-class", "64", "--epochs", "8", "--learning-rate", "3e-3",
                     "--output-dir", str(out), "--report-to", "none"])
    assert code == 0
    return out
