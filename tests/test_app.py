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
