"""Deterministic waveform augmentation for 1-second keyword-spotting clips.

Every random choice is drawn from the ``np.random.Generator`` passed in, so a
given generator state always produces the same output.  Inputs are float mono
waveforms in [-1, 1]; outputs are float32 of the same length (unless stated).

Building blocks:

* :func:`make_noise` - unit-RMS background noise: white, pink, brown, hum,
  babble (from a bank of speech clips, or speech-shaped modulated noise).
* :func:`add_noise` - mix at a given SNR (dB, relative to the active speech).
* :func:`apply_gain`, :func:`time_shift`, :func:`change_speed`,
  :func:`time_stretch` (WSOLA, pitch kept), :func:`pitch_shift`,
  :func:`reverb` (synthetic exponentially-decaying impulse response),
  :func:`band_limit` (telephone band, low-pass, high-pass).
* :func:`augment` - a random chain of the above, scaled by ``strength``.
* :func:`fit_to_length` - pad/crop to ``n`` samples at a random or centred offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import signal

__all__ = [
    "NOISE_KINDS",
    "make_noise",
    "add_noise",
    "rms",
    "active_rms",
    "apply_gain",
    "time_shift",
    "change_speed",
    "time_stretch",
    "pitch_shift",
    "reverb",
    "synthetic_rir",
    "band_limit",
    "fit_to_length",
    "trim_silence",
    "augment",
]

NOISE_KINDS = ("white", "pink", "brown", "hum", "babble")

_EPS = 1e-12


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def rms(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def _frame_rms(x: np.ndarray, frame: int) -> np.ndarray:
    n = len(x) // frame
    if n == 0:
        return np.array([rms(x)])
    f = np.asarray(x[: n * frame], dtype=np.float64).reshape(n, frame)
    return np.sqrt(np.mean(f * f, axis=1))


def active_rms(x: np.ndarray, sample_rate: int = 16000, floor_db: float = -40.0) -> float:
    """RMS over the frames within ``floor_db`` of the loudest 10 ms frame."""
    fr = _frame_rms(x, max(1, sample_rate // 100))
    if fr.max() <= 0:
        return 0.0
    act = fr[fr >= fr.max() * 10 ** (floor_db / 20)]
    return float(np.sqrt(np.mean(act * act)))


@lru_cache(maxsize=512)
def _butter_sos(order: int, cutoff: float | tuple[float, float], btype: str, fs: int) -> np.ndarray:
    return signal.butter(order, cutoff, btype=btype, fs=fs, output="sos")


def _sos(order: int, cutoff, btype: str, fs: int) -> np.ndarray:
    """Butterworth SOS with cut-offs rounded to 5 Hz (so designs can be cached)."""
    if isinstance(cutoff, (tuple, list)):
        key = tuple(float(round(c / 5.0) * 5.0) for c in cutoff)
    else:
        key = float(round(cutoff / 5.0) * 5.0)
    return _butter_sos(int(order), key, btype, int(fs))


def _unit_rms(x: np.ndarray) -> np.ndarray:
    r = rms(x)
    return _f32(x / r) if r > _EPS else _f32(x)


def _shape_spectrum(
    n: int, rng: np.random.Generator, exponent: float, sample_rate: int, f_min: float = 20.0
) -> np.ndarray:
    """Gaussian noise whose power spectrum goes as 1/f**exponent (above f_min)."""
    m = max(n, 2)
    spec = np.fft.rfft(rng.standard_normal(m))
    f = np.fft.rfftfreq(m, 1.0 / sample_rate)
    f = np.maximum(f, f_min)
    spec *= f ** (-exponent / 2.0)
    spec[0] = 0.0
    return _unit_rms(np.fft.irfft(spec, m)[:n])


def trim_silence(
    x: np.ndarray, sample_rate: int = 16000, threshold_db: float = -45.0, margin_s: float = 0.01
) -> np.ndarray:
    """Remove leading/trailing frames quieter than ``threshold_db`` re. the loudest frame."""
    x = np.asarray(x)
    if x.size == 0:
        return x
    frame = max(1, sample_rate // 200)  # 5 ms
    fr = _frame_rms(x, frame)
    if fr.max() <= 0:
        return x[:0]
    idx = np.nonzero(fr >= fr.max() * 10 ** (threshold_db / 20))[0]
    margin = int(margin_s * sample_rate)
    start = max(0, idx[0] * frame - margin)
    end = min(len(x), (idx[-1] + 1) * frame + margin)
    return x[start:end]


# ---------------------------------------------------------------------------
# noise
# ---------------------------------------------------------------------------


def make_noise(
    kind: str, n: int, rng: np.random.Generator, sample_rate: int = 16000, speech: Sequence[np.ndarray] | None = None
) -> np.ndarray:
    """Background noise of ``n`` samples with unit RMS (scale it yourself).

    kind: ``"white"``, ``"pink"`` (1/f), ``"brown"`` (1/f^2), ``"hum"`` (50/60 Hz
    mains with harmonics plus a little hiss), ``"babble"`` (several overlapping
    talkers: clips drawn from ``speech`` if given, else speech-shaped noise with
    syllable-rate amplitude modulation), or ``"mix"`` (random blend of the others).
    """
    n = int(n)
    if n <= 0:
        return np.zeros(0, np.float32)
    if kind == "white":
        return _unit_rms(rng.standard_normal(n))
    if kind == "pink":
        return _shape_spectrum(n, rng, 1.0, sample_rate)
    if kind == "brown":
        return _shape_spectrum(n, rng, 2.0, sample_rate)
    if kind == "hum":
        t = np.arange(n) / sample_rate
        f0 = float(rng.choice([50.0, 60.0])) * (1.0 + rng.uniform(-0.005, 0.005))
        x = np.zeros(n)
        n_harm = int(rng.integers(3, 9))
        for h in range(1, n_harm + 1):
            amp = rng.uniform(0.2, 1.0) / h ** rng.uniform(0.3, 1.2)
            x += amp * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi))
        x = _unit_rms(x) + 10 ** (rng.uniform(-40, -20) / 20) * rng.standard_normal(n)
        return _unit_rms(x)
    if kind == "babble":
        return _babble(n, rng, sample_rate, speech)
    if kind == "mix":
        kinds = ["white", "pink", "brown", "hum", "babble"]
        k = int(rng.integers(2, 4))
        chosen = rng.choice(len(kinds), size=k, replace=False)
        x = np.zeros(n)
        for i in chosen:
            x += 10 ** (rng.uniform(-12, 0) / 20) * make_noise(kinds[i], n, rng, sample_rate, speech)
        return _unit_rms(x)
    raise ValueError(f"unknown noise kind {kind!r}; expected one of {NOISE_KINDS + ('mix',)}")


def _babble(n: int, rng: np.random.Generator, sample_rate: int, speech: Sequence[np.ndarray] | None) -> np.ndarray:
    talkers = int(rng.integers(3, 8))
    x = np.zeros(n)
    if speech is not None and len(speech) > 0:
        for _ in range(talkers):
            # each talker: a sequence of random clips with random gaps, random gain
            track = np.zeros(n)
            pos = int(rng.integers(-sample_rate // 2, sample_rate // 4))
            while pos < n:
                clip = np.asarray(speech[int(rng.integers(len(speech)))], dtype=np.float64)
                clip = trim_silence(clip, sample_rate)
                if clip.size == 0:
                    pos += sample_rate // 10
                    continue
                clip = _unit_rms(clip) * 10 ** (rng.uniform(-6, 0) / 20)
                a, b = max(pos, 0), min(pos + len(clip), n)
                if b > a:
                    track[a:b] += clip[a - pos : b - pos]
                pos += len(clip) + int(rng.uniform(0.0, 0.25) * sample_rate)
            x += track * 10 ** (rng.uniform(-8, 0) / 20)
        return _unit_rms(x)
    # speech-shaped noise (long-term speech spectrum: band 100-4000 Hz, -3 dB/oct
    # above 500 Hz) with a random syllabic (2-7 Hz) envelope per talker
    m = max(n, 2)
    spec = np.fft.rfft(rng.standard_normal((talkers, m)), axis=1)
    f = np.fft.rfftfreq(m, 1.0 / sample_rate)
    shape = np.maximum(f, 500.0) ** -0.5
    shape /= np.sqrt(1.0 + (100.0 / np.maximum(f, 1.0)) ** 4)  # 2nd-order high-pass 100 Hz
    shape /= np.sqrt(1.0 + (f / 4000.0) ** 4)  # 2nd-order low-pass 4 kHz
    base = np.fft.irfft(spec * shape, m, axis=1)[:, :n]
    gains = 10 ** (rng.uniform(-8, 0, size=talkers) / 20)
    for i in range(talkers):
        n_ctrl = max(4, int(n / sample_rate * rng.uniform(2.0, 7.0)) + 2)
        ctrl = np.clip(rng.standard_normal(n_ctrl) + 0.5, 0, None)
        env = np.interp(np.linspace(0, n_ctrl - 1, n), np.arange(n_ctrl), ctrl)
        x += base[i] * env * gains[i]
    return _unit_rms(x)


def add_noise(wave: np.ndarray, noise: np.ndarray, snr_db: float, sample_rate: int = 16000) -> np.ndarray:
    """Mix ``noise`` (tiled/cropped to the wave's length) at ``snr_db``.

    The signal level is the RMS of the active (speech) frames, so the SNR does
    not depend on how much silence surrounds the word.
    """
    wave = np.asarray(wave, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    if noise.size == 0 or wave.size == 0:
        return _f32(wave)
    if len(noise) < len(wave):
        noise = np.tile(noise, int(np.ceil(len(wave) / len(noise))))
    noise = noise[: len(wave)]
    s = active_rms(wave, sample_rate)
    nr = rms(noise)
    if s <= _EPS or nr <= _EPS:
        return _f32(wave)
    return _f32(wave + noise * (s / nr) * 10 ** (-snr_db / 20))


# ---------------------------------------------------------------------------
# simple transforms
# ---------------------------------------------------------------------------


def apply_gain(wave: np.ndarray, gain_db: float) -> np.ndarray:
    return _f32(np.asarray(wave, dtype=np.float64) * 10 ** (gain_db / 20))


def time_shift(
    wave: np.ndarray,
    rng: np.random.Generator,
    max_shift_s: float = 0.2,
    sample_rate: int = 16000,
    keep_active: bool = True,
) -> np.ndarray:
    """Shift within the same-length window, zero-filling (no wrap-around).

    With ``keep_active`` the shift is limited so that the non-silent part
    (above -45 dB of the peak frame) stays inside the window.
    """
    x = np.asarray(wave, dtype=np.float32)
    n = len(x)
    max_shift = int(max_shift_s * sample_rate)
    lo, hi = -max_shift, max_shift
    if keep_active and n:
        frame = max(1, sample_rate // 200)
        fr = _frame_rms(x, frame)
        if fr.max() > 0:
            idx = np.nonzero(fr >= fr.max() * 10 ** (-45 / 20))[0]
            start, end = idx[0] * frame, min(n, (idx[-1] + 1) * frame)
            lo, hi = max(lo, -start), min(hi, n - end)
    if hi < lo:
        return x.copy()
    s = int(rng.integers(lo, hi + 1))
    out = np.zeros_like(x)
    if s >= 0:
        out[s:] = x[: n - s]
    else:
        out[:s] = x[-s:]
    return out


def change_speed(wave: np.ndarray, factor: float, sample_rate: int = 16000) -> np.ndarray:
    """Play ``factor`` times faster (shorter, higher pitch), by resampling.

    Returns a waveform of length ``round(len / factor)``.
    """
    import soxr

    x = np.asarray(wave, dtype=np.float32)
    if abs(factor - 1.0) < 1e-6 or x.size == 0:
        return x.copy()
    # treat the signal as recorded at sample_rate*factor and bring it back to sample_rate
    return _f32(soxr.resample(x, sample_rate * factor, sample_rate, quality="HQ"))


def time_stretch(
    wave: np.ndarray, factor: float, sample_rate: int = 16000, frame_s: float = 0.03, tolerance_s: float = 0.008
) -> np.ndarray:
    """WSOLA time-scale modification: ``factor`` > 1 makes it shorter, pitch kept.

    Output length is ``round(len / factor)``.
    """
    x = np.asarray(wave, dtype=np.float64)
    if abs(factor - 1.0) < 1e-6 or x.size == 0:
        return _f32(x)
    n_out = int(round(len(x) / factor))
    win = max(32, int(frame_s * sample_rate)) // 2 * 2
    hop = win // 2
    tol = int(tolerance_s * sample_rate)
    window = np.hanning(win + 2)[1:-1]  # sums to ~1 at 50 % overlap
    pad = win + tol + int(abs(factor) * hop) + 2
    xp = np.concatenate([np.zeros(pad), x, np.zeros(pad + win * 2)])
    out = np.zeros(n_out + win * 2)
    norm = np.zeros_like(out)
    prev = pad  # position in xp of the previously copied frame
    k = 0
    while k * hop < n_out + hop:
        nominal = pad + int(round(k * hop * factor))
        if k == 0:
            pos = nominal
        else:
            # natural continuation of the previous frame
            target = xp[prev + hop : prev + hop + win]
            lo = max(0, nominal - tol)
            hi = min(len(xp) - win, nominal + tol)
            seg = xp[lo : hi + win]
            if hi > lo and np.any(target):
                corr = np.correlate(seg, target, mode="valid")
                pos = lo + int(np.argmax(corr))
            else:
                pos = nominal
        o = k * hop
        out[o : o + win] += xp[pos : pos + win] * window
        norm[o : o + win] += window
        prev = pos
        k += 1
    out = out[:n_out] / np.maximum(norm[:n_out], 1e-3)
    return _f32(out)


def pitch_shift(wave: np.ndarray, semitones: float, sample_rate: int = 16000) -> np.ndarray:
    """Shift pitch by ``semitones`` keeping the duration (resample + WSOLA)."""
    x = np.asarray(wave, dtype=np.float32)
    if abs(semitones) < 1e-6 or x.size == 0:
        return x.copy()
    ratio = 2.0 ** (semitones / 12.0)
    y = time_stretch(x, 1.0 / ratio, sample_rate)  # longer by `ratio`
    y = change_speed(y, ratio, sample_rate)  # back to ~original length, pitch * ratio
    return _match_length(y, len(x))


def _match_length(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) >= n:
        return _f32(x[:n])
    return _f32(np.pad(x, (0, n - len(x))))


def synthetic_rir(
    rng: np.random.Generator,
    sample_rate: int = 16000,
    rt60_s: float | None = None,
    direct_to_reverb_db: float | None = None,
) -> np.ndarray:
    """Exponentially decaying noise impulse response with a direct path and a
    few discrete early reflections.  Peak-normalised (direct path = 1)."""
    if rt60_s is None:
        rt60_s = float(rng.uniform(0.15, 0.9))
    if direct_to_reverb_db is None:
        direct_to_reverb_db = float(rng.uniform(-3.0, 12.0))
    length = int(min(1.5, rt60_s * 1.2) * sample_rate) + 1
    t = np.arange(length) / sample_rate
    tail = rng.standard_normal(length) * np.exp(-6.9078 * t / rt60_s)  # -60 dB at rt60
    # darker tail: a gentle one-pole low-pass, stronger for longer rooms
    a = float(np.clip(rng.uniform(0.2, 0.7), 0, 0.95))
    tail = signal.lfilter([1 - a], [1, -a], tail)
    pre = int(rng.uniform(0.002, 0.01) * sample_rate)  # reverberant onset after the direct path
    tail[:pre] = 0.0
    h = np.zeros(length)
    h[0] = 1.0
    for _ in range(int(rng.integers(2, 7))):
        d = int(rng.uniform(0.003, 0.04) * sample_rate)
        if d < length:
            h[d] += rng.uniform(-0.6, 0.6)
    e_direct = 1.0
    e_tail = float(np.sum(tail * tail)) + _EPS
    tail *= np.sqrt(e_direct / e_tail * 10 ** (-direct_to_reverb_db / 10))
    h += tail
    return _f32(h / np.max(np.abs(h)))


def reverb(
    wave: np.ndarray,
    rng: np.random.Generator,
    sample_rate: int = 16000,
    rt60_s: float | None = None,
    direct_to_reverb_db: float | None = None,
) -> np.ndarray:
    """Convolve with :func:`synthetic_rir`; same length, RMS preserved."""
    x = np.asarray(wave, dtype=np.float64)
    if x.size == 0:
        return _f32(x)
    h = synthetic_rir(rng, sample_rate, rt60_s, direct_to_reverb_db)
    y = signal.fftconvolve(x, h)[: len(x)]
    r_in, r_out = rms(x), rms(y)
    if r_out > _EPS:
        y *= r_in / r_out
    return _f32(y)


def band_limit(
    wave: np.ndarray,
    kind: str = "telephone",
    sample_rate: int = 16000,
    cutoff_hz: float | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Band-limit the signal.

    kind: ``"telephone"`` (300-3400 Hz band-pass, plus 8 kHz resampling and
    mu-law companding), ``"lowpass"`` (``cutoff_hz``, default random 1.5-6 kHz),
    ``"highpass"`` (``cutoff_hz``, default random 100-400 Hz).
    """
    x = np.asarray(wave, dtype=np.float64)
    if x.size == 0:
        return _f32(x)
    nyq = sample_rate / 2
    if kind == "telephone":
        lo, hi = 300.0, min(3400.0, nyq * 0.95)
        if rng is not None:
            lo, hi = rng.uniform(200, 400), min(rng.uniform(3000, 3600), nyq * 0.95)
        sos = _sos(4, (lo, hi), "bandpass", sample_rate)
        y = signal.sosfilt(sos, x)
        if sample_rate > 8000:
            import soxr

            y = soxr.resample(soxr.resample(y, sample_rate, 8000), 8000, sample_rate)
            y = _match_length(y, len(x)).astype(np.float64)
        # 8-bit mu-law companding
        peak = np.max(np.abs(y)) + _EPS
        mu = 255.0
        c = np.sign(y / peak) * np.log1p(mu * np.abs(y / peak)) / np.log1p(mu)
        c = np.round(c * 127) / 127
        y = np.sign(c) * ((1 + mu) ** np.abs(c) - 1) / mu * peak
        return _f32(y)
    if kind == "lowpass":
        if cutoff_hz is None:
            cutoff_hz = rng.uniform(1500, 6000) if rng is not None else 4000.0
        sos = _sos(6, min(cutoff_hz, nyq * 0.95), "lowpass", sample_rate)
        return _f32(signal.sosfilt(sos, x))
    if kind == "highpass":
        if cutoff_hz is None:
            cutoff_hz = rng.uniform(100, 400) if rng is not None else 200.0
        sos = _sos(2, cutoff_hz, "highpass", sample_rate)
        return _f32(signal.sosfilt(sos, x))
    raise ValueError(f"unknown band-limit kind {kind!r}")


# ---------------------------------------------------------------------------
# length fitting
# ---------------------------------------------------------------------------


def fit_to_length(wave: np.ndarray, n: int = 16000, rng: np.random.Generator | None = None) -> np.ndarray:
    """Pad or crop to exactly ``n`` samples.

    Shorter input is placed at a uniformly random offset (``rng`` given) or
    centred (``rng`` None) and zero-padded; longer input is cropped to a random
    (or the central) window of ``n`` samples.
    """
    x = np.asarray(wave, dtype=np.float32)
    m = len(x)
    if m == n:
        return x.copy()
    if m < n:
        off = int(rng.integers(0, n - m + 1)) if rng is not None else (n - m) // 2
        out = np.zeros(n, np.float32)
        out[off : off + m] = x
        return out
    off = int(rng.integers(0, m - n + 1)) if rng is not None else (m - n) // 2
    return x[off : off + n].copy()


# ---------------------------------------------------------------------------
# random chain
# ---------------------------------------------------------------------------


def random_noise(n: int, rng: np.random.Generator, sample_rate: int = 16000, *,
                 noise_bank: Sequence[np.ndarray] | None = None,
                 speech_bank: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """``n`` samples of unit-RMS noise: half the time a stretch of a ``noise_bank`` clip (when given), else white,
    pink, brown, hum or babble (made from ``speech_bank``)."""
    if noise_bank is not None and len(noise_bank) > 0 and rng.random() < 0.5:
        src = np.asarray(noise_bank[int(rng.integers(len(noise_bank)))], dtype=np.float32)
        if len(src) > n:
            o = int(rng.integers(0, len(src) - n + 1))
            src = src[o : o + n]
        return _unit_rms(_match_length(src, n))
    kinds = ["white", "pink", "brown", "hum", "babble"]
    return make_noise(kinds[int(rng.integers(len(kinds)))], n, rng, sample_rate, speech=speech_bank)


def augment(
    wave: np.ndarray,
    rng: np.random.Generator,
    sample_rate: int = 16000,
    strength: float = 1.0,
    *,
    noise_bank: Sequence[np.ndarray] | None = None,
    speech_bank: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Apply a random augmentation chain; output has the input's length.

    Each effect fires with a probability proportional to ``strength`` (0 gives
    the input back unchanged, 1 is a moderate default, up to ~2 is heavy), and
    its magnitude grows with ``strength``:

    speed change (resampling, +-10 %) or pitch shift (+-2 semitones) or tempo
    change (+-12 %) -> time shift (<=100 ms, the word stays in the window) ->
    reverb (RT60 0.15-0.9 s) -> band-limiting (telephone / low-pass /
    high-pass) -> additive noise (white/pink/brown/hum/babble, or a clip from
    ``noise_bank``) at SNR 30..0 dB -> gain (+-10 dB) -> clip to [-1, 1].

    ``speech_bank``: other speech clips used to make real babble noise.
    """
    x = np.asarray(wave, dtype=np.float32)
    n = len(x)
    s = float(max(0.0, strength))
    if s == 0.0 or n == 0:
        return x.copy()

    def p(base: float) -> bool:
        return bool(rng.random() < min(1.0, base * s))

    # 1) speed / pitch / tempo (one of them)
    if p(0.5):
        which = int(rng.integers(3))
        if which == 0:
            f = 1.0 + rng.uniform(-0.10, 0.10) * min(s, 2.0)
            y = change_speed(x, f, sample_rate)
        elif which == 1:
            y = pitch_shift(x, rng.uniform(-2.0, 2.0) * min(s, 2.0), sample_rate)
        else:
            f = 1.0 + rng.uniform(-0.12, 0.12) * min(s, 2.0)
            y = time_stretch(x, f, sample_rate)
        # keep the word centred where it was: crop/pad symmetrically
        if len(y) >= n:
            off = (len(y) - n) // 2
            x = _f32(y[off : off + n])
        else:
            off = (n - len(y)) // 2
            x = _f32(np.pad(y, (off, n - len(y) - off)))
    # 2) time shift
    if p(0.5):
        x = time_shift(x, rng, max_shift_s=0.1 * min(s, 2.0), sample_rate=sample_rate)
    # 3) reverb
    if p(0.3):
        x = reverb(x, rng, sample_rate, rt60_s=rng.uniform(0.15, 0.3 + 0.3 * min(s, 2.0)))
    # 4) band-limiting
    if p(0.2):
        kind = ["telephone", "lowpass", "highpass"][int(rng.integers(3))]
        x = band_limit(x, kind, sample_rate, rng=rng)
    # 5) additive noise
    if p(0.6):
        lo_snr = max(-5.0, 20.0 - 10.0 * s)  # s=1 -> 10..30 dB, s=2 -> 0..30 dB
        noise = random_noise(n, rng, sample_rate, noise_bank=noise_bank, speech_bank=speech_bank)
        x = add_noise(x, noise, rng.uniform(lo_snr, 30.0), sample_rate)
    # 6) gain
    if p(0.7):
        x = apply_gain(x, rng.uniform(-10.0, 6.0) * min(s, 1.0))
    return _f32(np.clip(x, -1.0, 1.0))
