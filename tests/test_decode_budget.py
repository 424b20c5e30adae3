"""The decoded-data budget (RELIABILITY.md items 8 and 9): audio and images that are small on disk but huge once
decoded are refused from their headers, what is accepted decodes with a peak near its output, and ordinary files
decode to exactly what they decoded to before.

Memory is the peak resident memory (VmHWM, reset through /proc/self/clear_refs) of a separate Python process, so
that Pillow's and libsndfile's own allocations count and nothing this test process holds does.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from fmhub import audio, imaging
from fmhub.errors import FmhubError

HOSTILE_PIXELS = (5990, 5990)  # 35.9 megapixels: under the pixel budget (36 M), only the new budget stops it


def png(path: Path, width: int, height: int, bit_depth: int, color_type: int) -> Path:
    """A black PNG written with zlib a block of rows at a time: a 36-megapixel 16-bit one is about 70 KB on disk and
    costs the test no memory to make. color_type: 0 grey, 6 RGBA."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    channels = {0: 1, 2: 3, 6: 4}[color_type]
    row = b"\x00" * (1 + (width * channels * bit_depth + 7) // 8)  # filter byte 0, then zeros
    packer = zlib.compressobj(9)
    body = bytearray()
    for start in range(0, height, 256):
        body += packer.compress(row * min(256, height - start))
    body += packer.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", bytes(body)) + chunk(b"IEND", b""))
    return path


def flac(path: Path, rate: int, channels: int, seconds: float) -> Path:
    """A silent 16-bit FLAC with an honest header, written a second at a time (60 s, 8 channels, 384 kHz: 200 KB)."""
    block = np.zeros((rate, channels), np.int16)
    with sf.SoundFile(path, "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(int(seconds)):
            f.write(block)
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    files = {
        "flac_384k_8ch": flac(folder / "384k_8ch_60s.flac", 384000, 8, 60),
        "flac_96k_8ch": flac(folder / "96k_8ch_60s.flac", 96000, 8, 60),
        "png_gray16": png(folder / "gray16.png", *HOSTILE_PIXELS, bit_depth=16, color_type=0),
        "png_rgba": png(folder / "rgba.png", *HOSTILE_PIXELS, bit_depth=8, color_type=6),
        "png_gray16_31mp": png(folder / "gray16_31mp.png", 5600, 5600, bit_depth=16, color_type=0),  # 62.7 MB
    }
    assert files["flac_384k_8ch"].stat().st_size < 400_000
    assert files["png_gray16"].stat().st_size < 150_000 and files["png_rgba"].stat().st_size < 300_000
    assert sf.info(str(files["flac_384k_8ch"])).duration == pytest.approx(60.0)
    assert Image.open(files["png_gray16"]).mode.startswith("I") and Image.open(files["png_rgba"]).mode == "RGBA"
    return files


# Runs in a fresh interpreter per job (memory an earlier job freed would hide a later job's growth): warms the
# decoders up on small files, resets the peak, decodes the job's files in one thread each, all at once, and reports
# the outcome and time per file and the growth of the process's peak resident memory.
CHILD = textwrap.dedent("""
    import json, sys, tempfile, threading, time
    from pathlib import Path
    import numpy as np
    import soundfile as sf
    from PIL import Image
    from fmhub import audio, imaging
    from fmhub.errors import FmhubError

    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(key)

    def reset_peak():
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def decode(path):
        started = time.perf_counter()
        try:
            out = audio.load_audio(path) if path.endswith(".flac") else imaging.open_image(path)
            outcome, detail = "decoded", list(np.shape(out)) if path.endswith(".flac") else list(out.size)
        except FmhubError as err:
            outcome, detail = "refused", str(err)
        return {"outcome": outcome, "detail": detail, "seconds": time.perf_counter() - started}

    with tempfile.TemporaryDirectory() as warm:
        sf.write(f"{warm}/w.flac", np.zeros((48000, 2), np.float32), 48000)
        Image.fromarray(np.zeros((64, 64), np.uint16)).save(f"{warm}/w16.png")
        Image.new("RGBA", (64, 64)).save(f"{warm}/w.png")
        for name in ("w.flac", "w16.png", "w.png"):
            decode(f"{warm}/{name}")
        warm_thread = threading.Thread(target=decode, args=(f"{warm}/w.png",))
        warm_thread.start()
        warm_thread.join()

    paths = json.loads(sys.argv[1])
    results = [None] * len(paths)
    def work(i, path):
        results[i] = decode(path)
    threads = [threading.Thread(target=work, args=(i, p)) for i, p in enumerate(paths)]
    before = status("VmRSS")
    exact = reset_peak()  # else VmHWM still holds the warm-up's peak: the growth can only be overstated
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"results": results, "growth_mb": status("VmHWM") - before, "exact": exact}))
""")


def measure(paths: list[Path]) -> dict:
    """Files decoded at once, in threads, in a fresh process: {"results": [...], "growth_mb": its peak growth}."""
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps([str(p) for p in paths])], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def measured(hostile):
    names = ["flac_384k_8ch", "flac_96k_8ch", "png_gray16", "png_rgba", "png_gray16_31mp"]
    jobs = [[hostile[n]] for n in names] + [[hostile[n] for n in names[:4]], [hostile["flac_96k_8ch"]] * 4,
                                             [hostile["png_gray16"], hostile["png_rgba"]] * 2]
    report = [measure(job) for job in jobs]
    for name, job in zip(names + ["four_mixed", "four_96k", "four_png"], report):  # the numbers, with -s
        print(f"\n{name}: +{job['growth_mb']:.0f} MB,", ", ".join(
            f"{r['outcome']} in {r['seconds']:.4f} s" for r in job["results"]))
    return dict(zip(names + ["four_mixed", "four_96k", "four_png"], report, strict=True))


@pytest.mark.parametrize("name, message", [
    ("flac_384k_8ch", "million samples to decode; the limit is 64 million"),
    ("png_gray16", "too large to decode"),
    ("png_rgba", "too large to decode"),
], ids=["flac-384k-8ch-60s", "png-36mp-gray16", "png-36mp-rgba"])
def test_hostile_files_are_refused_from_their_headers(measured, name, message):
    job = measured[name]
    (result,) = job["results"]
    assert result["outcome"] == "refused" and message in result["detail"], result
    assert result["seconds"] < 0.5, result
    assert job["growth_mb"] <= 250, job


def test_an_accepted_many_channel_file_decodes_near_its_output_size(measured):
    """60 s of 8 channels at 96 kHz (46 M samples, under the budget) is decoded a block at a time: the old code
    held all of it as float32 and float64 (+250-290 MB); now the peak is near the 96 kHz mono signal (23 MB)."""
    job = measured["flac_96k_8ch"]
    (result,) = job["results"]
    assert result["outcome"] == "decoded" and result["detail"] == [60 * audio.SAMPLE_RATE], result
    assert job["growth_mb"] <= 100, job


def test_an_accepted_16_bit_image_converts_without_a_float_copy(measured):
    """31 megapixels of 16-bit grey (62.7 MB, under the budget): the old code went through float64 (+760 MB); now
    the peak is the decoded image and its RGB result (about 60 + 125 MB)."""
    job = measured["png_gray16_31mp"]
    (result,) = job["results"]
    assert result["outcome"] == "decoded" and result["detail"] == [5600, 5600], result
    assert job["growth_mb"] <= 250, job


@pytest.mark.parametrize("name", ["four_mixed", "four_96k", "four_png"])
def test_four_hostile_files_at_once_stay_under_1_gb(measured, name):
    job = measured[name]
    assert all(r["outcome"] in ("refused", "decoded") for r in job["results"]), job
    assert all(r["seconds"] < 0.5 for r in job["results"] if r["outcome"] == "refused"), job
    assert job["growth_mb"] <= 1024, job


# -- ordinary files decode as before ---------------------------------------------------------------------------------
def _old_load_audio(path) -> np.ndarray:
    """What `load_audio` computed before the budget: the whole file as float32, then `to_mono_float`, then soxr."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return audio.resample(audio.to_mono_float(data), rate, audio.SAMPLE_RATE)


def _speech_like(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.05, len(t))
    return (0.4 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t) + noise).astype(np.float32)


def test_ordinary_audio_decodes_to_the_same_samples(tmp_path):
    mono = tmp_path / "mono16k.wav"
    sf.write(mono, _speech_like(16000, 1.0), 16000, subtype="PCM_16")
    left, right = _speech_like(44100, 5.0, 1), _speech_like(44100, 5.0, 2)  # 5 s: several decoding blocks
    stereo = tmp_path / "stereo44k1.wav"
    sf.write(stereo, np.stack([left, 0.5 * right], axis=1), 44100, subtype="PCM_16")
    stereo_flac = tmp_path / "stereo44k1.flac"
    sf.write(stereo_flac, np.stack([left, 0.5 * right], axis=1), 44100, subtype="PCM_16")
    for path in (mono, stereo, stereo_flac):
        new = audio.load_audio(str(path))
        assert new.dtype == np.float32 and np.array_equal(new, _old_load_audio(path)), path.name
        assert np.array_equal(audio.load_audio(path.read_bytes()), new), path.name
    assert len(audio.load_audio(str(stereo))) == 5 * audio.SAMPLE_RATE
    # unnormalised float audio is still brought back into range, the same within float32 rounding
    loud = tmp_path / "loud.wav"
    sf.write(loud, np.stack([3 * left, -2 * right], axis=1), 44100, subtype="FLOAT")
    new = audio.load_audio(str(loud))
    assert np.max(np.abs(new)) <= 1.0 and np.allclose(new, _old_load_audio(loud), rtol=0, atol=1e-6)


def test_audio_caps_keep_their_messages(hostile, tmp_path):
    long = tmp_path / "ten_minutes.wav"
    sf.write(long, np.zeros(600 * 8000, np.int16), 8000, subtype="PCM_16")
    with pytest.raises(FmhubError, match="600.0 s long; the limit is 60 s"):
        audio.load_audio(str(long))
    for max_seconds in (None, 600.0):  # the dataset loader's cap, and none: the budget still holds
        started = time.perf_counter()
        with pytest.raises(FmhubError, match=r"60.0 s of 8 channel\(s\) at 384000 Hz: 184 million samples"):
            audio.load_audio(str(hostile["flac_384k_8ch"]), max_seconds=max_seconds)
        assert time.perf_counter() - started < 0.5
    assert len(audio.load_audio(str(flac(tmp_path / "ok.flac", 48000, 8, 2)))) == 2 * audio.SAMPLE_RATE


def _old_8bit(a: np.ndarray) -> np.ndarray:
    """The old full-image conversion of integer data wider than 8 bits (through float64)."""
    a = a.astype(np.float64)
    top = a.max(initial=0)
    if top > 255:
        a = a * (255.0 / (4095.0 if top < 4096 else 65535.0))
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("strip_pixels", [imaging.STRIP_PIXELS, 1000])  # one strip, and many
def test_ordinary_images_decode_to_the_same_pixels(tmp_path, monkeypatch, strip_pixels):
    monkeypatch.setattr(imaging, "STRIP_PIXELS", strip_pixels)
    rng = np.random.default_rng(0)
    for name, top in [("gray16.png", 65535), ("gray12.png", 4095), ("gray8in16.png", 255)]:
        values = rng.integers(0, top + 1, (240, 320), dtype=np.uint16)
        Image.fromarray(values).save(tmp_path / name)
        assert Image.open(tmp_path / name).mode.startswith("I")
        out = np.asarray(imaging.open_image(tmp_path / name))
        expected = np.repeat(_old_8bit(values)[..., None], 3, axis=-1)
        assert out.shape == (240, 320, 3) and np.array_equal(out, expected), name
        assert np.array_equal(np.asarray(imaging.to_pil_rgb(values)), expected), name  # arrays too

    rgba = rng.integers(0, 256, (150, 200, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    with Image.open(tmp_path / "rgba.png") as im:  # the old whole-image composite on black
        expected = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im.convert("RGBA"))
    assert np.array_equal(np.asarray(imaging.open_image(tmp_path / "rgba.png")), np.asarray(expected.convert("RGB")))

    palette = Image.fromarray(rng.integers(0, 16, (90, 120), dtype=np.uint8))
    palette.putpalette(rng.integers(0, 256, 48).tolist())  # L + a palette: a P image of indices 0..15
    assert palette.mode == "P"
    palette.save(tmp_path / "p.png", transparency=3)
    with Image.open(tmp_path / "p.png") as im:
        rgba_p = im.convert("RGBA")
        expected = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), rgba_p).convert("RGB")
    assert np.array_equal(np.asarray(imaging.open_image(tmp_path / "p.png")), np.asarray(expected))

    floats = rng.random((60, 80)).astype(np.float32)
    floats[0, 0] = np.nan
    expected = np.clip(np.nan_to_num(floats) * 255.0, 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(imaging.to_pil_rgb(Image.fromarray(floats)))[..., 0], expected)

    photo = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    assert np.array_equal(np.asarray(imaging.open_image(tmp_path / "photo.png")), photo)
    assert np.array_equal(np.asarray(imaging.open_image((tmp_path / "photo.png").read_bytes())), photo)


def test_only_the_medical_formats_are_opened(tmp_path):
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8))
    for fmt in imaging.FORMATS:
        path = tmp_path / f"image.{fmt.lower()}"
        picture.save(path, format=fmt)
        assert imaging.open_image(path).size == (48, 32), fmt
    picture.save(tmp_path / "image.ppm", format="PPM")  # Pillow reads PPM; the app no longer tries to
    with pytest.raises(FmhubError, match="not an image format this app can read"):
        imaging.open_image(tmp_path / "image.ppm")


def test_image_caps_keep_their_messages(tmp_path):
    bomb = png(tmp_path / "bomb.png", 13000, 13000, bit_depth=1, color_type=0)
    with pytest.raises(FmhubError, match=r"too large \(over 36 megapixels\)"):  # Pillow's own guard speaks first
        imaging.open_image(bomb)
    wide = png(tmp_path / "wide.png", 20000, 2000, bit_depth=1, color_type=0)
    with pytest.raises(FmhubError, match=r"too large \(20000 x 2000 = 40 megapixels\); the limit is 36 megapixels"):
        imaging.open_image(wide)
    # 8-bit grey up to the pixel budget is within the decoded-size budget (36 MB)
    imaging._check_decoded_size(*HOSTILE_PIXELS, "L")
    with pytest.raises(FmhubError, match=r"5990 x 5990 pixels x 1 band\(s\) x 2 byte\(s\) = 72 MB\); the limit is 64"):
        imaging._check_decoded_size(*HOSTILE_PIXELS, "I;16")


def test_a_large_plain_rgb_photo_is_not_held_to_the_conversion_budget(tmp_path):
    # 6000 x 4000 8-bit RGB (a 24-megapixel camera photo, 72 MB decoded): Pillow decodes it straight to its final
    # size, so only the pixel budget applies; the same size with an alpha channel needs a conversion and is refused
    photo = png(tmp_path / "photo.png", 6000, 4000, bit_depth=8, color_type=2)
    assert imaging.open_image(photo).size == (6000, 4000)
    with_alpha = png(tmp_path / "alpha.png", 6000, 4000, bit_depth=8, color_type=6)
    with pytest.raises(FmhubError, match="too large to decode"):
        imaging.open_image(with_alpha)
