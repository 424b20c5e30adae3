"""Voice-command data: the embedded espeak-ng corpus, audiofolders and Hub audio sets as 1 s int16 clips, and the
datasets that feed them to the loop (augmented on the fly for training, features computed once for evaluation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fmhub import audio
from fmhub.data import speech_corpus as corpus
from fmhub.data import voice_corpus
from fmhub.data.splits import load_hub_dataset
from fmhub.errors import FmhubError
from fmhub.hubids import looks_like_repo_id

SILENCE, UNKNOWN = "_silence_", "_unknown_"
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64"}
SILENCE_ALIASES = {"_silence_", "silence", "_background_noise_", "background_noise", "noise"}
CLIP = corpus.CLIP_SAMPLES
# Each training clip is augmented with this probability, at this strength of audio_augment.augment (speed/pitch,
# shift, reverb, band-limiting, noise, gain); half the clips stay clean, which the from-scratch model needs to
# learn the words within the time budget (always augmenting: 0.84 held-out accuracy in the same number of steps).
AUGMENT_PROBABILITY = 0.5
AUGMENT_STRENGTH = 0.5
# Speed perturbation (Kaldi's classic: resampling moves pitch and formants together, like another vocal tract) on
# another independent half of the clips: held-out voices are what the model must generalise to.
SPEED_PROBABILITY = 0.5
SPEED_RANGE = (0.85, 1.15)
# Noise at a low SNR on another independent share of the clips: a phone in a room, a fan, people talking.
NOISE_PROBABILITY = 0.25
NOISE_SNR_DB = (5.0, 20.0)
# On the log-mel features of most clips (cheap: applied to the batch after the extractor): a warp of the mel axis
# (the formants of a shorter or longer vocal tract, another synthesizer's voice), a spectral tilt and a bump (another
# microphone, a cheaper loudspeaker), and SpecAugment's masks (two bands of mel bins, two stretches of frames).
FEATURE_AUGMENT_PROBABILITY = 0.5
MEL_WARP_RANGE = (0.88, 1.12)
TILT_DB, BUMP_DB = 8.0, 6.0
FREQ_MASKS, FREQ_MASK_BINS, TIME_MASKS, TIME_MASK_SHARE = 2, 8, 2, 0.1


def corpus_dir() -> Path:
    from fmhub.paths import data_cache_dir

    return data_cache_dir("speech_commands")


def embedded_corpus_path() -> Path:
    """The espeak-ng part of the embedded corpus (held-out test voices for examples and tests), cached."""
    return voice_corpus.espeak_corpus_path(corpus_dir())


def label_set(data_labels: list[str]) -> list[str]:
    """Speech Commands' 12-class scheme when the data holds the ten commands; else the data's own labels."""
    if set(corpus.COMMANDS) <= set(data_labels):
        return list(corpus.LABELS)
    return list(data_labels)


def map_label(label: str, names: list[str]) -> int:
    if label in names:
        return names.index(label)
    if label.lower() in SILENCE_ALIASES and SILENCE in names:
        return names.index(SILENCE)
    if UNKNOWN in names and label.lower() not in SILENCE_ALIASES:
        return names.index(UNKNOWN)
    raise FmhubError(f"label {label!r} is not one the model knows ({', '.join(names[:12])})")


def dataset_dict(splits: dict, names: list[str]):
    """A DatasetDict with `audio` (1 s of int16 samples) and a ClassLabel `label`, built straight from arrow."""
    import datasets
    import pyarrow as pa

    features = datasets.Features({"audio": datasets.Sequence(datasets.Value("int16"), length=CLIP),
                                  "label": datasets.ClassLabel(names=list(names))})
    out = {}
    for split, (waves, labels) in splits.items():
        ids = [x if isinstance(x, (int, np.integer)) else names.index(x) for x in labels]
        flat = pa.array(np.ascontiguousarray(waves, dtype=np.int16).reshape(-1))
        table = pa.table({"audio": pa.FixedSizeListArray.from_arrays(flat, CLIP), "label": pa.array(ids, pa.int64())})
        out[split] = datasets.Dataset(table, info=datasets.DatasetInfo(features=features))
    return datasets.DatasetDict(out)


def waves_of(split) -> np.ndarray:
    if len(split) == 0:
        return np.zeros((0, CLIP), np.int16)
    return np.asarray(split.with_format("numpy")["audio"][:], dtype=np.int16).reshape(len(split), CLIP)


def load_audio_dataset(data: str) -> dict[str, tuple[np.ndarray, list[str]]]:
    """{split: (1 s int16 clips, string labels)} from a local audiofolder (label subfolders, optionally under
    train/validation/test) or a Hub dataset id with an optional `:config` suffix (`audio` and `label` columns)."""
    path = Path(data).expanduser()
    if path.is_dir():
        return _read_audiofolder(path)
    if path.exists():
        raise FmhubError(f"--data {data}: give a folder of label subfolders with audio files, or a Hub id")
    if not looks_like_repo_id(data.split(":")[0]):
        raise FmhubError(f"data not found: {data!r} is neither a folder nor a Hub dataset id user/name")
    repo, _, name = data.partition(":")  # google/speech_commands:v0.02
    raw = load_hub_dataset(repo, "audio data", name or None)
    for split in raw.values():
        if "audio" not in split.column_names or "label" not in split.column_names:
            raise FmhubError(f"{data}: expected `audio` and `label` columns, found {', '.join(split.column_names)}")
    names = {"train": "train", "validation": "validation" if "validation" in raw else "valid", "test": "test"}
    return {s: _decode_split(raw[n]) for s, n in names.items() if n in raw}


def _read_audiofolder(folder: Path) -> dict[str, tuple[np.ndarray, list[str]]]:
    """The audiofolder layout read directly (datasets' own loader needs torchcodec just to list the files)."""
    splits = {s: folder / s for s in ("train", "validation", "test") if (folder / s).is_dir()}
    if not splits:
        splits = {"train": folder}
    out = {}
    for split, root in splits.items():
        items = [(p.parent.name, p) for p in sorted(root.glob("*/*"))
                 if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES]
        if not items:
            raise FmhubError(f"{root} has no audio files in label subfolders ({root}/<label>/*.wav)")
        out[split] = _decode_items(items)
    return out


def _decode_split(split) -> tuple[np.ndarray, list[str]]:
    """A `datasets` split with `audio` and `label`, decoded with soundfile (no torchcodec needed)."""
    import datasets

    feature = split.features["label"]
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    split = split.cast_column("audio", datasets.Audio(decode=False))
    return _decode_items([(names[row["label"]] if names else str(row["label"]), row["audio"]) for row in split])


def _decode_items(items) -> tuple[np.ndarray, list[str]]:
    """1 s int16 clips and their labels: a long `_silence_`/background-noise file becomes several 1 s clips, a long
    word clip keeps its loudest second."""
    waves, labels = [], []
    for label, source in items:
        try:
            wave = audio.load_audio(source, max_seconds=600.0)
        except FmhubError as err:
            raise FmhubError(f"{getattr(source, 'name', None) or label}: {err}") from None
        if label.lower() in SILENCE_ALIASES and len(wave) >= 2 * CLIP:
            chunks = [wave[i:i + CLIP] for i in range(0, len(wave) - CLIP + 1, CLIP)][:100]
        else:
            chunks = [audio.fit_clip(wave, CLIP)]
        for chunk in chunks:
            waves.append(np.clip(np.round(chunk * 32767.0), -32768, 32767).astype(np.int16))
            labels.append(label)
    return (np.stack(waves) if waves else np.zeros((0, CLIP), np.int16)), labels


def augment_banks(split) -> dict:
    """Noise (`_silence_` clips) and speech (`_unknown_` clips) from the training split, for augmentation."""
    names = split.features["label"].names
    labels = np.asarray(split["label"])
    waves = waves_of(split)
    banks = {}
    for key, label in (("noise_bank", SILENCE), ("speech_bank", UNKNOWN)):
        if label in names:
            idx = np.flatnonzero(labels == names.index(label))[:200]
            banks[key] = [waves[i].astype(np.float32) / 32768.0 for i in idx] or None
    return banks


class ClipDataset(torch.utils.data.Dataset):
    """Training clips, augmented on the fly. The engine's EpochSeededDataset seeds numpy's global generator per
    (seed, epoch, item), so each clip's augmentation is reproducible and differs from epoch to epoch."""

    def __init__(self, waves: np.ndarray, labels: list[int], augment: bool, banks: dict | None = None):
        self.waves, self.labels, self.augment, self.banks = waves, labels, augment, banks or {}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        wave = self.waves[index].astype(np.float32) / 32768.0
        rng = np.random.default_rng(np.random.randint(0, 2**31 - 1, size=4))
        if not self.augment:
            return {"audio": wave, "labels": int(self.labels[index])}
        from fmhub.data import audio_augment

        if rng.random() < SPEED_PROBABILITY:
            wave = audio.fit_clip(audio_augment.change_speed(wave, rng.uniform(*SPEED_RANGE), audio.SAMPLE_RATE), CLIP)
        if rng.random() < AUGMENT_PROBABILITY:
            wave = audio_augment.augment(wave, rng, audio.SAMPLE_RATE, strength=AUGMENT_STRENGTH, **self.banks)
        if rng.random() < NOISE_PROBABILITY:
            noise = audio_augment.random_noise(CLIP, rng, audio.SAMPLE_RATE, **self.banks)
            wave = np.clip(audio_augment.add_noise(wave, noise, rng.uniform(*NOISE_SNR_DB), audio.SAMPLE_RATE), -1, 1)
        item = {"audio": wave, "labels": int(self.labels[index])}
        if rng.random() < FEATURE_AUGMENT_PROBABILITY:
            item["feature_augment"] = feature_augment_params(rng)
        return item


def feature_augment_params(rng: np.random.Generator) -> np.ndarray:
    """One clip's draw for `augment_features`: warp, tilt, bump (centre, width, gain), then (start, width) of each
    frequency and time mask as shares of the axis."""
    masks = []
    for _ in range(FREQ_MASKS):
        masks += [rng.random(), rng.uniform(0, FREQ_MASK_BINS / 64)]
    for _ in range(TIME_MASKS):
        masks += [rng.random(), rng.uniform(0, TIME_MASK_SHARE)]
    return np.array([rng.uniform(*MEL_WARP_RANGE), rng.uniform(-TILT_DB, TILT_DB), rng.random(),
                     rng.uniform(0.05, 0.3), rng.uniform(-BUMP_DB, BUMP_DB), *masks], dtype=np.float32)


DB_PER_FEATURE_UNIT = 40.0  # Whisper's and AST's scaled log-mels both move by about a unit for 40 dB


def augment_features(features: torch.Tensor, params: np.ndarray) -> torch.Tensor:
    """Apply `feature_augment_params` draws to log-mel features [mels, frames]."""
    mels, frames = features.shape
    warp, tilt, centre, width, gain = (float(x) for x in params[:5])
    axis = torch.linspace(0, 1, mels)
    source = torch.clamp(torch.arange(mels, dtype=torch.float32) * warp, 0, mels - 1)
    low = source.floor().long()
    high = torch.clamp(low + 1, max=mels - 1)
    frac = (source - low).unsqueeze(1)
    out = features[low] * (1 - frac) + features[high] * frac
    curve = tilt * (axis - 0.5) + gain * torch.exp(-0.5 * ((axis - centre) / width) ** 2)
    out = out + (curve / DB_PER_FEATURE_UNIT).unsqueeze(1)
    fill = out.mean()
    rest = params[5:]
    for k in range(FREQ_MASKS):
        start, share = float(rest[2 * k]), float(rest[2 * k + 1])
        a = int(start * mels)
        out[a:a + int(share * mels)] = fill
    for k in range(FREQ_MASKS, FREQ_MASKS + TIME_MASKS):
        start, share = float(rest[2 * k]), float(rest[2 * k + 1])
        a = int(start * frames)
        out[:, a:a + int(share * frames)] = fill
    return out


class FeatureDataset(torch.utils.data.Dataset):
    """Evaluation clips with their model inputs computed once (every epoch's validation reuses them)."""

    def __init__(self, waves: np.ndarray, labels: list[int], extractor, batch_size: int = 256):
        self.labels = labels
        parts = [audio.features(extractor, waves[i:i + batch_size].astype(np.float32) / 32768.0)
                 for i in range(0, len(waves), batch_size)]
        self.inputs = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {**{k: v[index] for k, v in self.inputs.items()}, "labels": int(self.labels[index])}


class ClipCollator:
    """Stacks precomputed inputs, or computes features for a batch of (augmented) waveforms in one go."""

    def __init__(self, extractor):
        self.extractor = extractor

    def __call__(self, items: list[dict]) -> dict:
        labels = torch.tensor([item["labels"] for item in items], dtype=torch.long)
        if "audio" in items[0]:
            inputs = audio.features(self.extractor, [item["audio"] for item in items])
            key = "input_features" if "input_features" in inputs else "input_values"
            if any("feature_augment" in item for item in items) and inputs[key].dim() == 3:
                batch = inputs[key].clone()
                for i, item in enumerate(items):
                    if "feature_augment" in item:
                        view = batch[i] if key == "input_features" else batch[i].T  # AST: [frames, mels]
                        view.copy_(augment_features(view, item["feature_augment"]))
                inputs[key] = batch
        else:
            inputs = {k: torch.stack([item[k] for item in items]) for k in items[0] if k != "labels"}
        return {**inputs, "labels": labels}
