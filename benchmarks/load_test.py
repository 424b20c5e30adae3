"""Load test of the hub app (RELIABILITY.md items 22 and 3): the server in its own process, gradio_client from
many threads over every endpoint, then a queue overflow.

    python benchmarks/load_test.py --quick --models customer-service=runs/cs medical-image=runs/mi \\
        voice-command=runs/vc                               # the CI run (tests/test_load.py): about a minute
    python benchmarks/load_test.py --output load.json       # the benchmark: cached defaults, 8 threads, 2 x 60 s

It starts `python app.py` with one model per tab and makes DISTINCT inputs: a different message per chat and
classify_intent call (held-out rows of the embedded intent data), a different generated image per classify_image
call, a different clip per classify_audio call (held-out commands, each padded to its own length) and a different
chunk sequence per streaming session (`/reset_stream`, then `/stream_audio` chunk after chunk). The expected answer of
every input is its single-request answer on an idle server; inputs whose answers could not be told apart are dropped,
so a reply that went to the wrong request (cross-talk) is always caught. Then identical rounds: every thread works
through its share of the inputs (at least once; for --seconds when given), each reply compared with its own input's
answer. Then the queue bound (item 3): `concurrency` slow jobs hold the voice tab's workers while more jobs than the
queue holds are fired at once: exactly `max_size` more must be accepted, the rest refused fast with the queue-full
message, and every endpoint must answer afterwards.

It reports per round and endpoint p50/p95 latency, errors, queue-full refusals (counted apart) and cross-talk; the
server's RSS and upload-cache file count before the rounds, after each and after the overflow; the overflow's counts.
It prints a Markdown table, writes everything as JSON (--output), and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TABS = ("customer-service", "medical-image", "voice-command")
# endpoint -> tab; a streaming session is one /reset_stream and its /stream_audio chunks, each call counted apart
APIS = {"/chat": "customer-service", "/classify_intent": "customer-service", "/classify_image": "medical-image",
        "/classify_audio": "voice-command", "/stream_audio": "voice-command", "/reset_stream": "voice-command"}
SCORE_TOLERANCE = 1e-3  # the same input may meet another thread's work on the server: tiny float differences only
# RSS after the last round vs after round 1. Measured with the tiny test models on 2 busy cores (--quick: 4 threads,
# 76 calls per round): +1.5 % to +2.3 % (19-28 MB of 1.2 GB; round 1 itself added 26-40 MB). 5 % (about 60 MB)
# leaves room for allocator noise and still catches a leak of 1 MB per call.
MEMORY_TOLERANCE = 0.05
CACHE_TOLERANCE = 0  # files: round 2 uploads the same bytes as round 1, so Gradio's content-hashed cache must not grow
REFUSAL_BUDGET_S = 5.0  # a queue-full refusal must come back within this (upload of a 32 KB clip included)
CHUNK_SECONDS = 0.4  # streaming chunks: 0.4 s and up, a different length per session (the browser sends 0.5 s)
SIGNATURE_TOLERANCE = 2  # grey levels: the 8 x 8 thumbnail of a Grad-CAM overlay, which names its input image


# -- the server ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident memory of a process: psutil when installed, else /proc/<pid>/status."""
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for process {pid}") from None


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


class Server:
    """`python app.py` in its own process, with an upload cache folder of its own (GRADIO_TEMP_DIR)."""

    def __init__(self, models: dict[str, str], workdir: Path, port: int | None = None, prelude: str = ""):
        """`prelude`: Python run in the server process before app.py (a benchmark's variant of a setting)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.cache = workdir / "gradio-cache"
        self.log_path = workdir / "server.log"
        args = ["--host", "127.0.0.1", "--port", str(self.port)]
        for scenario, folder in models.items():
            args += [f"--{scenario}-model", folder]
        command = [sys.executable, str(ROOT / "app.py"), *args]
        if prelude:
            run_app = f"import runpy, sys; sys.argv = {[str(ROOT / 'app.py'), *args]!r}; " \
                      f"runpy.run_path(sys.argv[0], run_name='__main__')"
            command = [sys.executable, "-c", f"{prelude}\n{run_app}"]
        env = dict(os.environ, GRADIO_TEMP_DIR=str(self.cache), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
        self.command = command
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "gradio_api/info", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the server did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def rss_mb(self) -> float:
        return round(rss_bytes(self.process.pid) / 2**20, 1)

    def cache_files(self) -> int:
        return count_files(self.cache)

    def log_tail(self, chars: int = 3000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        self._log.close()


def make_client(url: str, **kwargs):
    """A gradio_client that downloads nothing and sends no telemetry (`analytics_enabled` where supported)."""
    from gradio_client import Client

    kwargs = dict(verbose=False, download_files=False, **kwargs)
    try:
        return Client(url, analytics_enabled=False, **kwargs)
    except TypeError:  # an older gradio_client: GRADIO_ANALYTICS_ENABLED=False (set in main) still applies
        return Client(url, **kwargs)


# -- the inputs ---------------------------------------------------------------------------------------------------
@dataclass
class Request:
    api: str
    name: str
    payload: object  # a message, a file path, or (streams) a list of chunk paths
    truth: str = ""  # what the input is (intent, class, command), for the report
    expected: object = None  # the single-request answer (streams: the reset's and one per chunk)


def make_inputs(folder: Path, per_api: int, streams: int) -> list[Request]:
    """Distinct candidate inputs (twice what is needed; `select_distinct` keeps `per_api` per endpoint)."""
    import numpy as np
    from PIL import Image

    from fmhub import audio
    from fmhub.data import medical_synth
    from fmhub.data import speech_corpus as corpus
    from fmhub.data.audio_data import embedded_corpus_path
    from fmhub.data.intents import load_embedded_intents

    folder.mkdir(parents=True, exist_ok=True)
    n = 2 * per_api
    rows = load_embedded_intents()["test"]
    rows = [rows[i] for i in np.random.default_rng(5).permutation(len(rows))]  # every intent, not just the first
    requests = [Request("/chat", f"chat {i}", row["text"], row["label"]) for i, row in enumerate(rows[:n])]
    requests += [Request("/classify_intent", f"intent {i}", row["text"], row["label"])
                 for i, row in enumerate(rows[n:2 * n])]
    images, labels, _ = medical_synth.generate(n, size=128, seed=11, split="test")
    for i in range(n):
        path = folder / f"image_{i}.png"
        Image.fromarray(images[i]).save(path)
        requests.append(Request("/classify_image", path.name, str(path), medical_synth.CLASSES[int(labels[i])]))
    waves, clip_labels, _ = corpus.load_corpus(embedded_corpus_path())["test"]
    commands = [k for k, label in enumerate(clip_labels) if label in corpus.COMMANDS]
    commands = [commands[i] for i in np.random.default_rng(7).permutation(len(commands))]  # every command, mixed
    for i in range(n):  # a different clip each, padded to its own length: the duration names the clip too
        k = commands[i % len(commands)]
        wave = np.concatenate([waves[k], np.zeros(int((0.1 + 0.05 * i) * audio.SAMPLE_RATE), np.float32)])
        path = audio.write_wav(folder / f"clip_{i}.wav", wave)
        requests.append(Request("/classify_audio", path.name, str(path), clip_labels[k]))
    for s in range(2 * streams):  # two commands with their own gaps, in chunks of its own length: the running
        chunk = int((CHUNK_SECONDS + 0.03 * s) * audio.SAMPLE_RATE)  # `seconds` after each chunk names the session
        a, b = commands[-1 - 2 * s], commands[-2 - 2 * s]
        gap = np.zeros(int((0.3 + 0.1 * s) * audio.SAMPLE_RATE), np.float32)
        wave = np.concatenate([gap, waves[a], gap, waves[b]])
        wave = np.concatenate([wave, np.zeros(-len(wave) % chunk, np.float32)])  # whole chunks only
        paths = [str(audio.write_wav(folder / f"stream_{s}_chunk_{c}.wav", wave[start:start + chunk]))
                 for c, start in enumerate(range(0, len(wave), chunk))]
        requests.append(Request("/stream_audio", f"stream {s}", paths, f"{clip_labels[a]}+{clip_labels[b]}"))
    return requests


def call(client, api: str, payload):
    from gradio_client import handle_file

    if api == "/chat":
        return client.predict(payload, [], api_name=api)
    if api == "/classify_intent":
        return client.predict(payload, api_name=api)
    if api == "/reset_stream":
        return client.predict(api_name=api)
    return client.predict(handle_file(payload), api_name=api)


def answer_of(api: str, output) -> dict:
    """The part of a response that identifies the request's answer."""
    if api == "/chat":
        history, _box, details, _summary = output
        return {"echo": history[-2]["content"], "label": details["label"], "intent": details["intent"],
                "score": details["score"]}
    if api == "/classify_intent":
        return {"label": output["label"], "intent": output["intent"], "scores": output["scores"]}
    if api == "/classify_image":
        scores, overlay, notice, _summary = output
        return {"label": scores["label"], "scores": {c["label"]: c["confidence"] for c in scores["confidences"]},
                "notice": notice, "signature": signature(overlay)}
    if api == "/classify_audio":
        _verdict, result, _plot, _device, _summary = output
        return {"label": result["label"], "command": result["command"], "scores": result["scores"],
                "duration": result["duration"], "windows": result["windows"]}
    if api == "/stream_audio":
        _heard, payload, _device = output
        return {"seconds": payload["seconds"], "detections": payload["detections"]}
    _heard, detections, _device = output  # /reset_stream
    return {"detections": detections}


def signature(image) -> list[int]:
    """An 8 x 8 grey thumbnail of an output image (fetched from the server's file route): a tiny model may give
    near-equal scores to different images, but the Grad-CAM overlay is drawn on the input and tells them apart."""
    import io

    from PIL import Image

    url = image.get("url") if isinstance(image, dict) else None
    if url:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    else:
        data = Path(image["path"] if isinstance(image, dict) else image).read_bytes()
    thumbnail = Image.open(io.BytesIO(data)).convert("L").resize((8, 8), Image.Resampling.BOX)
    return list(thumbnail.getdata())


def mismatch(expected, got) -> str | None:
    """Why `got` is not the answer `expected` (cross-talk or a wrong answer), or None when it matches. Scores (keys
    `score`, `scores`) may differ by SCORE_TOLERANCE; everything else must be equal."""
    if isinstance(expected, dict) and isinstance(got, dict):
        if set(expected) - set(got):
            return f"missing {sorted(set(expected) - set(got))}"
        for key, want in expected.items():
            have = got[key]
            if key == "signature":
                if len(want) != len(have) or max(abs(a - b) for a, b in zip(want, have)) > SIGNATURE_TOLERANCE:
                    return "the overlay is another image's"
            elif key in ("score", "scores"):
                want_d, have_d = (want, have) if isinstance(want, dict) else ({"": want}, {"": have})
                if not isinstance(have_d, dict) or set(want_d) != set(have_d):
                    return f"{key}: {have!r} != {want!r}"
                worst = max((abs(float(want_d[k]) - float(have_d[k])) for k in want_d), default=0.0)
                if worst > SCORE_TOLERANCE:
                    return f"{key} differ by {worst:.4f}"
            else:
                why = mismatch(want, have)
                if why:
                    return f"{key}: {why}"
        return None
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            return f"{len(got)} items != {len(expected)}"
        for i, (want, have) in enumerate(zip(expected, got)):
            why = mismatch(want, have)
            if why:
                return f"[{i}] {why}"
        return None
    return None if expected == got else f"{got!r} != {expected!r}"


def single_answer(client, request: Request):
    """The answer of one request on an idle server (streams: the reset's, then one answer per chunk)."""
    if request.api != "/stream_audio":
        return answer_of(request.api, call(client, request.api, request.payload))
    reset = answer_of("/reset_stream", call(client, "/reset_stream", None))
    return {"reset": reset, "chunks": [answer_of("/stream_audio", call(client, "/stream_audio", chunk))
                                       for chunk in request.payload]}


def select_distinct(requests: list[Request], per_api: int, streams: int) -> tuple[list[Request], int]:
    """Per endpoint, the first inputs whose expected answers all differ (beyond the tolerance) from one another, so
    that a reply sent to the wrong request can never pass as right. Returns them and the number dropped."""
    kept, dropped = [], 0
    for api in APIS:
        want = streams if api == "/stream_audio" else per_api
        mine: list[Request] = []
        for request in (r for r in requests if r.api == api):
            if len(mine) == want:
                break
            if all(mismatch(other.expected, request.expected) for other in mine):
                mine.append(request)
            else:
                dropped += 1
        kept += mine
    return kept, dropped


def is_refusal(err: Exception) -> bool:
    """Gradio's deliberate refusal when the queue is full (max_size reached)."""
    text = str(err).lower()
    return "queue is full" in text or ("queue" in text and "full" in text)


# -- a round ------------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    api: str
    name: str
    seconds: float
    status: str  # ok | error | refused | cross_talk
    detail: str = ""


def timed(client, api: str, payload, name: str, expected) -> Outcome:
    began = time.perf_counter()
    try:
        why = mismatch(expected, answer_of(api, call(client, api, payload)))
        status, detail = ("ok", "") if why is None else ("cross_talk", f"{name}: {why}")
    except Exception as err:  # noqa: BLE001 - every failure is counted and reported
        status = "refused" if is_refusal(err) else "error"
        detail = f"{name}: {type(err).__name__}: {str(err)[:300]}"
    return Outcome(api, name, time.perf_counter() - began, status, detail)


def run_request(client, request: Request) -> list[Outcome]:
    if request.api != "/stream_audio":
        return [timed(client, request.api, request.payload, request.name, request.expected)]
    outcomes = [timed(client, "/reset_stream", None, request.name, request.expected["reset"])]
    for c, (chunk, expected) in enumerate(zip(request.payload, request.expected["chunks"])):
        outcomes.append(timed(client, "/stream_audio", chunk, f"{request.name} chunk {c}", expected))
    return outcomes


def shares(requests: list[Request], threads: int) -> list[list[Request]]:
    """Every thread's share of the inputs, the endpoints interleaved so that each thread gets a mix."""
    by_api = [[r for r in requests if r.api == api] for api in APIS]
    mixed = [group[i] for i in range(max(map(len, by_api))) for group in by_api if i < len(group)]
    return [mixed[i::threads] for i in range(threads)]


def run_round(url: str, requests: list[Request], threads: int, seconds: float) -> list[Outcome]:
    """Every thread works through its share once, then again until `seconds` have passed (0: exactly once)."""
    clients = [make_client(url) for _ in range(threads)]
    work = shares(requests, threads)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    start = threading.Barrier(threads + 1)
    deadline = [0.0]

    def worker(index: int) -> None:
        client, mine = clients[index], []
        start.wait()
        while True:
            for request in work[index]:
                mine += run_request(client, request)
            if time.monotonic() >= deadline[0]:
                break
        with lock:
            outcomes.extend(mine)

    pool = [threading.Thread(target=worker, args=(i,), name=f"load-{i}") for i in range(threads)]
    for t in pool:
        t.start()
    deadline[0] = time.monotonic() + seconds
    start.wait()
    for t in pool:
        t.join()
    for client in clients:
        client.close()
    return outcomes


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summarise(outcomes: list[Outcome], seconds: float) -> dict:
    apis = {}
    for api in APIS:
        mine = [o for o in outcomes if o.api == api]
        ok = [o.seconds for o in mine if o.status == "ok"]
        apis[api] = {
            "tab": APIS[api],
            "requests": len(mine),
            "ok": len(ok),
            "errors": sum(o.status == "error" for o in mine),
            "refused": sum(o.status == "refused" for o in mine),
            "cross_talk": sum(o.status == "cross_talk" for o in mine),
            "p50_ms": None if not ok else round(1000 * percentile(ok, 50), 1),
            "p95_ms": None if not ok else round(1000 * percentile(ok, 95), 1),
            "per_second": round(len(mine) / seconds, 2) if seconds else None,
            "samples": sorted({o.detail for o in mine if o.status != "ok"})[:5],
        }
    return apis


# -- the queue bound (item 3) -------------------------------------------------------------------------------------
def long_clip(folder: Path) -> str:
    """A clip just under the app's 60 s limit (commands in noise): the slowest job the voice tab accepts."""
    import numpy as np

    from fmhub import audio
    from fmhub.data import speech_corpus as corpus
    from fmhub.data.audio_data import embedded_corpus_path

    waves, _, _ = corpus.load_corpus(embedded_corpus_path())["test"]
    wave = np.concatenate(waves[:80])[: int((audio.MAX_SECONDS - 1.0) * audio.SAMPLE_RATE)]
    wave = wave + np.random.default_rng(0).normal(0, 0.01, len(wave)).astype(np.float32)
    return str(audio.write_wav(folder / "long.wav", wave))


def http(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 60.0) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def upload(url: str, path: str) -> str:
    """One file into the server's upload cache (what gradio_client does before each job); returns its server path."""
    boundary = "fmhubloadtest"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{Path(path).name}\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode() + Path(path).read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    status, text = http(url + "gradio_api/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    if status != 200:
        raise RuntimeError(f"upload failed: {status} {text[:200]}")
    return json.loads(text)[0]


def overflow(url: str, short: str, long: str, max_size: int, concurrency: int, extra: int) -> dict:
    """Item 3. `concurrency` slow /classify_audio jobs (gradio_client) take the event's workers; once they run,
    `max_size + extra` jobs of the same event join the queue at once (raw `queue/join` calls from as many threads, the
    clip uploaded once, so the burst is over in well under the slow jobs' time). While the slow jobs run nothing
    leaves the queue, so exactly `max_size` of the burst must be accepted and `extra` refused (HTTP 503, the
    queue-full message), fast. The accepted ones are then served; a last gradio_client job queues behind them."""
    from gradio_client import handle_file
    from gradio_client.utils import Status

    _, text = http(url + "config")
    event = next(d for d in json.loads(text)["dependencies"] if d.get("api_name") == "classify_audio")
    client = make_client(url)
    finished: list[float] = []
    began = time.monotonic()
    blockers = [client.submit(handle_file(long), api_name="/classify_audio") for _ in range(concurrency)]
    for job in blockers:
        job.future.add_done_callback(lambda _future: finished.append(time.monotonic()))
    file = {"path": upload(url, short), "orig_name": Path(short).name, "meta": {"_type": "gradio.FileData"}}
    while not all(job.status().code == Status.PROCESSING or job.done() for job in blockers):
        if time.monotonic() - began > 120:
            raise RuntimeError("the slow jobs did not start within 120 s")
        time.sleep(0.05)
    burst = max_size + extra
    answers: list[tuple[int, str, float]] = []
    lock, start = threading.Lock(), threading.Barrier(burst + 1)

    def join(index: int) -> None:
        body = json.dumps({"data": [file] + [None] * (len(event["inputs"]) - 1), "fn_index": event["id"],
                           "session_hash": f"overflow-{index}", "event_data": None}).encode()
        start.wait()
        sent = time.monotonic()
        status, text = http(url + "gradio_api/queue/join", body, {"Content-Type": "application/json"})
        with lock:
            answers.append((status, text, time.monotonic() - sent))

    pool = [threading.Thread(target=join, args=(i,)) for i in range(burst)]
    for t in pool:
        t.start()
    start.wait()
    fired = time.monotonic()
    for t in pool:
        t.join()
    settled = time.monotonic()
    refused = [s for status, text, s in answers if status == 503 and is_refusal(Exception(text))]
    accepted = sum(status == 200 for status, _, _ in answers)
    samples = {f"{status}: {text[:200]}" for status, text, _ in answers if status != 200}
    errors = burst - accepted - len(refused)
    for job in blockers:
        try:
            job.result(timeout=300)
        except Exception as err:  # noqa: BLE001 - counted
            errors += 1
            samples.add(f"slow job: {type(err).__name__}: {str(err)[:200]}")
    drained = time.monotonic()
    try:  # FIFO within the event: this answers once every accepted job of the burst has been served
        client.predict(handle_file(short), api_name="/classify_audio")
    except Exception as err:  # noqa: BLE001 - counted
        errors += 1
        samples.add(f"after the burst: {type(err).__name__}: {str(err)[:200]}")
    client.close()
    return {
        "max_size": max_size, "concurrency": concurrency, "fired": burst + concurrency,
        "accepted": accepted + concurrency, "refused": len(refused), "errors": errors,
        "expected_accepted": max_size + concurrency, "expected_refused": extra,
        "refusal_max_s": round(max(refused, default=0.0), 3),
        "refusal_p95_s": None if not refused else round(percentile(refused, 95), 3),
        "burst_s": round(settled - fired, 3),
        # the count is exact only while the slow jobs outlast the burst: said here, checked in `checks`
        "slow_jobs_outlasted_burst": bool(finished) and min(finished) > settled,
        "slow_job_s": None if not finished else round(min(finished) - began, 2),
        "accepted_served_s": round(time.monotonic() - drained, 2),
        "samples": sorted(samples)[:3],
    }


def health(url: str, requests: list[Request]) -> dict:
    """After the overflow: one request per endpoint (a whole stream for the streaming pair), each its own answer."""
    client = make_client(url)
    firsts = [next(r for r in requests if r.api == api) for api in APIS if api != "/reset_stream"]
    outcomes = [o for request in firsts for o in run_request(client, request)]
    client.close()
    return {"ok": sum(o.status == "ok" for o in outcomes), "calls": len(outcomes),
            "failures": [o.detail for o in outcomes if o.status != "ok"][:5]}


# -- the whole test -----------------------------------------------------------------------------------------------
def resolve_models(pairs: list[str] | None) -> dict[str, str]:
    """`scenario=folder` pairs (or three folders in tab order); a tab left out uses its cached default."""
    from fmhub.paths import default_model_dir

    models: dict[str, str] = {}
    for i, item in enumerate(pairs or []):
        if "=" in item:
            scenario, folder = item.split("=", 1)
        elif len(pairs) == len(TABS):
            scenario, folder = TABS[i], item
        else:
            raise SystemExit(f"--models: give scenario=folder pairs ({', '.join(TABS)}) or 3 folders in this order")
        if scenario not in TABS:
            raise SystemExit(f"--models: unknown scenario {scenario!r} (expected one of {', '.join(TABS)})")
        models[scenario] = folder
    for scenario in TABS:
        if scenario not in models:
            folder = default_model_dir(scenario)
            if not (folder / "fmhub.json").is_file():
                raise SystemExit(f"no model for {scenario}: the embedded default is not cached in {folder} "
                                 f"(run `fmhub train --scenario {scenario}` or pass --models {scenario}=FOLDER)")
            models[scenario] = str(folder)
    for scenario, folder in models.items():
        if not Path(folder).is_dir():
            raise SystemExit(f"--models: {scenario} folder {folder} does not exist")
    return models


def run(args: argparse.Namespace) -> dict:
    from fmhub.ui.app import CONCURRENCY, QUEUE_MAX_SIZE

    models = resolve_models(args.models)
    workdir = Path(tempfile.mkdtemp(prefix="fmhub-load-"))
    began = time.monotonic()
    candidates = make_inputs(workdir / "inputs", args.inputs, args.threads)
    server = Server(models, workdir)
    report: dict = {
        "command": " ".join([Path(sys.executable).name, "benchmarks/load_test.py", *sys.argv[1:]]),
        "server_command": " ".join(server.command),
        "models": models, "threads": args.threads, "seconds_per_round": args.seconds, "rounds": [],
        "quick": args.quick, "tolerances": {"memory": MEMORY_TOLERANCE, "cache_files": CACHE_TOLERANCE,
                                            "score": SCORE_TOLERANCE, "refusal_s": REFUSAL_BUDGET_S},
    }
    try:
        server.wait_ready()
        report["rss_mb"] = {"started": server.rss_mb()}
        client = make_client(server.url)  # the expected answers: one request at a time, nothing else running
        for request in candidates:
            request.expected = single_answer(client, request)
        client.close()
        requests, report["inputs_dropped_as_indistinct"] = select_distinct(candidates, args.inputs, args.threads)
        report["inputs"] = {api: sum(r.api == api for r in requests) for api in APIS if api != "/reset_stream"}
        report["expected"] = {r.name: {"truth": r.truth, "answer": r.expected} for r in requests}
        report["rss_mb"]["before"] = server.rss_mb()
        report["cache_files"] = {"before": server.cache_files()}
        for number in range(1, args.rounds + 1):
            round_began = time.monotonic()
            outcomes = run_round(server.url, requests, args.threads, args.seconds)
            elapsed = time.monotonic() - round_began
            time.sleep(1.0)  # let the server finish writing what it answered
            report["rounds"].append({"round": number, "seconds": round(elapsed, 1),
                                     "apis": summarise(outcomes, elapsed)})
            report["rss_mb"][f"after_round_{number}"] = server.rss_mb()
            report["cache_files"][f"after_round_{number}"] = server.cache_files()
        short, long = next(r.payload for r in requests if r.api == "/classify_audio"), long_clip(workdir / "inputs")
        for attempt in range(1, 4):  # the count is a test of the bound only if the slow jobs outlasted the burst
            report["overflow"] = dict(overflow(server.url, short, long, QUEUE_MAX_SIZE, CONCURRENCY,
                                               args.overflow_extra), attempt=attempt)
            if report["overflow"]["slow_jobs_outlasted_burst"]:
                break
        report["health_after_overflow"] = health(server.url, requests)
        report["rss_mb"]["after_overflow"] = server.rss_mb()
        report["cache_files"]["after_overflow"] = server.cache_files()
        if server.process.poll() is not None:
            raise RuntimeError(f"the server died during the test:\n{server.log_tail()}")
    finally:
        server.stop()
        report["server_log_tail"] = server.log_tail(2000)
    report["total_seconds"] = round(time.monotonic() - began, 1)
    report["checks"] = checks(report)
    report["passed"] = all(c["passed"] for c in report["checks"].values())
    if report["passed"] and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        report["workdir"] = str(workdir)  # inputs, the server's log and its upload cache, for a look
    return report


def checks(report: dict) -> dict:
    rounds = report["rounds"]
    stats = [s for r in rounds for s in r["apis"].values()]
    rss, cache, flow = report["rss_mb"], report["cache_files"], report["overflow"]
    first, last = "after_round_1", f"after_round_{len(rounds)}"
    growth = (rss[last] - rss[first]) / rss[first] if len(rounds) > 1 else 0.0
    exact = flow["accepted"] == flow["expected_accepted"] and flow["refused"] == flow["expected_refused"]
    errors, cross_talk = sum(s["errors"] for s in stats), sum(s["cross_talk"] for s in stats)
    return {
        "no_unexpected_errors": {"passed": errors == 0, "value": errors},
        "no_cross_talk": {"passed": cross_talk == 0, "value": cross_talk},
        "no_refusals_under_load": {"passed": sum(s["refused"] for s in stats) == 0,
                                   "value": sum(s["refused"] for s in stats), "unit": "(threads < queue size)"},
        "every_endpoint_answered": {"passed": min(s["ok"] for s in stats) > 0, "value": min(s["ok"] for s in stats),
                                    "unit": "ok calls, the least of any endpoint and round"},
        "inputs_distinct": {"passed": all(report["inputs"].values()), "value": report["inputs"]},
        "memory_flat": {"passed": growth <= MEMORY_TOLERANCE, "value": round(100 * growth, 2),
                        "unit": f"% RSS after the last round vs after round 1 (limit {100 * MEMORY_TOLERANCE:g} %)"},
        "cache_flat": {"passed": cache[last] - cache[first] <= CACHE_TOLERANCE, "value": cache[last] - cache[first],
                       "unit": f"files added to the upload cache after round 1 (limit {CACHE_TOLERANCE})"},
        "queue_bound_exact": {"passed": exact and flow["errors"] == 0 and flow["slow_jobs_outlasted_burst"],
                              "value": f"{flow['accepted']} accepted / {flow['refused']} refused of {flow['fired']}",
                              "unit": f"(expected {flow['expected_accepted']} / {flow['expected_refused']})"},
        "queue_refusals_fast": {"passed": flow["refusal_max_s"] <= REFUSAL_BUDGET_S, "value": flow["refusal_max_s"],
                                "unit": f"s, the slowest refusal (limit {REFUSAL_BUDGET_S:g} s)"},
        "healthy_after_overflow": {"passed": report["health_after_overflow"]["ok"]
                                   == report["health_after_overflow"]["calls"],
                                   "value": report["health_after_overflow"]["ok"], "unit": "calls answered right"},
    }


def markdown(report: dict) -> str:
    seconds = report["seconds_per_round"]
    length = f"of {seconds:g} s" if seconds else "of one pass"
    lines = [f"Load test: {report['threads']} threads, {len(report['rounds'])} rounds {length}, distinct inputs "
             f"{report['inputs']} (`{report['command']}`)", "",
             "| round | api (tab) | requests | ok | p50 ms | p95 ms | errors | queue-full refusals | cross-talk |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rounds"]:
        for api, t in r["apis"].items():
            lines.append(f"| {r['round']} | {api} ({t['tab']}) | {t['requests']} | {t['ok']} | {t['p50_ms']} | "
                         f"{t['p95_ms']} | {t['errors']} | {t['refused']} | {t['cross_talk']} |")
    rss, cache = report["rss_mb"], report["cache_files"]
    stages = [k for k in rss if k != "started"]
    lines += ["", "| server | started | " + " | ".join(s.replace("_", " ") for s in stages) + " |",
              "|---|---:|" + "---:|" * len(stages),
              f"| RSS MB | {rss['started']} | " + " | ".join(str(rss[s]) for s in stages) + " |",
              "| upload cache files | - | " + " | ".join(str(cache.get(s, "-")) for s in stages) + " |", ""]
    flow = report["overflow"]
    lines.append(f"Queue overflow (max_size {flow['max_size']}, concurrency {flow['concurrency']}): fired "
                 f"{flow['fired']}, accepted {flow['accepted']}, refused {flow['refused']} (slowest refusal "
                 f"{flow['refusal_max_s']} s), errors {flow['errors']}; burst {flow['burst_s']} s, slow job "
                 f"{flow['slow_job_s']} s\n")
    for name, c in report["checks"].items():
        unit = " " + c["unit"] if "unit" in c else ""
        lines.append(f"- {name}: {'pass' if c['passed'] else 'FAIL'} ({c['value']}{unit})")
    for r in report["rounds"]:
        for api, t in r["apis"].items():
            for sample in t["samples"]:
                lines.append(f"  - round {r['round']} {api}: {sample}")
    for sample in flow["samples"] + report["health_after_overflow"]["failures"]:
        lines.append(f"  - overflow/health: {sample}")
    lines.append(f"\nresult: {'PASSED' if report['passed'] else 'FAILED'} in {report['total_seconds']} s")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", metavar="SCENARIO=FOLDER",
                        help="a model folder per tab (default: the cached embedded defaults under FMHUB_HOME/models)")
    parser.add_argument("--threads", type=int, default=8, help="client threads, a streaming session each (default 8)")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="length of each round; every thread always does its share once (0: exactly once; "
                             "default 60)")
    parser.add_argument("--rounds", type=int, default=2, help="identical rounds (default 2)")
    parser.add_argument("--inputs", type=int, default=12, help="distinct inputs per endpoint (default 12)")
    parser.add_argument("--overflow-extra", type=int, default=8,
                        help="jobs fired beyond what the queue holds, all to be refused (default 8)")
    parser.add_argument("--quick", action="store_true",
                        help="the CI run (tests/test_load.py): 4 threads, 2 rounds of one pass each, 8 inputs per "
                             "endpoint; every check enforced")
    parser.add_argument("--output", help="write the report as JSON here")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (inputs, server log, upload cache); it is always kept on failure")
    args = parser.parse_args(argv)
    if args.quick:
        args.threads, args.seconds, args.inputs = 4, 0.0, 8
    if args.threads < 1 or args.seconds < 0 or args.rounds < 1 or args.inputs < 2 or args.overflow_extra < 1:
        parser.error("--threads, --rounds, --overflow-extra must be positive, --inputs at least 2, --seconds >= 0")
    return args


def main(argv=None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    report = run(args)
    print(markdown(report))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2, default=str))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
