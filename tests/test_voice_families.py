"""Each installed voice family says "yes" as a short, loud-enough 16 kHz clip, identically every time, and faster
when asked; families not installed here are skipped with what to install."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fmhub.data import voice_families as vf
from fmhub.errors import FmhubError

TEMPO_KNOB = {"piper", "mbrola", "pico", "gnuspeech"}  # each maps tempo to the engine's own control


def _need(family: str) -> str:
    if not vf.available(family):
        pytest.skip(vf.missing_hint(family))
    return vf.voices(family)[0]


@pytest.mark.parametrize("family", vf.FAMILIES)
def test_yes_is_a_short_clip(family):
    voice = _need(family)
    wave = vf.synthesize(family, "yes", voice)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert vf.SAMPLE_RATE == 16000
    assert 0.15 <= len(wave) / 16000 <= 1.2
    assert 0.05 < np.abs(wave).max() <= 1.0


@pytest.mark.parametrize("family", vf.FAMILIES)
def test_same_arguments_same_samples(family):
    voice = _need(family)
    kwargs = dict(tempo=1.1, pitch=2.0, variant=3)
    first = vf.synthesize(family, "yes", voice, **kwargs)
    vf.synthesize(family, "no", voice)  # other calls in between must not change the next result
    with ThreadPoolExecutor(2) as pool:
        again = list(pool.map(lambda _: vf.synthesize(family, "yes", voice, **kwargs), range(2)))
    for wave in again:
        np.testing.assert_array_equal(wave, first)


@pytest.mark.parametrize("family", sorted(TEMPO_KNOB))
def test_faster_tempo_gives_a_shorter_clip(family):
    voice = _need(family)
    assert len(vf.synthesize(family, "yes", voice, tempo=1.3)) < len(vf.synthesize(family, "yes", voice, tempo=0.8))


def test_unknown_family_and_voice_are_clear_errors():
    with pytest.raises(FmhubError, match="unknown voice family"):
        vf.available("robotalk")
    family = next((f for f in vf.FAMILIES if vf.available(f)), None)
    if family is None:
        pytest.skip("no voice family installed")
    with pytest.raises(FmhubError, match="unknown"):
        vf.synthesize(family, "yes", "nobody")


def test_gnuspeech_speakers_differ_and_the_worker_reports_bad_requests(monkeypatch):
    _need("gnuspeech")
    speakers = vf.voices("gnuspeech")
    assert len(speakers) == 16 and len(set(speakers)) == 16
    lengths = [vf._gnuspeech_speakers()[v]["vocal_tract_length"] for v in speakers]
    assert 13.0 <= min(lengths) and max(lengths) <= 19.0 and max(lengths) - min(lengths) > 3.0
    short, long = (speakers[lengths.index(f(lengths))] for f in (min, max))

    def bands_db(wave):  # the share of energy in 32 bands of 250 Hz, in dB
        power = np.abs(np.fft.rfft(wave, 16000)) ** 2
        energy = power[:8000].reshape(32, 250).sum(axis=1)
        return 10 * np.log10(energy / energy.sum() + 1e-12)

    # the shortest and the longest vocal tract say "left" with clearly different spectra (mean gap over 3 dB a band)
    a, b = (vf.synthesize("gnuspeech", "left", v) for v in (short, long))
    assert np.abs(bands_db(a) - bands_db(b)).mean() > 3.0
    monkeypatch.setitem(vf._gnuspeech_speakers(), short, {"no_such_setting": 1.0})
    with pytest.raises(FmhubError, match="unknown setting no_such_setting"):
        vf.synthesize("gnuspeech", "left", short)


# -- kokoro: opt-in (OPTIONAL_FAMILIES), so not in the parametrized tests above -------------------------------------
COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")


def test_kokoro_is_opt_in_and_known():
    assert "kokoro" in vf.OPTIONAL_FAMILIES and "kokoro" not in vf.FAMILIES
    assert "kokoro" in vf.missing_hint("kokoro") and "install-voices" in vf.missing_hint("kokoro")


def test_kokoro_phonemes_are_kokoros_own_alphabet():
    if not vf.available("kokoro"):
        pytest.skip(vf.missing_hint("kokoro"))
    vocab = vf._engine(vf._Kokoro).vocab
    for accent in ("en-us", "en-gb"):
        for word in (*COMMANDS, "zero", "four", "fire", "church", "judge", "button", "bird", "happy"):
            phonemes = vf.kokoro_phonemes(word, accent)
            assert phonemes and set(phonemes) <= set(vocab), (word, accent, phonemes)
    # diphthongs become Kokoro's single letters, American and British "go" differ, r-coloured vowels spell out ɹ
    assert [vf.kokoro_phonemes(w, "en-us") for w in ("yes", "no", "right", "down", "bird")] == \
        ["jˈɛs", "nˈO", "ɹˈIt", "dˈWn", "bˈɜɹd"]
    assert [vf.kokoro_phonemes(w, "en-gb") for w in ("no", "stop", "bird")] == ["nˈQ", "stˈɒp", "bˈɜːd"]


def test_kokoro_says_a_word_identically_and_faster_when_asked():
    voice = _need("kokoro")
    wave = vf.synthesize("kokoro", "yes", voice)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert 0.15 <= len(wave) / 16000 <= 1.2 and 0.05 < np.abs(wave).max() <= 1.0
    first = vf.synthesize("kokoro", "yes", voice, tempo=1.1, pitch=2.0, variant=3)
    vf.synthesize("kokoro", "no", voice)
    with ThreadPoolExecutor(2) as pool:
        again = list(pool.map(lambda _: vf.synthesize("kokoro", "yes", voice, tempo=1.1, pitch=2.0, variant=3),
                              range(2)))
    for wave in again:
        np.testing.assert_array_equal(wave, first)
    faster, slower = (vf.synthesize("kokoro", "yes", voice, tempo=t) for t in (1.3, 0.8))
    assert len(faster) < len(slower)


def test_every_kokoro_voice_speaks():
    _need("kokoro")
    voices = vf.voices("kokoro")
    assert len(voices) == 28 and {v[:3] for v in voices} == {"af_", "am_", "bf_", "bm_"}
    for k, voice in enumerate(voices):  # one command each, round the ten
        wave = vf.synthesize("kokoro", COMMANDS[k % len(COMMANDS)], voice)
        assert 0.15 <= len(wave) / 16000 <= 1.2 and 0.05 < np.abs(wave).max() <= 1.0, voice
    with pytest.raises(FmhubError, match="unknown kokoro voice"):
        vf.synthesize("kokoro", "yes", "jf_alpha")  # Japanese voices are not offered
