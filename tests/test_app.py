"""The hub app launched for real (Gradio server on 127.0.0.1) and driven with gradio_client."""

from __future__ import annotations

import pytest
from gradio_client import Client

from fmhub.data import intents
from fmhub.ui.app import AppConfig, build_app, launch


@pytest.fixture(scope="module")
def app_url(tiny_intent_model):
    config = AppConfig(
        port=0, models={"customer-service": str(tiny_intent_model)}, scenarios=("customer-service",), bootstrap=False
    )
    config.port = None  # let Gradio pick a free port
    demo, slots = build_app(config)
    launch(demo, config, prevent_thread_lock=True)
    yield demo.local_url
    demo.close()


def test_idle_queue_polls_gently(tiny_intent_model):
    """Gradio's idle queue polls every 1 ms (~10 % of a core); the app makes it 10 ms, keeping the CPU for models."""
    config = AppConfig(models={"customer-service": str(tiny_intent_model)}, scenarios=("customer-service",),
                       bootstrap=False)
    demo, _ = build_app(config)
    assert demo._queue.sleep_when_free >= 0.01
    assert demo._queue.progress_update_sleep_when_free >= 0.05


def test_chat_round_trip(app_url):
    client = Client(app_url, verbose=False)
    history, cleared, details, summary = client.predict("where is my package", [], api_name="/chat")
    assert cleared == ""
    assert history[0]["role"] == "user" and history[-1]["role"] == "assistant"
    reply = history[-1]["content"]
    reply_text = reply if isinstance(reply, str) else str(reply)
    assert "intent" in reply_text or "out of scope" in reply_text
    assert details["intent"] in intents.INTENTS
    assert "Model:" in summary


def test_classify_api_returns_the_prediction_contract(app_url):
    client = Client(app_url, verbose=False)
    result = client.predict("I want to talk to a human", api_name="/classify_intent")
    assert {"label", "score", "scores", "answer", "handoff", "intent"} <= set(result)
    assert set(result["scores"]) == set(intents.INTENTS)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "x" * 100_000, "a\x00b", "🙂" * 50, "مرحبا"],
    ids=["empty", "spaces", "100k", "nul", "emoji", "rtl"],
)
def test_bad_text_over_the_api_gets_a_reply(app_url, text):
    client = Client(app_url, verbose=False)
    history, _, _, _ = client.predict(text, [], api_name="/chat")
    assert history[-1]["role"] == "assistant" and history[-1]["content"]


# -- first run: the background worker that fine-tunes missing defaults --------------------------------------------
_FAKE_CHILD = """
import json, os, sys, time
from pathlib import Path
scenario = sys.argv[1]
if scenario == "voice-command":
    print("error the speech corpus could not be built", flush=True)
    sys.exit(2)
if scenario == "medical-image":
    sys.exit(9)  # died without a word (e.g. killed for memory)
for fraction in (0.25, 0.5):
    print(f"progress {fraction}", flush=True)
    time.sleep(0.3)
print("epoch 1: accuracy=0.9", flush=True)
folder = Path(os.environ["FMHUB_HOME"]) / "models" / scenario
folder.mkdir(parents=True)
(folder / "fmhub.json").write_text(json.dumps({"scenario": scenario}))
"""


def test_first_run_worker_reports_progress_and_failures(tmp_path, monkeypatch, capsys):
    """The worker runs each missing default in a child process, shows its progress in the tab's status, and turns a
    clear failure into the tab's message and a silent crash into a generic one; the server side never raises."""
    import sys
    import time

    from fmhub.ui.models import ModelSlot, _Bootstrap

    monkeypatch.setenv("FMHUB_HOME", str(tmp_path))
    script = tmp_path / "child.py"
    script.write_text(_FAKE_CHILD)
    worker = _Bootstrap(command=lambda scenario: [sys.executable, str(script), scenario])
    slots = {s: ModelSlot(s) for s in ("customer-service", "medical-image", "voice-command")}
    for slot in slots.values():
        worker.request(slot)
        worker.request(slot)  # asking twice queues it once
    assert slots["customer-service"].status().startswith("preparing the model, ")
    seen = set()
    deadline = time.time() + 60
    while any(s.preparing for s in slots.values()) and time.time() < deadline:
        seen.add(slots["customer-service"].fraction)
        time.sleep(0.05)
    assert not any(s.preparing for s in slots.values())
    assert {0.25, 0.5} & seen  # progress arrived while the child ran
    cs = slots["customer-service"]
    assert cs.cached() and cs.fraction == 1.0 and cs.error is None
    assert cs.status() == "not loaded yet (loads on first use)"
    assert slots["voice-command"].status() == "error: the speech corpus could not be built"
    assert slots["medical-image"].status() == "error: preparing the model failed; see the server console"
    assert "epoch 1: accuracy=0.9" in capsys.readouterr().out  # the child's own output reaches the console


def test_malloc_arenas_are_capped_unless_the_user_chose(monkeypatch):
    """Under load Gradio's thread pool made glibc grow one malloc arena per thread (memory rising every round)."""
    import sys

    from fmhub.ui.app import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # the user's setting wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert limit_malloc_arenas() is sys.platform.startswith("linux")
