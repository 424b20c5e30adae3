"""The embedded keyword-spotting corpus across synthesizer *families*: espeak-ng (`fmhub.data.speech_corpus`, many
voices, held out by voice) plus every other family installed here (`fmhub.data.voice_families`: Piper's neural
voice, MBROLA's diphone voices recorded from real speakers, SVOX Pico, GnuSpeech), and the opt-in families
(`voice_families.OPTIONAL_FAMILIES`: Kokoro's 28 neural voices) only when named (`--voice-families=+kokoro`).

A model that has heard only espeak-ng's formant voice learns that voice, not the words: the families are what teach
it the words. Each extra family speaks the ten commands `renditions(voices)` times per word (36, or 3 per voice for
a family of many voices; a slow family in `FAMILY_SIZES`, Kokoro: once per voice) and four times as many other words
as renditions, spread over its voices, at random tempo (0.75-1.35x),
pitch (+-3 semitones) and, for half the clips, a vocal-tract warp (resampling by 0.88-1.14, which moves formants and
pitch together like another speaker). Renditions go round the voices. A family of a few voices (Piper, Pico) sends
each round to the next of train, train, train, train, validation, test (4:1:1, every voice in every split); a family
of `VOICE_SPLIT_MIN` voices or more (MBROLA's 20, GnuSpeech's 16) is split by voice in the same 4:1:1 pattern, so
its validation and test speakers are never heard in training, as for espeak-ng. A family's clips are generated
once, with a progress bar, and cached under the corpus folder in a file named by a hash of everything that shapes
them.

Training also hears *hard negatives* (`hard_negatives_path`): 1 s windows cut around the words of a 10-minute stream of
noise and non-command words spoken by espeak-ng's training voices, each window holding at least 0.1 s of a word,
often only part of it, or the end of one word and the start of the next. A detector scanning a stream sees such
windows four times a second; clips of whole, centred words never show them. Measured once on every family: the same
0.969 test accuracy, and false accepts on the held-out stream at threshold 0.90 fell from 80 to 16 an hour.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fmhub.data import audio_augment as aug
from fmhub.data import speech_corpus as corpus
from fmhub.data import voice_families
from fmhub.errors import FmhubError

ESPEAK = "espeak-ng"
SILENCE, UNKNOWN = "_silence_", "_unknown_"
VERSION = "2"
FAMILY_RENDITIONS = 36  # per command word and family of a few voices: 24/6/6 train/validation/test
RENDITIONS_PER_VOICE = 3  # ... at least this many per voice for a family of many voices
UNKNOWN_PER_RENDITION = 4  # other words per command rendition, cycling through speech_corpus.UNKNOWN_WORDS
# a slow family's own (command renditions per voice, other-word clips per command rendition): Kokoro's 28 voices each
# say each command once, and 112 other words go round them (392 clips)
FAMILY_SIZES = {"kokoro": (1, 4)}
VOICE_SPLIT_MIN = 6  # a family of this many voices or more is split by voice, not by rendition
TEMPO_RANGE = (0.75, 1.35)
PITCH_SEMITONES = 3.0
WARP_RANGE = (0.88, 1.14)
ESPEAK_CLIPS_PER_VOICE = 2  # renditions of each word per espeak-ng voice: 320 training clips of each command
FAMILY_TRAIN_REPEAT = 3  # 24 renditions of a command per family, each in training 3 times: 72 against espeak-ng's 320
SPLIT_OF_RENDITION = ("train", "train", "train", "train", "validation", "test")
HARD_NEGATIVE_SECONDS = 600.0  # of non-command stream by espeak-ng's training voices: ~270 words
HARD_NEGATIVES_PER_WORD = 2  # windows cut around each word
HARD_NEGATIVE_MIN_S = 0.1  # of the word inside each window
HARD_NEGATIVE_SEED = 7


def all_families() -> tuple[str, ...]:
    """Every family `--voice-families` knows: the default ones, then the opt-in ones (`OPTIONAL_FAMILIES`)."""
    return (ESPEAK, *voice_families.FAMILIES, *voice_families.OPTIONAL_FAMILIES)


def installed_families() -> list[str]:
    """espeak-ng (always: a pip package) and every other default family that works on this machine (the default
    choice; opt-in families such as kokoro join only when named)."""
    return [ESPEAK] + [f for f in voice_families.FAMILIES if voice_families.available(f)]


def parse_families(value: str | None) -> list[str]:
    """`--voice-families`: None -> every installed default family; "a,b" -> those; "-a" -> every installed default
    family but a; "+k" -> every installed default family and the opt-in family k ("+kokoro,-piper" combines both)."""
    installed = installed_families()
    if value is None or not str(value).strip():
        return installed
    names = [x.strip() for x in str(value).split(",") if x.strip()]
    unknown = [n.lstrip("-+") for n in names if n.lstrip("-+") not in all_families()]
    if unknown:
        raise FmhubError(f"unknown voice famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                         f"known: {', '.join(all_families())}")
    if all(n[0] in "-+" for n in names):
        dropped = {n[1:] for n in names if n.startswith("-")}
        chosen = [f for f in installed if f not in dropped]
        chosen += [n[1:] for n in names if n.startswith("+") and n[1:] not in chosen + list(dropped)]
    else:
        chosen = [n.lstrip("+") for n in names if not n.startswith("-")]
    missing = [f for f in chosen if f not in installed and not (f in voice_families.OPTIONAL_FAMILIES
                                                                 and voice_families.available(f))]
    if missing:
        raise FmhubError("; ".join(f"voice family {f} is not installed: {voice_families.missing_hint(f)}"
                                   for f in missing))
    if not chosen:
        raise FmhubError(f"--voice-families {value!r} leaves no family to train on")
    return chosen


def renditions(n_voices: int, family: str | None = None) -> int:
    """Command renditions per word for `family` (or any family) of `n_voices` voices."""
    if family in FAMILY_SIZES:
        return FAMILY_SIZES[family][0] * n_voices
    return max(FAMILY_RENDITIONS, RENDITIONS_PER_VOICE * n_voices)


def unknown_per_rendition(family: str | None = None) -> int:
    """Other-word clips per command rendition for `family`."""
    return FAMILY_SIZES[family][1] if family in FAMILY_SIZES else UNKNOWN_PER_RENDITION


def voice_split(index: int, rendition: int, n_voices: int) -> str:
    """The split of `rendition` by the voice at `index`: by voice for many voices, else by round of the voices."""
    if n_voices >= VOICE_SPLIT_MIN:
        return SPLIT_OF_RENDITION[index % len(SPLIT_OF_RENDITION)]
    return SPLIT_OF_RENDITION[rendition // n_voices % len(SPLIT_OF_RENDITION)]


def _plan(family: str, seed: int) -> list[dict]:
    voices = voice_families.voices(family)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7, *family.encode()]))
    count = renditions(len(voices), family)
    others = unknown_per_rendition(family) * count
    plan = []
    for word in corpus.COMMANDS:
        for r in range(count):
            plan.append({"label": word, "text": word, "rendition": r})
    cycle = []
    while len(cycle) < others:
        cycle.extend(rng.permutation(len(corpus.UNKNOWN_WORDS)).tolist())
    for r in range(others):
        plan.append({"label": UNKNOWN, "text": corpus.UNKNOWN_WORDS[cycle[r]], "rendition": r})
    for spec in plan:  # each voice in turn
        r = spec["rendition"]
        spec["voice"] = voices[r % len(voices)]
        spec["split"] = voice_split(r % len(voices), r, len(voices))
        spec["tempo"] = float(rng.uniform(*TEMPO_RANGE))
        spec["pitch"] = float(rng.uniform(-PITCH_SEMITONES, PITCH_SEMITONES))
        spec["warp"] = float(rng.uniform(*WARP_RANGE)) if rng.random() < 0.5 else 1.0
        spec["peak_db"] = float(rng.uniform(*corpus.PEAK_DBFS_RANGE))
        spec["offset_seed"] = int(rng.integers(0, 2**63 - 1))
    return plan


def _render(family: str, spec: dict) -> np.ndarray:
    voices = voice_families.voices(family)
    start = voices.index(spec["voice"])
    # a diphone voice lacking a sound of the word: the next voice of the same split (its speakers stay held out)
    order = [v for v in voices[start:] + voices[:start]
             if voice_split(voices.index(v), spec["rendition"], len(voices)) == spec["split"]]
    for voice in order:
        try:
            wave = voice_families.synthesize(family, spec["text"], voice, tempo=spec["tempo"], pitch=spec["pitch"],
                                             variant=spec["rendition"])
            break
        except FmhubError as err:
            failure = err
    else:
        raise failure
    if spec["warp"] != 1.0:
        wave = aug.change_speed(wave, spec["warp"], corpus.SAMPLE_RATE)
    limit = int(corpus.MAX_WORD_S * corpus.SAMPLE_RATE)
    if len(wave) > limit:  # a slow rendition of a long word: compressed in time, never cut
        wave = aug.time_stretch(wave, len(wave) / limit * 1.02, corpus.SAMPLE_RATE)[:limit]
    return corpus.place_word(wave, spec["peak_db"], spec["offset_seed"])[0]


def family_path(family: str, cache_dir: Path, seed: int = 0, progress: bool = True, workers: int = 2) -> Path:
    """The cached .npz of one extra family's clips (generated on first use): `audio` int16 [N, 16000], `labels`,
    `texts`, `voices`, `splits`."""
    if not voice_families.available(family):
        raise FmhubError(f"voice family {family} is not installed: {voice_families.missing_hint(family)}")
    params = {"version": VERSION, "family": family, "seed": seed, "voices": voice_families.voices(family),
              "engine": voice_families.engine_version(family),
              "renditions": renditions(len(voice_families.voices(family)), family),
              "unknown": unknown_per_rendition(family),
              "voice_split_min": VOICE_SPLIT_MIN, "words": corpus.UNKNOWN_WORDS, "tempo": TEMPO_RANGE,
              "pitch": PITCH_SEMITONES, "warp": WARP_RANGE, "peak_db": corpus.PEAK_DBFS_RANGE}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"family_{family}_v{VERSION}_{key}.npz"
    if path.is_file():
        return path
    plan = _plan(family, seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan), desc=f"speech corpus: {family} voices", unit="clip", file=sys.stderr)

    def work(spec: dict) -> np.ndarray:
        clip = _render(family, spec)
        if bar is not None:
            bar.update(1)
        return clip

    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            clips = list(pool.map(work, plan))
    finally:
        if bar is not None:
            bar.close()
    arrays = {"audio": np.stack(clips), "labels": np.array([s["label"] for s in plan]),
              "texts": np.array([s["text"] for s in plan]), "voices": np.array([s["voice"] for s in plan]),
              "splits": np.array([s["split"] for s in plan]),
              "meta": np.array(json.dumps({**params, "key": key, "seconds": round(time.perf_counter() - t0, 1)}))}
    corpus.save_npz_atomically(path, arrays)
    return path


def espeak_corpus_path(cache_dir: Path, seed: int = 0) -> Path:
    """espeak-ng's part of the corpus (`speech_corpus.build_corpus`, generated on first use and cached)."""
    return corpus.build_corpus(cache_dir, seed=seed, clips_per_word_per_voice=ESPEAK_CLIPS_PER_VOICE)


def hard_negatives_path(cache_dir: Path, seed: int = 0) -> Path:
    """The cached .npz (`audio` int16 [N, 16000]) of windows cut around the words of a non-command stream spoken by
    espeak-ng's *training* voices (generated on first use, about a minute)."""
    voices = corpus.split_voices("train")
    params = {"version": VERSION, "corpus": corpus.VERSION, "seed": seed, "seconds": HARD_NEGATIVE_SECONDS,
              "per_word": HARD_NEGATIVES_PER_WORD, "min_s": HARD_NEGATIVE_MIN_S, "voices": voices,
              "words": corpus.UNKNOWN_WORDS}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"hard_negatives_v{VERSION}_{key}.npz"
    if path.is_file():
        return path
    print(f"speech corpus: hard negatives, {HARD_NEGATIVE_SECONDS / 60:.0f} min of non-command stream by "
          f"{len(voices)} training voices (once)", file=sys.stderr)
    t0 = time.perf_counter()
    rng = np.random.default_rng(HARD_NEGATIVE_SEED + seed)
    stream, events = corpus.make_long_stream(rng, HARD_NEGATIVE_SECONDS, voices=voices, return_events=True)
    size, margin = corpus.CLIP_SAMPLES, int(HARD_NEGATIVE_MIN_S * corpus.SAMPLE_RATE)
    windows = []
    for start, end, _ in events:
        lo, hi = max(0, start - size + margin), min(len(stream) - size, end - margin)
        for _ in range(HARD_NEGATIVES_PER_WORD):
            if hi > lo:
                at = int(rng.integers(lo, hi))
                windows.append(stream[at:at + size])
    audio = np.clip(np.round(np.stack(windows) * 32767.0), -32768, 32767).astype(np.int16)
    corpus.save_npz_atomically(path, {"audio": audio, "meta": np.array(json.dumps(
        {**params, "key": key, "seconds_taken": round(time.perf_counter() - t0, 1)}))})
    return path


def load_hard_negatives(cache_dir: Path, seed: int = 0) -> tuple[np.ndarray, list[str], list[str]]:
    """(int16 windows, `_unknown_` labels, voice names) of `hard_negatives_path`."""
    with np.load(hard_negatives_path(cache_dir, seed), allow_pickle=False) as z:
        audio = z["audio"]
    return audio, [UNKNOWN] * len(audio), [f"{ESPEAK}:stream"] * len(audio)


def load_family(family: str, cache_dir: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, list[str], list[str]]]:
    """{split: (int16 clips, labels, voice names "family:voice")} of one family, espeak-ng included."""
    if family == ESPEAK:
        out = {}
        with np.load(espeak_corpus_path(cache_dir, seed), allow_pickle=False) as z:
            for split in corpus.SPLITS:
                out[split] = (z[f"{split}_audio"], z[f"{split}_labels"].tolist(),
                              [f"{ESPEAK}:{v}" if v else "" for v in z[f"{split}_voices"].tolist()])
        return out
    with np.load(family_path(family, cache_dir, seed), allow_pickle=False) as z:
        splits, audio = z["splits"], z["audio"]
        labels, voices = z["labels"], z["voices"]
        return {s: (audio[splits == s], labels[splits == s].tolist(),
                    [f"{family}:{v}" for v in voices[splits == s]]) for s in corpus.SPLITS}


def load_embedded(families: list[str], cache_dir: Path, seed: int = 0, train_repeat: int | None = None
                  ) -> dict[str, tuple[np.ndarray, list[str], list[str]]]:
    """The corpus of the chosen families, merged split by split. `_silence_` clips come with espeak-ng's set (noise
    is no voice's); without espeak-ng they are generated the same way. Each extra family's training clips are
    repeated `train_repeat` times (default `FAMILY_TRAIN_REPEAT`) so that a family of a few
    voices is not drowned by espeak-ng's 160: augmentation makes each repeat a different clip. With espeak-ng,
    training also gets its hard negatives (`hard_negatives_path`), as `_unknown_`."""
    parts = {f: load_family(f, cache_dir, seed) for f in families}
    if ESPEAK not in parts:
        espeak = load_family(ESPEAK, cache_dir, seed)
        parts["_silence"] = {s: _only(espeak[s], SILENCE) for s in corpus.SPLITS}
    else:
        none = (np.zeros((0, corpus.CLIP_SAMPLES), np.int16), [], [])
        parts["_hard"] = {s: load_hard_negatives(cache_dir, seed) if s == "train" else none for s in corpus.SPLITS}
    out = {}
    for split in corpus.SPLITS:
        waves, labels, voices = [], [], []
        for family, part in parts.items():
            w, lab, v = part[split]
            repeat = 1
            if split == "train" and family not in (ESPEAK, "_silence", "_hard"):
                repeat = train_repeat or FAMILY_TRAIN_REPEAT
            waves.extend([w] * repeat)
            labels.extend(lab * repeat)
            voices.extend(v * repeat)
        out[split] = (np.concatenate(waves), labels, voices)
    return out


def _only(part, label):
    w, lab, v = part
    keep = [i for i, x in enumerate(lab) if x == label]
    return w[keep], [lab[i] for i in keep], [v[i] for i in keep]
