"""Server-side micro-batching: concurrent predict() calls merge; each caller gets its own results and errors."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from fmhub.errors import FmhubError
from fmhub.predictors.base import MicroBatcher
from fmhub.serving import load_predictor


class Recording:
    """A predict function that records each call; `delay` lets requests pile up behind the running call."""

    def __init__(self, delay: float = 0.05):
        self.calls: list[tuple[list, dict]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, items, **options):
        with self.lock:
            self.calls.append((list(items), dict(options)))
        time.sleep(self.delay)
        if "bad" in items:
            raise ValueError("bad input")
        return [{"item": x, "options": dict(options)} for x in items]


def call_together(fn, arguments: list[tuple[list, dict]]) -> list:
    """Call fn(items, **options) for each argument from its own thread, all released at once; results or errors."""
    barrier = threading.Barrier(len(arguments))
    out: list = [None] * len(arguments)

    def worker(i: int) -> None:
        items, options = arguments[i]
        barrier.wait()
        try:
            out[i] = fn(items, **options)
        except Exception as err:
            out[i] = err

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(arguments))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return out


def test_concurrent_calls_are_merged_and_each_caller_gets_its_own_results():
    fn = Recording()
    batcher = MicroBatcher(fn, max_items=32)
    arguments = [([f"r{i}-a", f"r{i}-b"], {}) for i in range(8)]
    results = call_together(batcher, arguments)
    for (items, _), result in zip(arguments, results):
        assert [r["item"] for r in result] == items
    assert len(fn.calls) < 8  # requests queued behind the first call ran together
    assert max(len(items) for items, _ in fn.calls) >= 4
    assert batcher.requests == 8 and batcher.batches == len(fn.calls)


def test_a_lone_call_runs_at_once_and_alone():
    fn = Recording(delay=0.0)
    batcher = MicroBatcher(fn, max_wait_s=0.5)
    started = time.perf_counter()
    assert batcher(["x"]) == [{"item": "x", "options": {}}]
    assert time.perf_counter() - started < 0.25  # no waiting for company that is not coming
    assert fn.calls == [(["x"], {})]


def test_a_bad_request_fails_alone():
    fn = Recording()
    batcher = MicroBatcher(fn)
    arguments = [(["ok-0"], {}), (["ok-1"], {}), (["bad"], {}), (["ok-2"], {}), (["ok-3"], {})]
    results = call_together(batcher, arguments)
    assert isinstance(results[2], ValueError)
    for (items, _), result in zip(arguments, results):
        if items != ["bad"]:
            assert [r["item"] for r in result] == items


def test_calls_with_different_options_are_not_merged_and_the_size_is_bounded():
    fn = Recording()
    batcher = MicroBatcher(fn, max_items=4)
    arguments = [([f"g{i}"], {"gradcam": i % 2 == 0}) for i in range(10)]
    results = call_together(batcher, arguments)
    for (items, options), result in zip(arguments, results):
        assert result == [{"item": items[0], "options": options}]
    for items, options in fn.calls:
        assert len(items) <= 4
        assert all((int(x[1:]) % 2 == 0) == options["gradcam"] for x in items)


@pytest.mark.slow
def test_text_predictor_batches_without_cross_talk(tiny_intent_model):
    from fmhub.registry import get_scenario

    batched = load_predictor("customer-service", str(tiny_intent_model))
    assert isinstance(batched.__dict__.get("predict"), MicroBatcher)
    alone = get_scenario("customer-service").predictor(tiny_intent_model)  # no micro-batching
    texts = ["where is my package", "hi", "I was charged twice for the same order and nobody answers my emails",
             "cancel it", "I want to talk to a real person", "what's the capital of Australia?", "thanks", "bye"]
    arguments = [([t], {}) for t in texts] + [([12345], {})]  # not text: an error for that caller only
    results = call_together(batched.predict, arguments)
    assert isinstance(results[-1], FmhubError)
    for text, result in zip(texts, results):
        expected = alone.predict([text])[0]
        assert result[0]["label"] == expected["label"] and result[0]["answer"] == expected["answer"]
        got = np.array([result[0]["scores"][k] for k in expected["scores"]])
        assert np.allclose(got, list(expected["scores"].values()), atol=1e-5)


@pytest.mark.slow
def test_image_predictor_batches_without_cross_talk(tiny_image_model):
    from fmhub.registry import get_scenario

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40 + 8 * i, 48, 3), dtype=np.uint8) for i in range(6)]
    batched = load_predictor("medical-image", str(tiny_image_model))
    alone = get_scenario("medical-image").predictor(tiny_image_model)
    results = call_together(batched.predict, [([im], {}) for im in images] + [([b""], {})])
    assert results[-1][0]["label"] is None and "empty" in results[-1][0]["error"]  # per-item error, others fine
    for image, result in zip(images, results):
        expected = alone.predict([image])[0]
        assert result[0]["label"] == expected["label"]
        assert np.allclose(list(result[0]["scores"].values()), list(expected["scores"].values()), atol=1e-5)
