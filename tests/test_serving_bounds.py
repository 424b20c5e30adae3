"""Bounds on what clients can make the server do, against launched apps: the chat history (size, shape, logs), no
server path in anything public, and a model that fails to load (backoff, other tabs unaffected, repair without a
restart). The memory and log checks run the app in its own process (python -c ..., as `python app.py` does)."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from fmhub.ui.app import AppConfig, build_app, launch
from fmhub.ui.customer_service import HISTORY_REFUSED, MAX_HISTORY_BYTES, MAX_HISTORY_TURNS

ROOT = Path(__file__).resolve().parents[1]
SECRET = "fmhub-private-7f3a"  # a directory name that must never reach a page or an API client
MB = 1024 * 1024

_SERVER = """
import logging, sys
from fmhub.ui.app import AppConfig, build_app, launch
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
config = AppConfig(port=int(sys.argv[2]), models={"customer-service": sys.argv[1]}, scenarios=("customer-service",),
                   bootstrap=False)
demo, _ = build_app(config)
launch(demo, config)
"""


def private_copy(source: Path, folder: Path) -> Path:
    """A copy of a tiny model whose recorded backbone and data also name paths under the private directory."""
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("checkpoint-*", "runs", "*.png"))
    record = json.loads((folder / "fmhub.json").read_text())
    record["backbone"] = str(folder.parent / "backbones" / "tiny-bert")
    record["data"] = str(folder.parent / "data" / "intents.csv")
    (folder / "fmhub.json").write_text(json.dumps(record))
    return folder


def leaks(text: str, *folders: Path) -> list[str]:
    """What in `text` gives a server path away: the private directory's name, or any of `folders` in full."""
    found = [SECRET] if SECRET in text else []
    return found + [str(f) for f in folders if str(f) in text]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The chat tab in its own process, its stdout and stderr in one log file."""

    def __init__(self, model: Path, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = workdir / "server.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
                   GRADIO_TEMP_DIR=str(workdir / "gradio-cache"), GRADIO_ANALYTICS_ENABLED="False")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "-c", _SERVER, str(model), str(self.port)], cwd=workdir,
                                        env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(self.url + "gradio_api/info", timeout=5):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("the server did not start:\n" + self.log_path.read_text()[-3000:])

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss / MB

    def log_size(self) -> int:
        time.sleep(0.3)  # let the server finish writing
        return self.log_path.stat().st_size

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


@pytest.fixture(scope="module")
def private_model(tiny_intent_model, tmp_path_factory) -> Path:
    return private_copy(tiny_intent_model, tmp_path_factory.mktemp(SECRET) / "cs-model")


@pytest.fixture(scope="module")
def server(private_model, tmp_path_factory):
    server = Server(private_model, tmp_path_factory.mktemp("server"))
    Client(server.url, verbose=False).predict("hello", [], api_name="/chat")  # model loaded, warm
    yield server
    server.stop()


def post(url: str, body: bytes) -> tuple[int, bytes]:
    host, port = url.split("//")[1].split("/")[0].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", "/" + url.split("/", 3)[3], body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def call_chat(server: Server, message: str, history) -> tuple[str, object]:
    """POST /gradio_api/call/chat, then read its result: ("complete" | "error" | "http <status>", data)."""
    status, body = post(server.url + "gradio_api/call/chat", json.dumps({"data": [message, history]}).encode())
    if status != 200:
        return f"http {status}", body.decode(errors="replace")
    event_id = json.loads(body)["event_id"]
    with urllib.request.urlopen(f"{server.url}gradio_api/call/chat/{event_id}", timeout=30) as response:
        event = None
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: ") and event in ("complete", "error"):
                return event, json.loads(line[len("data: "):])
    raise AssertionError("no result event")


def text_of(message: dict) -> str:
    """A chat message's text, whether its content is a string or Gradio 6's list of parts."""
    content = message["content"]
    return content if isinstance(content, str) else " ".join(str(part.get("text", part)) for part in content)


def long_history(messages: int, text: str = "x" * 140) -> list[dict]:
    return [{"role": ("user", "assistant")[i % 2], "content": f"message {i} {text}"} for i in range(messages)]


# -- 1. the chat history ---------------------------------------------------------------------------------------------
def test_a_16_mb_history_is_refused_within_a_second_and_memory_stays_flat(server):
    body = json.dumps({"data": ["where is my package", long_history(100_000)]}).encode()
    assert len(body) >= 16_000_000
    before = server.rss_mb()
    started = time.perf_counter()
    status, reply = post(server.url + "gradio_api/call/chat", body)
    elapsed = time.perf_counter() - started
    grown = server.rss_mb() - before
    print(f"16 MB history: HTTP {status} in {elapsed * 1000:.0f} ms, {len(reply)} B reply, RSS {grown:+.1f} MB")
    assert status == 413 and b"too large" in reply and len(reply) < 300, (status, reply[:300])
    assert elapsed < 1.0
    assert grown <= 20
    event, data = call_chat(server, "where is my package", [])
    assert event == "complete" and data[0][-1]["role"] == "assistant"  # still healthy


def test_a_long_history_is_trimmed_to_the_last_turns(server):
    history = long_history(5_000)  # about 0.8 MB: under the request cap, so it reaches the handler
    assert 500_000 < len(json.dumps(history)) < 1_000_000
    before = server.rss_mb()
    started = time.perf_counter()
    event, data = call_chat(server, "where is my package", history)
    elapsed = time.perf_counter() - started
    grown = server.rss_mb() - before
    reply_history = data[0]
    size = len(json.dumps(reply_history))
    print(f"5,000-message history: {event} in {elapsed * 1000:.0f} ms, {len(reply_history)} messages "
          f"({size} B) back, RSS {grown:+.1f} MB")
    assert event == "complete" and elapsed < 1.0 and grown <= 20
    assert len(reply_history) == 2 * MAX_HISTORY_TURNS and size < 2 * MAX_HISTORY_BYTES
    assert text_of(reply_history[-2]) == "where is my package"
    assert "message 4999" in text_of(reply_history[-3])  # the newest turns are the ones kept

    # the byte cap: 40 messages of 10 KB each keep only the newest ones that fit in MAX_HISTORY_BYTES
    event, data = call_chat(server, "hi", long_history(40, "y" * 10_000))
    assert event == "complete" and len(json.dumps(data[0])) < MAX_HISTORY_BYTES + 5_000
    # a conversation that goes on and on through gradio_client stays at MAX_HISTORY_TURNS turns
    client, history = Client(server.url, verbose=False), []
    for i in range(MAX_HISTORY_TURNS + 3):
        history, *_ = client.predict(f"question {i}", history, api_name="/chat")
    assert len(history) == 2 * MAX_HISTORY_TURNS and text_of(history[0]) == "question 3"


def test_malformed_histories_are_refused_with_a_short_message_and_log_little(server):
    malformed = [{"content": 12345, "bad": "y" * 10} for _ in range(90_000)]  # about 2.7 MB
    assert len(json.dumps(malformed)) >= 2_700_000
    before = server.log_size()
    started = time.perf_counter()
    event, data = call_chat(server, "hi", malformed)
    assert event == "http 413" and time.perf_counter() - started < 1.0, (event, str(data)[:300])
    client = Client(server.url, verbose=False)
    # under the request cap, so these reach the handler: each refused with one short message
    for history in ([{"content": 12345, "bad": "y" * 10}] * 20_000, ["not a message"] * 50_000, "x" * 500_000,
                    [{"role": "user", "content": {"nested": list(range(50))}}] * 3_000):
        started = time.perf_counter()
        with pytest.raises(AppError) as err:
            client.predict("hi", history, api_name="/chat")
        assert time.perf_counter() - started < 1.0
        assert HISTORY_REFUSED in str(err.value) and len(str(err.value)) < 400, str(err.value)[:400]
    logged = server.log_size() - before
    print(f"malformed histories (2.7 MB + 4 under 1 MB): {logged} B of server log")
    assert logged < 10_000, server.log_path.read_text()[-3000:]
    event, data = call_chat(server, "where is my package", [])
    assert event == "complete"


# -- 2. no server path in anything public -----------------------------------------------------------------------------
def test_no_reply_summary_or_page_holds_a_server_path(server, private_model, tiny_intent_model):
    backbone = Path(json.loads((tiny_intent_model / "fmhub.json").read_text())["backbone"])  # a server folder too
    client = Client(server.url, verbose=False)
    texts = []
    for path in ("config", "gradio_api/info"):
        with urllib.request.urlopen(server.url + path, timeout=30) as response:
            texts.append(response.read().decode())
    history, _, details, summary = client.predict("where is my package", [], api_name="/chat")
    texts += [json.dumps(history), json.dumps(details), summary]
    assert "**Model:** cs-model (backbone `tiny-bert`) · **data:** intents.csv" in summary, summary
    texts.append(json.dumps(client.predict("I want to talk to a human", api_name="/classify_intent")))
    for text in texts:
        assert not leaks(text, private_model, backbone, private_model.parent), leaks(text, private_model, backbone)


def test_public_text_scrubs_paths_but_not_urls():
    from fmhub.ui.common import public_model_name, public_text

    assert public_text("cannot load the model in /srv/models/cs-v2: damaged") == (
        "cannot load the model in cs-v2: damaged")
    assert public_text("model '/srv/x/y/' and C:\\Users\\me\\m2 and ~/models/m3") == "model 'y' and m2 and m3"
    assert public_text("see https://huggingface.co/user/name or http://127.0.0.1:8080/api") == (
        "see https://huggingface.co/user/name or http://127.0.0.1:8080/api")
    assert public_text("token hf_abcdefghijkl leaked") == "token hf_*** leaked"
    assert public_model_name("user/name") == "user/name" and public_model_name("/srv/models/cs/") == "cs"


# -- 3. a model that fails to load ----------------------------------------------------------------------------------
def sample_image(folder: Path) -> Path:
    from PIL import Image

    from fmhub.data import medical_synth

    images, _, _ = medical_synth.generate(2, size=96, seed=3, split="test")
    Image.fromarray(images[0]).save(folder / "sample.png")
    return folder / "sample.png"


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


@pytest.fixture
def two_tab_app(request, tmp_path):
    """The chat tab (model chosen by the test) and the medical tab, launched in this process."""
    apps = []

    def start(chat_model: str, image_model: Path):
        config = AppConfig(port=None, models={"customer-service": chat_model, "medical-image": str(image_model)},
                           scenarios=("customer-service", "medical-image"), bootstrap=False)
        demo, slots = build_app(config)
        launch(demo, config, prevent_thread_lock=True)
        apps.append(demo)
        return demo, slots, Client(demo.local_url, verbose=False)

    yield start
    for demo in apps:
        demo.close()


def test_a_damaged_model_backs_off_other_tabs_keep_answering_and_a_repair_loads(
        two_tab_app, tiny_intent_model, tiny_image_model, tmp_path, monkeypatch):
    from fmhub.data import intents
    from fmhub.ui import models

    monkeypatch.setattr(models, "REFUSALS_PER_SECOND", 50.0)  # the back-off is tested here, the pacing below
    folder = private_copy(tiny_intent_model, tmp_path / SECRET / "cs-damaged")
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    demo, slots, client = two_tab_app(str(folder), tiny_image_model)
    slot, image = slots["customer-service"], handle_file(str(sample_image(tmp_path)))
    client.predict(image, api_name="/classify_image")  # the image model loaded
    baseline = statistics.median(timed(lambda: client.predict(image, api_name="/classify_image")) for _ in range(8))

    replies, during, lock, own = [], [], threading.Lock(), threading.local()

    def chat(i: int):
        if not hasattr(own, "client"):  # one client per thread: a gradio_client Client is not made for sharing
            own.client = Client(demo.local_url, verbose=False)
        started = time.perf_counter()
        out = own.client.predict(f"where is my package {i}", [], api_name="/chat")
        with lock:
            replies.append((time.perf_counter() - started, out))

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(chat, i) for i in range(50)]
        while not during or not all(f.done() for f in futures):
            during.append(timed(lambda: client.predict(image, api_name="/classify_image")))
        for f in futures:
            f.result()
    elapsed = time.monotonic() - started
    with pytest.raises(AppError) as err:
        client.predict("hello", api_name="/classify_intent")
    print(f"damaged model: 50 chat requests in {elapsed:.1f} s, {slot.load_attempts} load attempt(s), slowest reply "
          f"{max(t for t, _ in replies) * 1000:.0f} ms; image tab p50 {baseline * 1000:.0f} ms before, "
          f"{statistics.median(during) * 1000:.0f} ms during ({len(during)} calls)")
    assert slot.load_attempts <= 2 * max(1.0, elapsed / 60) and slot.load_attempts == 1
    assert during  # the medical tab kept answering through the storm (its latency is printed, not judged here:
    # timings belong in benchmarks/, and this 2-core machine's queue runs two events at a time)
    for _, (history, _, details, summary) in replies:
        answer = text_of(history[-1])
        assert "failed to load" in answer and "damaged" in answer and "next attempt in" in answer, answer
        assert details is None and "failed to load" in summary
        assert not leaks(json.dumps(history) + summary, folder), answer
    assert "failed to load" in str(err.value) and not leaks(str(err.value), folder), str(err.value)

    (folder / "model.safetensors").write_bytes(weights)  # repaired
    _, _, details, _ = client.predict("where is my package", [], api_name="/chat")
    assert details is None and slot.load_attempts == 1  # still within the backoff: not tried
    monkeypatch.setattr(models, "LOAD_RETRY_SECONDS", 0.5)
    time.sleep(0.6)
    history, _, details, summary = client.predict("where is my package", [], api_name="/chat")
    assert details["intent"] in intents.INTENTS and slot.load_attempts == 2, history
    assert "failed" not in summary and "cs-damaged" in summary and not leaks(summary, folder), summary


def test_refusals_are_paced_and_a_refused_request_never_waits_long(tmp_path, monkeypatch):
    """A slot whose model failed to load refuses at most REFUSALS_PER_SECOND requests a second, whoever asks: the
    first refusal comes at once, the others wait their turn (at most MAX_REFUSAL_WAIT_SECONDS each), no load is
    tried again within the back-off, and the wait holds no lock (status() answers meanwhile)."""
    from fmhub.ui import models

    monkeypatch.setattr(models, "REFUSALS_PER_SECOND", 10.0)
    monkeypatch.setattr(models, "MAX_REFUSAL_WAIT_SECONDS", 0.35)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "fmhub.json").write_text("{ not json")
    slot = models.ModelSlot("customer-service", str(damaged))
    started = time.monotonic()
    with pytest.raises(models.ModelLoadFailed):
        slot.get()  # the load attempt itself
    refused_at, lock = [], threading.Lock()

    def ask() -> None:
        asked = time.monotonic()
        with pytest.raises(models.ModelLoadFailed, match="failed to load"):
            slot.get()
        with lock:
            refused_at.append((asked, time.monotonic()))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    status_started = time.monotonic()
    assert slot.status().startswith("failed to load")  # no lock held by the waiting refusals
    status_seconds = time.monotonic() - status_started
    for t in threads:
        t.join()
    first_asked = min(asked for asked, _ in refused_at)
    ends = sorted(end - first_asked for _, end in refused_at)
    waits = [end - asked for asked, end in refused_at]
    print(f"6 refusals after the failed load, at {[round(e, 3) for e in ends]} s; waits "
          f"{[round(w, 3) for w in sorted(waits)]} s; status() {status_seconds * 1000:.1f} ms")
    assert slot.load_attempts == 1
    assert min(waits) < 0.1  # the first refusal at once
    # turns are reserved 0.1 s apart, at most 0.35 s ahead: the k-th refusal comes 0.1 k s after the first request
    # at the earliest (k < 4); the 5th and 6th wait the cap, not 0.4 and 0.5 s
    assert all(end >= 0.1 * k - 1e-3 for k, end in enumerate(ends[:4])), ends
    assert max(waits) < 0.35 + 1.0 and time.monotonic() - started < 10


def test_the_queue_keeps_no_monitoring_summary():
    """Gradio recomputes a pandas summary of its last 10,000 events after every event, for a monitoring page the
    app keeps off; quiet_idle_queue stops that (12 % of the server's busy time for cheap requests)."""
    import gradio as gr

    from fmhub.ui.app import ANALYTICS_EVENTS_KEPT, quiet_idle_queue

    with gr.Blocks() as demo:
        box = gr.Textbox()
        box.submit(lambda text: text, box, box, api_name="echo")
    demo.queue()
    quiet_idle_queue(demo)
    queue = demo._queue
    assert queue.ANALYTICS_MAX_EVENTS == ANALYTICS_EVENTS_KEPT and queue.ANAYLTICS_CACHE_FREQUENCY == sys.maxsize
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        assert [client.predict(f"hello {i}", api_name="/echo") for i in range(3)] == [f"hello {i}" for i in range(3)]
        assert queue.cached_event_analytics_summary == {"functions": {}} and len(queue.event_analytics) <= 3
    finally:
        demo.close()


def test_a_slow_download_blocks_neither_the_other_tab_nor_its_own_later_requests(
        two_tab_app, tiny_intent_model, tiny_image_model, tmp_path, monkeypatch):
    """While the chat model downloads (slowly), the medical tab loads and answers, and a second chat request waits
    for that one download instead of starting another."""
    from fmhub import hub

    folder = private_copy(tiny_intent_model, tmp_path / SECRET / "cs-hub")
    image_model = tmp_path / "mi-model"  # a path of its own: not in the loaded-model cache yet
    shutil.copytree(tiny_image_model, image_model, ignore=shutil.ignore_patterns("checkpoint-*", "runs"))
    downloads = []

    def slow_download(repo_id: str, revision=None) -> Path:
        downloads.append(repo_id)
        time.sleep(4)
        return folder

    monkeypatch.setattr(hub, "download_model", slow_download)
    demo, slots, client = two_tab_app("fmhub-test/cs-slow", image_model)
    image = handle_file(str(sample_image(tmp_path)))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.predict, "where is my package", [], api_name="/chat")
        time.sleep(0.5)
        second = pool.submit(client.predict, "I was charged twice", [], api_name="/chat")
        image_s = timed(lambda: client.predict(image, api_name="/classify_image"))  # loads the image model too
        answers = [first.result(timeout=60), second.result(timeout=60)]
    print(f"slow download: image tab answered in {image_s * 1000:.0f} ms (first load) during a 4 s download; "
          f"{len(downloads)} download(s) for 2 chat requests")
    assert image_s < 3.0 and downloads == ["fmhub-test/cs-slow"]
    for _, _, details, summary in answers:
        assert details is not None and "**Model:** fmhub-test/cs-slow" in summary and not leaks(summary, folder)


def test_request_size_limit_counts_bodies_sent_without_a_length():
    """A chunked body (no Content-Length) is counted as it arrives: over the limit -> 413, the app never called;
    under it -> the app gets every byte. Uploads are left to Gradio's own cap."""
    import asyncio

    from fmhub.ui.app import REQUEST_TOO_LARGE, RequestSizeLimit

    def run(path: str, chunks: list[bytes], headers=()) -> tuple[list[dict], bytes | None]:
        seen, sent = [], []

        async def app(scope, receive, send):
            body, more = b"", True
            while more:
                message = await receive()
                body, more = body + message.get("body", b""), message.get("more_body", False)
            seen.append(body)

        async def receive():
            chunk = chunks.pop(0) if chunks else b""
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers)}
        asyncio.run(RequestSizeLimit(app, max_bytes=1000)(scope, receive, send))
        return sent, seen[0] if seen else None

    sent, seen = run("/gradio_api/queue/join", [b"x" * 400] * 5)
    assert seen is None and sent[0]["status"] == 413 and REQUEST_TOO_LARGE.encode() in sent[1]["body"]
    sent, seen = run("/gradio_api/queue/join", [b"x" * 400] * 2)
    assert sent == [] and seen == b"x" * 800
    sent, seen = run("/gradio_api/call/chat", [b"y" * 10], headers=[(b"content-length", b"5000")])
    assert seen is None and sent[0]["status"] == 413
    sent, seen = run("/gradio_api/upload", [b"z" * 400] * 5)
    assert seen == b"z" * 2000  # multipart uploads: Gradio's max_file_size applies


_HUB_DOWN = """
import concurrent.futures, json, sys, threading, time
from gradio_client import Client, handle_file
from fmhub.ui import models
from fmhub.ui.app import AppConfig, build_app, launch
models.REFUSALS_PER_SECOND = 50.0  # the back-off is tested here; the pacing: test_refusals_are_paced...
config = AppConfig(port=None, models={"customer-service": "tester/intents", "medical-image": sys.argv[1]},
                   scenarios=("customer-service", "medical-image"), bootstrap=False)
demo, slots = build_app(config)
launch(demo, config, prevent_thread_lock=True)
own = threading.local()
def client():
    if not hasattr(own, "client"):
        own.client = Client(demo.local_url, verbose=False, analytics_enabled=False)
    return own.client
def chat(i):
    history = client().predict(f"where is my package {i}", [], api_name="/chat")[0]
    content = history[-1]["content"]
    return content if isinstance(content, str) else " ".join(str(p.get("text", p)) for p in content)
def image_call():
    t0 = time.perf_counter()
    out = client().predict(handle_file(sys.argv[2]), api_name="/classify_image")
    return time.perf_counter() - t0, out
def p95(values):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
image_call()  # loads the image model
baseline = [image_call()[0] for _ in range(20)]
started = time.monotonic()
with concurrent.futures.ThreadPoolExecutor(5) as pool:
    futures = [pool.submit(chat, i) for i in range(50)]
    during = []
    while not all(f.done() for f in futures) or len(during) < 20:
        seconds, image = image_call()
        during.append(seconds)
    answers = [f.result() for f in futures]
elapsed = time.monotonic() - started
print(json.dumps({"attempts": slots["customer-service"].load_attempts, "seconds": elapsed, "answers": answers,
                  "image": str(image[1])[:200], "image_p95_before": p95(baseline), "image_p95_during": p95(during)}))
demo.close()
"""


def test_a_hub_answering_503_costs_at_most_two_load_attempts_a_minute(tiny_image_model, tmp_path):
    """The chat model is a Hub id and the Hub answers every request with 503: 50 chat requests from 5 threads make
    at most one load attempt per 30 s back-off, each reply says the model failed to load, and the medical tab (a
    local folder) still answers."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from hub_server import LocalHub

    with LocalHub() as hub:
        hub.fail_next(10**6, status=503)
        env = {**os.environ, **hub.client_env(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "0"}
        done = subprocess.run([sys.executable, "-c", _HUB_DOWN, str(tiny_image_model), str(sample_image(tmp_path))],
                              env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith('{"attempts"')]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(lines[-1])
    # the medical tab's latency is printed (timings are judged in benchmarks/, not here)
    print(f"Hub down: 50 chat requests in {report['seconds']:.1f} s, {report['attempts']} load attempt(s); medical "
          f"tab p95 {report['image_p95_before'] * 1000:.0f} ms before, {report['image_p95_during'] * 1000:.0f} ms "
          "during")
    assert 1 <= report["attempts"] <= 2 * max(1.0, report["seconds"] / 60)
    assert all("failed to load" in a or "not ready" in a for a in report["answers"]), report["answers"][:3]
    assert any("failed to load" in a for a in report["answers"])
    assert not any(str(tmp_path) in a for a in report["answers"])
    assert report["image"]  # the other tab answered
