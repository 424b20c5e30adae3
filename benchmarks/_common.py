"""What the benchmark scripts share: child processes with their peak memory, statistics, tables, JSON, models.

Absolute times on a shared machine drift, so every script interleaves the systems it compares (A B A B ...) and
reports medians and ratios measured side by side in one run.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("customer-service", "medical-image", "voice-command")
SHORT = {"customer-service": "text", "medical-image": "image", "voice-command": "audio"}


# -- environment --------------------------------------------------------------------------------------------------
def bench_env(threads: int | None = None, **extra: str) -> dict[str, str]:
    """The environment of every child process: offline, quiet, the same thread count for every system."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TQDM_DISABLE="1",
        TOKENIZERS_PARALLELISM="false",
        GRADIO_ANALYTICS_ENABLED="False",
        PYTHONUNBUFFERED="1",
    )
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def machine() -> dict:
    """What the numbers were measured on."""
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    for name in ("transformers", "accelerate", "timm", "gradio", "gradio_client"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            pass
    try:
        model = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        info["cpu"] = model[0].split(":", 1)[1].strip() if model else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    return info


# -- other load on the machine ------------------------------------------------------------------------------------
DISTURBED = 0.2  # a measurement during which other processes used more than this share of the machine is repeated


def cpu_counters() -> tuple[float, float, float]:
    """(wall time, this process's CPU seconds, the whole machine's busy CPU seconds) from /proc/stat."""
    busy = 0.0
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        pass
    return time.time(), time.process_time(), busy


def other_load(start, end) -> float | None:
    """Share of the machine's cores that *other* processes kept busy between two `cpu_counters()` readings."""
    wall = end[0] - start[0]
    if wall <= 0 or not end[2]:
        return None
    others = (end[2] - start[2]) - (end[1] - start[1])
    return max(0.0, others / (wall * (os.cpu_count() or 1)))


def machine_busy(seconds: float = 1.0) -> float:
    """Share of the machine's cores busy over the next `seconds` (this process should be idle meanwhile)."""
    start = cpu_counters()
    time.sleep(seconds)
    end = cpu_counters()
    return other_load(start, end) or 0.0


@contextlib.contextmanager
def measuring(lock_path: str | None, quiet_below: float = 0.15, max_wait: float = 300.0):
    """Hold `lock_path` (an flock shared by everyone timing things on this machine) for one unit of measurement,
    and start only on a quiet machine: while other processes keep more than `quiet_below` of it busy, the lock is
    released and the check repeated every few seconds (for at most `max_wait` seconds, then it goes ahead)."""
    if not lock_path:
        yield
        return
    import fcntl

    deadline = time.time() + max_wait
    while True:
        handle = open(lock_path, "a+")  # noqa: SIM115 - released below
        fcntl.flock(handle, fcntl.LOCK_EX)
        busy = machine_busy() if quiet_below < 1 else 0.0
        if busy <= quiet_below or time.time() > deadline:
            break
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
        print(f"note: the machine is busy ({busy:.0%} used by other processes); waiting", file=sys.stderr)
        time.sleep(10)
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


# -- child processes ----------------------------------------------------------------------------------------------
def run_child(cmd: list[str], env: dict, timeout: float, log_path: Path | None = None) -> dict:
    """Run one measurement in its own process: exit code, wall seconds and peak RSS (ru_maxrss of that process)."""
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    started = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this child alone
    finally:
        timer.cancel()
        if log_path:
            log.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "returncode": proc.returncode,
        "timed_out": killed.is_set(),
        "wall_s": time.time() - started,
        "spawned_at": started,
        "peak_rss_mb": usage.ru_maxrss / 1024.0,  # Linux reports KiB
    }


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- statistics and output ----------------------------------------------------------------------------------------
def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def percentile(values, q: float):
    """Linear-interpolated percentile (q in 0..100), numpy's default method."""
    values = sorted(values)
    if not values:
        return None
    pos = (len(values) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def fmt(value, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}{suffix}"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | Path | None, data: dict) -> None:
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


# -- models -------------------------------------------------------------------------------------------------------
def tiny_backbones(folder: Path) -> dict[str, str]:
    """Tiny random-weight backbones with the defaults' architectures (as tests/conftest.py builds them): seconds."""
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertModel,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForAudioClassification,
    )

    from fmhub.models.auto import resolve_model_path

    text, audio = folder / "tiny_bert", folder / "tiny_whisper"
    if not (text / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=128, max_position_embeddings=128)
        BertModel(config).save_pretrained(text)
        tokenizer.save_pretrained(text)
    if not (audio / "config.json").is_file():
        config = WhisperConfig(num_mel_bins=64, d_model=32, encoder_layers=1, encoder_attention_heads=2,
                               encoder_ffn_dim=64, max_source_positions=50, classifier_proj_size=32)
        WhisperForAudioClassification(config).save_pretrained(audio)
        WhisperFeatureExtractor(feature_size=64, chunk_length=1).save_pretrained(audio)
    return {"customer-service": str(text), "medical-image": "test_efficientnet", "voice-command": str(audio)}


def save_untrained_model(scenario_name: str, folder: Path, backbone: str | None = None, **overrides) -> Path:
    """A saved fmhub model folder with the backbone's weights and a fresh (not fine-tuned) head.

    Serving cost does not depend on what the head learned, so this stands in for a fine-tuned model when none is
    cached; the JSON output says which kind was measured.
    """
    from fmhub.config import resolve_config
    from fmhub.registry import get_scenario

    folder = Path(folder)
    if (folder / "fmhub.json").is_file():
        return folder
    scenario = get_scenario(scenario_name)
    values = {"scenario": scenario_name, "model": backbone, **overrides}
    config = resolve_config(scenario.defaults, {}, values)
    labels = list(scenario.default_labels) or ["normal", "lesion"]
    model, processor = scenario.build_model(config, labels)
    scenario.save_model(model, processor, folder, labels)
    extras = {
        "scenario": scenario_name,
        "backbone": scenario.resolve_backbone(backbone),
        "label_names": labels,
        "data": "untrained head (benchmark stand-in)",
        "test_metrics": {},
    }
    (folder / "fmhub.json").write_text(json.dumps(extras, indent=2))
    return folder


def resolve_models(given: dict[str, str | None], work: Path, quick: bool, scenarios=SCENARIOS) -> dict[str, dict]:
    """{scenario: {"folder", "kind"}}: the given folder, else the cached fine-tuned default, else an untrained
    stand-in with the default backbone (or, with --quick, a tiny one)."""
    from fmhub.paths import default_model_dir

    out = {}
    tiny = tiny_backbones(work / "backbones") if quick else {}
    for scenario in scenarios:
        if given.get(scenario):
            out[scenario] = {"folder": str(Path(given[scenario]).resolve()), "kind": "given"}
            continue
        cached = default_model_dir(scenario)
        if not quick and (cached / "fmhub.json").is_file():
            out[scenario] = {"folder": str(cached), "kind": "fine-tuned embedded default (cache)"}
            continue
        overrides = {}
        if quick and scenario == "medical-image":
            overrides = {"pretrained": False, "image_size": 64}
        folder = save_untrained_model(scenario, work / "models" / scenario, tiny.get(scenario), **overrides)
        kind = "tiny random backbone" if quick else "default backbone, untrained head"
        out[scenario] = {"folder": str(folder), "kind": kind}
    return out


def sample_inputs(scenario: str, folder: Path, count: int, synthetic: bool = False) -> list:
    """Inputs both systems get: embedded test-split messages, PNG images and 1 s WAV clips (written once).

    `synthetic`: random images and tones instead of the embedded medical images and speech corpus (quick runs)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if scenario == "customer-service":
        from fmhub.data import intents

        rows = intents.load_embedded_intents(seed=0)["test"]
        texts = [r["text"] for r in rows]
        return [texts[i % len(texts)] for i in range(count)]
    import numpy as np

    if scenario == "medical-image":
        from PIL import Image

        from fmhub.data import medical_synth

        paths = [folder / f"image_{i}.png" for i in range(min(count, 16))]
        if not all(p.is_file() for p in paths):
            if synthetic:
                images = np.random.default_rng(0).integers(0, 255, (len(paths), 128, 128, 3), dtype=np.uint8)
            else:
                images, _, _ = medical_synth.generate(len(paths), size=128, seed=11, split="test")
            for path, image in zip(paths, images):
                Image.fromarray(image).save(path)
        return [str(paths[i % len(paths)]) for i in range(count)]
    import soundfile as sf

    paths = [folder / f"clip_{i}.wav" for i in range(min(count, 16))]
    if not all(p.is_file() for p in paths):
        rng = np.random.default_rng(0)
        try:
            if synthetic:
                raise RuntimeError("synthetic clips asked for")
            from fmhub.data import speech_corpus as corpus
            from fmhub.data.audio_data import embedded_corpus_path

            waves = corpus.load_corpus(embedded_corpus_path())["test"][0]
            picks = rng.choice(len(waves), size=len(paths), replace=False)
            clips = [np.asarray(waves[i], dtype=np.float32) for i in picks]
        except Exception:  # no corpus (espeak missing): tones and noise are as costly to classify
            t = np.arange(16000) / 16000.0
            clips = [(0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.02 * rng.standard_normal(16000))
                     .astype(np.float32) for i in range(len(paths))]
        for path, clip in zip(paths, clips):
            sf.write(path, clip, 16000, subtype="PCM_16")
    return [str(paths[i % len(paths)]) for i in range(count)]


def stop_process(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """Terminate a child server, killing it if it has not exited after `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)


def wait_for_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> float | None:
    """Seconds until `url` answers HTTP 200 (polled every 50 ms), or None on timeout / process exit."""
    import urllib.error
    import urllib.request

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc is not None and proc.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.05)
    return None


def print_header(title: str, info: dict) -> None:
    print(f"## {title}\n")
    print(f"machine: {info.get('cpu')} ({info.get('cpu_cores')} cores), device {info.get('device')}, "
          f"torch {info.get('torch')}, transformers {info.get('transformers')}\n")
    sys.stdout.flush()
