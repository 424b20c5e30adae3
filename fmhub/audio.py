"""Audio in: decode any WAV/FLAC/OGG/MP3 (libsndfile through soundfile), down-mix, resample to 16 kHz with soxr,
cap the duration and the decoded size, cut long clips into overlapping 1 s windows, and compute log-mel features fast.

Everything a user can send goes through `load_audio`, which turns bad input into one clear `FmhubError`:
an empty file, a header followed by garbage, an unsupported format, a clip longer than the cap, a file whose
rate x channels x duration is over the decoding budget (checked from the header, before any sample is decoded).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from fmhub.errors import FmhubError

SAMPLE_RATE = 16000
MAX_SECONDS = 60.0  # longer input is refused before it is decoded (the server's time budget per request)
MIN_RATE, MAX_RATE = 1000, 384000
FORMATS = "WAV, FLAC, OGG/Vorbis or MP3"
# Decoded-data budget per file: rate x channels x seconds, checked from the header before decoding. Seconds alone
# were no bound: a 200 KB FLAC saying 60 s x 8 channels x 384 kHz is 184 M samples (737 MB as float32). 64 M
# samples (256 MB as float32, never held at once: see BLOCK_FRAMES) still takes 60 s of 8 channels at 96 kHz, or a
# 10-minute 48 kHz stereo clip of a dataset, while the 4-10 s of CPU a hostile file cost are refused in milliseconds.
MAX_DECODED_SAMPLES = 64_000_000
BLOCK_FRAMES = 65536  # files are decoded this many frames at a time and down-mixed per block: the peak stays mono


def load_audio(source, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = MAX_SECONDS) -> np.ndarray:
    """A float32 mono waveform in [-1, 1] at `sample_rate` from any input the app, the CLI or Python may hand over.

    `source`: a file path, the file's bytes, `(sample_rate, array)` as Gradio's numpy audio gives it (int or float,
    `[samples]` or `[samples, channels]`), a `{"path"|"bytes"|"array", "sampling_rate"}` dict (the `datasets` Audio
    layout), or a bare array taken to be at `sample_rate` already.
    """
    wave, rate = read_audio(source, max_seconds, default_rate=sample_rate)
    return resample(wave, rate, sample_rate)


def read_audio(source, max_seconds: float | None = MAX_SECONDS, default_rate: int = SAMPLE_RATE
               ) -> tuple[np.ndarray, int]:
    """(float32 mono samples, sample rate) as stored, not resampled; see `load_audio` for the inputs taken."""
    if source is None:
        raise FmhubError("no audio received: record or upload a clip")
    if isinstance(source, dict):
        if source.get("array") is not None:
            return read_audio((source.get("sampling_rate") or default_rate, source["array"]), max_seconds)
        if source.get("bytes"):
            return read_audio(bytes(source["bytes"]), max_seconds)
        if source.get("path"):
            return read_audio(str(source["path"]), max_seconds)
        raise FmhubError("no audio received: the item has no path, bytes or array")
    if isinstance(source, tuple) and len(source) == 2:
        rate, array = source
        rate = _check_rate(rate)
        _check_length(max(np.shape(array), default=0), rate, max_seconds)  # before converting a huge array
        return _checked(to_mono_float(array), rate, max_seconds)
    if isinstance(source, np.ndarray):
        _check_length(max(source.shape, default=0), default_rate, max_seconds)
        return _checked(to_mono_float(source), default_rate, max_seconds)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(source)), len(source), "the audio", max_seconds)
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FmhubError(f"audio file not found: {path.name}")
        with open(path, "rb") as fh:
            return _decode(fh, path.stat().st_size, path.name, max_seconds)
    raise FmhubError(f"cannot read audio from a {type(source).__name__}: give a file, its bytes or (rate, samples)")


def _decode(fh, size: int, name: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if size == 0:
        raise FmhubError(f"{name} is empty (0 bytes)")
    try:
        with sf.SoundFile(fh) as f:
            rate, channels, frames = _check_rate(f.samplerate), f.channels, f.frames
            # the header's length and size are checked before decoding: a 10-minute upload, or 60 s of 8 channels
            # at 384 kHz, is refused in milliseconds
            if max_seconds is not None and frames > 0 and frames / rate > max_seconds + 0.5:
                raise FmhubError(_too_long(frames / rate, max_seconds))
            _check_budget(frames, channels, rate)
            # headers can lie (streamed WAVs say 0 or 2^32 frames): never read past the caps
            limit = MAX_DECODED_SAMPLES // channels + 1
            if max_seconds is not None:
                limit = min(limit, int((max_seconds + 1.0) * rate))
            wave = _read_mono(f, limit, expected=frames)
    except FmhubError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OSError, EOFError):
        # the decoder's own message names the server-side upload path: it stays out of what users see
        raise FmhubError(f"could not decode {name}: not a readable {FORMATS} file, or the file is damaged") from None
    _check_budget(len(wave), channels, rate)
    return _checked(wave, rate, max_seconds)


def _read_mono(f, limit: int, expected: int) -> np.ndarray:
    """Up to `limit` frames of an open SoundFile as float32 mono in [-1, 1], read and down-mixed BLOCK_FRAMES at a
    time, so that no [frames, channels] array is ever held; the values are `to_mono_float`'s on the whole file."""
    block = np.empty((max(1, min(BLOCK_FRAMES, limit)), f.channels), np.float32)
    out = np.empty(min(expected, limit) if expected > 0 else 0, np.float32)  # the header's length: usually exact
    parts, total = [], 0  # what comes past the header's length, if anything
    while total < limit:
        data = f.read(always_2d=True, out=block[:limit - total])
        if len(data) == 0:
            break
        mono = data[:, 0] if f.channels == 1 else data.mean(axis=1, dtype=np.float64)
        mono = np.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0)
        if not parts and total + len(mono) <= len(out):
            out[total:total + len(mono)] = mono
        else:
            parts.append(mono.astype(np.float32))
        total += len(mono)
    wave = np.concatenate([out[:total - sum(map(len, parts))], *parts]) if parts else out[:total]
    peak = max(float(wave.max()), -float(wave.min())) if wave.size else 0.0
    if peak > 1.0:  # unnormalised float audio: brought back into range, as `to_mono_float` does, a block at a time
        for i in range(0, len(wave), BLOCK_FRAMES):
            wave[i:i + BLOCK_FRAMES] = wave[i:i + BLOCK_FRAMES] / np.float64(peak)
    return wave


def _check_budget(frames: int, channels: int, rate: int) -> None:
    if frames * channels > MAX_DECODED_SAMPLES:
        raise FmhubError(
            f"the audio is {frames / rate:.1f} s of {channels} channel(s) at {rate} Hz: {frames * channels / 1e6:.0f} "
            f"million samples to decode; the limit is {MAX_DECODED_SAMPLES / 1e6:.0f} million. "
            "Send it as mono or at a lower sample rate (16 kHz is enough) and try again.")


def _too_long(seconds: float, max_seconds: float) -> str:
    return (f"the audio is {seconds:.1f} s long; the limit is {max_seconds:.0f} s. "
            "Trim it to the part with the commands and try again.")


def _check_rate(rate) -> int:
    try:
        rate = int(rate)
    except (TypeError, ValueError):
        raise FmhubError(f"invalid sample rate {rate!r}") from None
    if not MIN_RATE <= rate <= MAX_RATE:
        raise FmhubError(f"unsupported sample rate {rate} Hz (expected {MIN_RATE}-{MAX_RATE} Hz)")
    return rate


def to_mono_float(array) -> np.ndarray:
    """float32 mono in [-1, 1] from int or float samples, `[n]`, `[n, channels]` or `[channels, n]` (few channels)."""
    x = np.asarray(array)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise FmhubError("the audio samples are not numbers")
    if x.ndim == 2:
        channels_last = x.shape[1] <= 8 or x.shape[1] < x.shape[0]
        x = x.mean(axis=1 if channels_last else 0, dtype=np.float64) if x.size else x.reshape(-1)
        x = _scale(np.asarray(array), x)
    elif x.ndim == 1:
        x = _scale(x, x.astype(np.float64))
    elif x.ndim == 0 or x.size == 0:
        x = np.zeros(0)
    else:
        raise FmhubError(f"audio must be 1-D (mono) or 2-D (samples x channels), got shape {tuple(x.shape)}")
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 1.0:  # unnormalised float audio: bring it back into range rather than clipping it
        x = x / peak
    return x.astype(np.float32)


def _scale(original: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Integer PCM to [-1, 1]: int16 / 32768, int32 / 2^31, uint8 centred on 128."""
    if np.issubdtype(original.dtype, np.unsignedinteger):
        info = np.iinfo(original.dtype)
        half = (int(info.max) + 1) / 2
        return (values - half) / half
    if np.issubdtype(original.dtype, np.integer):
        return values / float(-np.iinfo(original.dtype).min)
    return values


def _checked(wave: np.ndarray, rate: int, max_seconds: float | None) -> tuple[np.ndarray, int]:
    _check_length(len(wave), rate, max_seconds)
    return wave, rate


def _check_length(samples: int, rate: int, max_seconds: float | None) -> None:
    if max_seconds is not None and samples / rate > max_seconds + 0.5:
        raise FmhubError(_too_long(samples / rate, max_seconds))


def resample(wave: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    import soxr

    wave = np.asarray(wave, dtype=np.float32)
    if rate == target or wave.size == 0:
        return wave
    return np.clip(soxr.resample(wave, rate, target, quality="HQ"), -1.0, 1.0).astype(np.float32)


def write_wav(path: str | Path, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """16-bit PCM WAV (what the tests and the predict examples use)."""
    import soundfile as sf

    sf.write(str(path), np.asarray(wave, dtype=np.float32), sample_rate, subtype="PCM_16")
    return Path(path)


# -- windows ---------------------------------------------------------------------------------------------------------
def fit_clip(wave: np.ndarray, length: int = SAMPLE_RATE) -> np.ndarray:
    """Exactly `length` samples: shorter clips are centred and zero-padded, longer ones keep their loudest second."""
    wave = np.asarray(wave, dtype=np.float32)
    if len(wave) == length:
        return wave
    if len(wave) < length:
        out = np.zeros(length, np.float32)
        start = (length - len(wave)) // 2
        out[start:start + len(wave)] = wave
        return out
    # energy of every `length`-long window from a running sum: O(n), where a convolution with a box was O(n * length)
    running = np.concatenate([[0.0], np.cumsum(wave.astype(np.float64) ** 2)])
    step = max(1, length // 100)
    energy = (running[length:] - running[:-length])[::step]
    start = int(np.argmax(energy)) * step
    return wave[start:start + length].copy()


def sliding_windows(wave: np.ndarray, window: int = SAMPLE_RATE, hop: int = SAMPLE_RATE // 4
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(windows [n, window], start samples [n]) covering the whole clip; the last window ends at the clip's end."""
    wave = np.asarray(wave, dtype=np.float32)
    if len(wave) <= window:
        return fit_clip(wave, window)[None], np.zeros(1, dtype=np.int64)
    starts = list(range(0, len(wave) - window + 1, hop))
    if starts[-1] != len(wave) - window:
        starts.append(len(wave) - window)
    starts = np.asarray(starts, dtype=np.int64)
    frames = np.lib.stride_tricks.sliding_window_view(wave, window)[starts]
    return np.ascontiguousarray(frames), starts


# -- features --------------------------------------------------------------------------------------------------------
def features(extractor, waves: np.ndarray | list[np.ndarray], sample_rate: int = SAMPLE_RATE) -> dict:
    """Model inputs for a batch of 16 kHz clips: the feature extractor's own output, computed fast for AST.

    transformers' ASTFeatureExtractor (without torchaudio) runs a Python loop over frames in numpy, about 35 ms a
    clip: the hot spot of training on CPU. `ast_log_mel` is the same computation batched in torch (equal within
    float rounding, checked by the tests); other extractors are called as they are.
    """
    if _is_numpy_ast(extractor):
        batch = torch.as_tensor(np.stack([np.asarray(w, dtype=np.float32) for w in waves]))
        return {"input_values": ast_log_mel(extractor, batch)}
    out = extractor([np.asarray(w, dtype=np.float32) for w in waves], sampling_rate=sample_rate, return_tensors="pt")
    return dict(out)


def _is_numpy_ast(extractor) -> bool:
    return type(extractor).__name__ == "ASTFeatureExtractor" and getattr(extractor, "mel_filters", None) is not None


@torch.no_grad()
def ast_log_mel(extractor, waves: torch.Tensor) -> torch.Tensor:
    """Batched torch version of ASTFeatureExtractor's numpy path: 25 ms Hann frames every 10 ms, DC removal,
    pre-emphasis 0.97, 512-point power spectrum, Kaldi mel bank, natural log, pad/cut to max_length, normalise."""
    x = waves.to(torch.float32)
    frame, hop, n_fft = 400, 160, 512
    if x.shape[1] < frame:
        x = torch.nn.functional.pad(x, (0, frame - x.shape[1]))
    frames = x.unfold(1, frame, hop)  # [batch, n_frames, 400]
    frames = frames - frames.mean(dim=-1, keepdim=True)
    emphasised = torch.cat([frames[..., :1] * (1 - 0.97), frames[..., 1:] - 0.97 * frames[..., :-1]], dim=-1)
    spectrum = torch.fft.rfft(emphasised * _tensor(extractor.window), n=n_fft)
    power = spectrum.real.square() + spectrum.imag.square()
    mel = power @ _tensor(extractor.mel_filters)
    fbank = torch.log(torch.clamp(mel, min=1.192092955078125e-07))
    length = extractor.max_length
    if fbank.shape[1] < length:
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, length - fbank.shape[1]))
    fbank = fbank[:, :length]
    if extractor.do_normalize:
        fbank = (fbank - extractor.mean) / (extractor.std * 2)
    return fbank.contiguous()


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float32))


def log_mel_image(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, n_mels: int = 64) -> np.ndarray:
    """[n_mels, frames] log-mel spectrogram in dB (80 dB range) for display."""
    from transformers.audio_utils import mel_filter_bank

    x = torch.as_tensor(np.asarray(wave, dtype=np.float32))
    if len(x) < 400:
        x = torch.nn.functional.pad(x, (0, 400 - len(x)))
    power = torch.stft(x, 512, hop_length=160, win_length=400, window=torch.hann_window(400), center=True,
                       return_complex=True).abs() ** 2
    mel = mel_filter_bank(num_frequency_bins=257, num_mel_filters=n_mels, min_frequency=20,
                          max_frequency=sample_rate // 2, sampling_rate=sample_rate, mel_scale="htk")
    db = 10 * torch.log10(torch.clamp(torch.as_tensor(mel.T, dtype=torch.float32) @ power, min=1e-10))
    return torch.clamp(db, min=float(db.max()) - 80.0).numpy()
