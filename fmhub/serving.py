"""Predictors: load a saved model once, validate input, predict batches. Used by the app, the CLI and Spaces."""

from __future__ import annotations

import json
import re
import threading
import time
import unicodedata
from collections import deque
from pathlib import Path

import numpy as np
import torch

from fmhub.errors import FmhubError

MAX_TEXT_CHARS = 2000  # server-side cap before tokenization; the tokenizer also truncates to the model maximum
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")

# server-side micro-batching (see MicroBatcher): at most this many items per merged call, and how long a batch may wait
# for more requests once concurrent traffic has been seen (a lone request never waits)
MICRO_BATCH_MAX_ITEMS = 32
MICRO_BATCH_MAX_WAIT_S = 0.003
# modalities whose predict() runs one forward pass for the whole list, so merged calls are cheaper than separate ones;
# the voice predictor classifies clip by clip (merging would only make the first callers wait for the last)
MICRO_BATCHED_MODALITIES = ("text", "image")

HANDOFF_MESSAGE = (
    "I'm not sure I can help with that here, so I'm passing you to a human colleague. "
    "Someone from our support team will reply in this chat shortly."
)


def clean_text(text) -> str:
    """Printable, valid UTF-8, at most MAX_TEXT_CHARS. Lone surrogates and control characters are dropped."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise FmhubError("the message must be text")
    text = text[: MAX_TEXT_CHARS * 2]
    text = text.encode("utf-8", "ignore").decode("utf-8")  # drops lone surrogates
    text = unicodedata.normalize("NFC", _CONTROL.sub(" ", text))
    return " ".join(text.split())[:MAX_TEXT_CHARS]


def load_checked(scenario, folder: Path):
    """`scenario.load_model(folder)`, with one clear line for damaged or unsafe weight files, and NaN/Inf weights
    refused (RELIABILITY.md items 11-12)."""
    import pickle

    from safetensors import SafetensorError

    try:
        model, processor = scenario.load_model(folder)
    except SafetensorError as err:
        reason = " ".join(str(err).split())
        raise FmhubError(
            f"cannot load the model in {folder}: model.safetensors is damaged or truncated ({reason})"
        ) from None
    except (pickle.UnpicklingError, RuntimeError) as err:
        if not isinstance(err, pickle.UnpicklingError) and "weights_only" not in str(err):
            raise
        raise FmhubError(f"cannot load the model in {folder}: its weights are a pickle that is not plain tensors "
                         "(refused, nothing in it was run); save models as safetensors") from None
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FmhubError(f"refusing to load the model in {folder}: weight {name} holds NaN/Inf values")
    return model, processor


class Predictor:
    """Base class: `predict(items) -> list[dict]` with label, score and scores per item."""

    scenario: str

    def __init__(self, folder: Path, scenario):
        self.folder = Path(folder)
        self.scenario_obj = scenario
        self.scenario = scenario.name
        extras_path = self.folder / "fmhub.json"
        self.extras = json.loads(extras_path.read_text()) if extras_path.is_file() else {}
        self.model, self.processor = load_checked(scenario, self.folder)
        self.label_names = self.extras.get("label_names") or [
            self.model.config.id2label[i] for i in range(len(self.model.config.id2label))
        ]
        self.temperature = float(self.extras.get("temperature", 1.0))
        self._lock = threading.Lock()  # one forward pass at a time per model; torch uses the cores itself

    def enable_micro_batching(
        self, max_items: int = MICRO_BATCH_MAX_ITEMS, max_wait_s: float = MICRO_BATCH_MAX_WAIT_S
    ) -> Predictor:
        """Merge `predict` calls made at the same time from several threads into one call (see MicroBatcher).

        Results and errors stay per call; `load_predictor` turns it on for the app and the CLI.
        """
        if not isinstance(self.__dict__.get("predict"), MicroBatcher):
            self.predict = MicroBatcher(type(self).predict.__get__(self), max_items, max_wait_s)
        return self

    def scores_dict(self, probs: np.ndarray) -> dict[str, float]:
        return {name: round(float(p), 6) for name, p in zip(self.label_names, probs)}

    def summary(self) -> dict:
        from fmhub.hub import card_summary

        return card_summary(self.folder)


class TextIntentPredictor(Predictor):
    """Intent + confidence; below the calibrated threshold -> `out_of_scope`; FAQ answer and hand-off flag."""

    def __init__(self, folder: Path, scenario):
        super().__init__(folder, scenario)
        self.threshold = float(self.extras.get("oos_threshold", 0.0))
        self.faq = self.extras.get("faq") or {}
        self.max_length = min(int(getattr(self.processor, "model_max_length", 512) or 512), 512)

    @torch.no_grad()
    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            enc = self.processor(chunk, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
            with self._lock:
                logits = self.model(**enc).logits.float()
            out.append((logits / self.temperature).softmax(-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.label_names)))

    def predict(self, texts: list[str]) -> list[dict]:
        cleaned = [clean_text(t) for t in texts]
        results: list[dict | None] = [None] * len(cleaned)
        todo = [i for i, t in enumerate(cleaned) if t]
        probs = self.predict_proba([cleaned[i] for i in todo]) if todo else []
        for i, p in zip(todo, probs):
            results[i] = self._decide(p)
        for i, t in enumerate(cleaned):
            if not t:
                results[i] = {
                    "label": "empty",
                    "score": 0.0,
                    "scores": {},
                    "intent": None,
                    "answer": "Please type a message so I can help.",
                    "handoff": False,
                }
        return results

    def _decide(self, probs: np.ndarray) -> dict:
        best = int(probs.argmax())
        intent, score = self.label_names[best], float(probs[best])
        out_of_scope = score < self.threshold
        label = "out_of_scope" if out_of_scope else intent
        handoff = out_of_scope or intent == "human_agent"
        if out_of_scope:
            answer = HANDOFF_MESSAGE
        else:
            answer = self.faq.get(intent) or f"(intent: {intent})"
        return {
            "label": label,
            "score": round(score, 6),
            "scores": self.scores_dict(probs),
            "intent": intent,
            "answer": answer,
            "handoff": handoff,
        }


class _Request:
    __slots__ = ("items", "args", "kwargs", "key", "result", "error", "done")

    def __init__(self, items: list, args: tuple, kwargs: dict, key):
        self.items, self.args, self.kwargs, self.key = items, args, kwargs, key
        self.result, self.error = None, None
        self.done = threading.Event()


class MicroBatcher:
    """Server-side micro-batching for a `predict(items, *options) -> one result per item` function.

    Calls from several threads (a Gradio app's workers) queue up; one worker thread runs what is queued as a single
    call on the concatenated items (calls with the same options only, at most `max_items` items), then hands each
    caller its own slice of the results. A lone request runs at once: the worker waits up to `max_wait_s` for more
    only when the previous batch held several requests, i.e. while concurrent traffic is arriving. If a merged call
    raises, each request of it is run again on its own, so a bad input fails only its own request.
    """

    def __init__(self, fn, max_items: int = MICRO_BATCH_MAX_ITEMS, max_wait_s: float = MICRO_BATCH_MAX_WAIT_S):
        self.fn, self.max_items, self.max_wait_s = fn, max(1, int(max_items)), max(0.0, float(max_wait_s))
        self._pending: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._last_requests = 1  # requests in the previous batch: > 1 means concurrent traffic
        self.batches = 0  # how many merged calls ran, and how many requests they served (for benchmarks)
        self.requests = 0

    def __call__(self, items, *args, **kwargs):
        items = list(items)
        try:
            key = hash((args, tuple(sorted(kwargs.items()))))
        except TypeError:  # unhashable options: cannot tell which calls may be merged
            key = None
        if key is None or not items or threading.current_thread() is self._worker:
            return self.fn(items, *args, **kwargs)
        request = _Request(items, args, kwargs, (args, tuple(sorted(kwargs.items()))))
        with self._cond:
            self._pending.append(request)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="fmhub-micro-batcher", daemon=True)
                self._worker.start()
            self._cond.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def _take(self, batch: list[_Request], size: int) -> int:
        """Move queued requests with the first one's options into `batch`, up to `max_items` items in all."""
        key = batch[0].key
        for request in list(self._pending):
            if request.key == key and size + len(request.items) <= self.max_items:
                self._pending.remove(request)
                batch.append(request)
                size += len(request.items)
        return size

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                batch = [self._pending.popleft()]
                size = self._take(batch, len(batch[0].items))
                deadline = time.monotonic() + self.max_wait_s
                while len(batch) < self._last_requests and size < self.max_items:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                    size = self._take(batch, size)
                self._last_requests = len(batch)
            self._execute(batch)

    def _execute(self, batch: list[_Request]) -> None:
        first = batch[0]
        try:
            if len(batch) == 1:
                first.result = self.fn(first.items, *first.args, **first.kwargs)
            else:
                results = self.fn([x for r in batch for x in r.items], *first.args, **first.kwargs)
                if len(results) != sum(len(r.items) for r in batch):
                    raise RuntimeError("a merged predict call returned a different number of results")
                start = 0
                for r in batch:
                    r.result, start = list(results[start : start + len(r.items)]), start + len(r.items)
        except Exception as err:
            if len(batch) == 1:
                first.error = err
            else:  # isolate the failure: every request again, on its own
                for r in batch:
                    try:
                        r.result = self.fn(r.items, *r.args, **r.kwargs)
                    except Exception as own:
                        r.error = own
        finally:
            self.batches += 1
            self.requests += len(batch)
            for r in batch:
                if r.result is None and r.error is None:
                    r.error = RuntimeError("the prediction was interrupted")
                r.done.set()


_CACHE: dict[tuple[str, str], Predictor] = {}
_CACHE_LOCK = threading.Lock()


def load_predictor(scenario: str, model: str | None = None) -> Predictor:
    """A cached Predictor for a folder, a Hub id, or (None) the embedded default, fine-tuned on first use.

    For text and image its `predict` micro-batches: calls arriving together from several threads run as one batch.
    """
    from fmhub.hub import resolve_model
    from fmhub.scenarios import get_scenario

    key = (scenario, model or "")
    with _CACHE_LOCK:
        if key not in _CACHE:
            scenario_obj = get_scenario(scenario)
            folder = resolve_model(model, scenario)
            predictor = scenario_obj.predictor(folder)
            if scenario_obj.modality in MICRO_BATCHED_MODALITIES:
                predictor.enable_micro_batching()
            _CACHE[key] = predictor
        return _CACHE[key]
