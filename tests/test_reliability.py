"""RELIABILITY.md "App surface" checks against a launched app (raw HTTP and gradio_client on 127.0.0.1)."""

from __future__ import annotations

import concurrent.futures
import time
import urllib.error
import urllib.request

import pytest
from gradio_client import Client

from fmhub.ui.app import AppConfig, build_app, launch


@pytest.fixture(scope="module")
def app(tiny_intent_model):
    config = AppConfig(port=None, models={"customer-service": str(tiny_intent_model)},
                       scenarios=("customer-service",), bootstrap=False, queue_size=4, concurrency=1)
    demo, slots = build_app(config)
    launch(demo, config, prevent_thread_lock=True)
    yield demo, slots
    demo.close()


def http(url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.mark.parametrize("path", [
    "/gradio_api/file=/etc/passwd", "/gradio_api/file=../../../../etc/passwd",
    "/gradio_api/file=%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/gradio_api/file=/root/.bashrc",
    "/gradio_api/file=.git/config", "/file=/etc/passwd",
])
def test_file_route_never_serves_system_files(app, path):
    status, _, body = http(app[0].local_url.rstrip("/") + path)
    assert status in (400, 403, 404), status
    assert b"root:" not in body and b"[core]" not in body


def test_model_folder_is_not_served(app, tiny_intent_model):
    url = f"{app[0].local_url.rstrip('/')}/gradio_api/file={tiny_intent_model}/config.json"
    status, _, body = http(url)
    assert status in (403, 404) and b"id2label" not in body


def test_rest_route_that_bypasses_the_queue_is_closed(app):
    status, _, _ = http(app[0].local_url.rstrip("/") + "/gradio_api/api/chat", "POST",
                        b'{"data": ["hi", []]}', {"Content-Type": "application/json"})
    assert status == 404


def test_upload_cap(app):
    url = app[0].local_url.rstrip("/") + "/gradio_api/upload"

    def upload(size: int) -> int:
        boundary = "fmhubboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.bin\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + b"\0" * size + \
            f"\r\n--{boundary}--\r\n".encode()
        status, _, _ = http(url, "POST", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return status

    assert upload(9 * 1024 * 1024) == 200
    assert upload(11 * 1024 * 1024) == 413


def test_cors_is_not_granted_to_other_origins_and_monitoring_is_off(app):
    base = app[0].local_url.rstrip("/")
    _, headers, _ = http(base + "/gradio_api/info", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in {k.lower() for k in headers}
    status, _, _ = http(base + "/monitoring")
    assert status in (403, 404)
    status, _, _ = http(base + "/gradio_api/runs")
    assert status == 404


def test_errors_reach_clients_as_a_friendly_message_only(app):
    demo, slots = app
    slot = slots["customer-service"]
    original = slot.get

    def broken():
        raise RuntimeError("failed reading /srv/secret/model.bin with token hf_abcdefghijklmnop")

    slot.get = broken
    try:
        client = Client(demo.local_url, verbose=False)
        with pytest.raises(Exception) as err:
            client.predict("hello", api_name="/classify_intent")
        text = str(err.value)
        assert "secret" not in text and "hf_abc" not in text
        assert "went wrong" in text
    finally:
        slot.get = original


def test_queue_bound_refuses_the_excess_and_stays_healthy(app):
    demo, slots = app
    slot = slots["customer-service"]
    original = slot.get

    def slow():
        time.sleep(1.5)
        return original()

    slot.get = slow
    try:
        client = Client(demo.local_url, verbose=False)
        jobs = [client.submit("where is my order", api_name="/classify_intent") for _ in range(12)]
        outcomes = {"ok": 0, "refused": 0}
        started = time.perf_counter()
        for job in jobs:
            try:
                job.result(timeout=60)
                outcomes["ok"] += 1
            except Exception as err:  # gradio_client reports a full queue as an error
                assert "queue" in str(err).lower() or "full" in str(err).lower(), err
                outcomes["refused"] += 1
        assert outcomes["refused"] >= 1, outcomes  # max_size 4 + concurrency 1 < 12 at once
        assert outcomes["ok"] >= 1
        assert time.perf_counter() - started < 60
    finally:
        slot.get = original
    # still healthy afterwards
    result = Client(demo.local_url, verbose=False).predict("hello", api_name="/classify_intent")
    assert "label" in result


def test_parallel_calls_never_exceed_the_concurrency_limit(app):
    demo, slots = app
    slot = slots["customer-service"]
    original, active, peak = slot.get, [0], [0]

    def counting():
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        time.sleep(0.3)
        active[0] -= 1
        return original()

    slot.get = counting
    try:
        client = Client(demo.local_url, verbose=False)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: client.predict("hi", api_name="/classify_intent"), range(4)))
        assert peak[0] == 1
    finally:
        slot.get = original
