"""Static Spaces: the customer-service page runs the int8 ONNX model in Chromium and answers as Python does.

The built folder is served from 127.0.0.1 by a plain HTTP server (with the COOP/COEP headers the Space's YAML asks
for); every request that would leave 127.0.0.1 is blocked and recorded, and none may be attempted. 200 test-split
messages go through the page's `fmhubClassify`, a few through the chat itself, and the labels are compared with the
Python predictor on ONNX Runtime (`--runtime onnx`). With every scenario built, 50 test-split images and 50 clips
(commands, other words, silence and a few longer clips) go through the bytes the page decodes as an upload does
(`fmhubClassifyImageBytes`, `fmhubClassifyAudioBytes`) and are compared in the same way. Screenshots land in
test-artifacts/.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import functools
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import ARTIFACTS, ROOT

from fmhub.errors import FmhubError
from fmhub.onnx_runtime import serving_file
from fmhub.static_space import (
    GZIP,
    ORT_WEB_BINARY,
    ORT_WEB_FILES,
    SPACE_HEADERS,
    build_static_space,
    folder_size,
    has_page,
    ort_web_dist,
    static_readme,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-quic"]
MESSAGES = 200
IMAGES = 50
CLIPS = 50  # of which LONG_CLIPS are 2-3 clips end to end (the sliding windows)
LONG_CLIPS = 8
MIN_AGREEMENT = 0.99  # with 50 inputs, 49/50 is 98 %: every image and every clip must agree
LOAD_TIMEOUT_MS = 120_000
TRICKY = [
    "Café crème, NAÏVE façade — déjà vu?", "我想退货 please", "$100!!! refund?? #order-123", "📦 where is it 📦",
    "hello\u00a0world\u2003again", "tab\there\nnewline\x07bell", "[SEP] my [CLS] order [MASK]", "İstanbul ΣΊΣΥΦΟΣ",
    "a" * 150 + " long word", "supercalifragilisticexpialidocious refunds", "  spaced   out  ", "",
    " ".join(["package"] * 300),  # truncated to the model's length
]


def _ort_web_or_skip():
    try:
        return ort_web_dist()
    except FmhubError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def cs_model(tiny_intent_model, tmp_path_factory) -> Path:
    """A copy of the tiny intent model (the build exports it in place; the session fixture stays as trained)."""
    folder = tmp_path_factory.mktemp("static_cs") / "model"
    shutil.copytree(tiny_intent_model, folder, ignore=shutil.ignore_patterns("checkpoint-*", "onnx"))
    return folder


@pytest.fixture(scope="module")
def static_folder(cs_model, tmp_path_factory) -> Path:
    _ort_web_or_skip()
    return build_static_space("customer-service", tmp_path_factory.mktemp("static") / "space",
                              {"customer-service": str(cs_model)})


class _Handler(SimpleHTTPRequestHandler):
    def end_headers(self):  # the headers the Space's YAML sets: cross-origin isolation, so the wasm gets threads
        for name, value in SPACE_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass


@contextlib.contextmanager
def _serving(folder: Path):
    """A plain static file server for `folder` on 127.0.0.1 (a free port); yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def served(static_folder):
    with _serving(static_folder) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is missing (bash .ci/test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield browser
        browser.close()


class Visit:
    """A fresh browser context on the page: requests leaving 127.0.0.1 are aborted and recorded, errors kept."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context(viewport={"width": 1100, "height": 900})
        self.outside, self.requested, self.errors = [], [], []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("request", lambda request: self.requested.append(request.url))
        self.page.on("pageerror", lambda err: self.errors.append(str(err)))
        self.page.on("console", lambda msg: msg.type == "error" and self.errors.append(msg.text))
        self.url = url

    def _route(self, route):
        url = route.request.url
        if urlsplit(url).hostname != "127.0.0.1" and not url.startswith(("data:", "blob:")):
            self.outside.append(url)
            route.abort()
        else:
            route.continue_()

    def open(self) -> float:
        started = time.perf_counter()
        self.page.goto(self.url, wait_until="load")
        return started

    def check_stayed_local(self) -> None:
        assert self.outside == [], f"requests leaving 127.0.0.1: {self.outside}"
        hosts = {urlsplit(u).hostname for u in self.requested if not u.startswith(("data:", "blob:"))}
        assert hosts == {"127.0.0.1"}, hosts
        assert self.errors == [], self.errors

    def close(self):
        self.context.close()


def _ask(page, text: str, answers_before: int) -> dict:
    """Type a message into the chat, send it, wait for the answer; returns what the bubble shows."""
    page.locator("#cs-message").fill(text)
    page.locator("#cs-send").click()
    bubble = page.locator("#cs-log .msg.bot[data-label]").nth(answers_before)
    bubble.wait_for(timeout=LOAD_TIMEOUT_MS)
    return {"label": bubble.get_attribute("data-label"), "handoff": bubble.get_attribute("data-handoff") == "true",
            "text": bubble.inner_text()}


def _wait_for(page, condition: str, timeout_ms: int = LOAD_TIMEOUT_MS) -> None:
    """Wait until the JavaScript `condition` holds. Not `wait_for_function`: its polling evaluates a string, which
    the page's Content-Security-Policy (no 'unsafe-eval') refuses; a function passed to `evaluate` is not eval."""
    page.evaluate("""async ([condition, timeout]) => {
        const deadline = Date.now() + timeout;
        while (!window[condition]) {
            if (Date.now() > deadline) throw new Error(`window.${condition} never appeared`);
            await new Promise((resolve) => setTimeout(resolve, 50));
        }
        await window[condition];
    }""", [condition, timeout_ms])


def _test_messages() -> list[str]:
    from fmhub.data.intents import load_embedded_intents

    rows = load_embedded_intents()["test"]
    random.Random(0).shuffle(rows)
    return [row["text"] for row in rows[:MESSAGES]]


# -- the folder ------------------------------------------------------------------------------------------------------
def test_folder_holds_the_page_runtime_and_served_model(static_folder, cs_model):
    for name in ("README.md", "index.html", "space.json", "app/common.js", "app/chat.js", "app/wordpiece.js",
                 "app/style.css", f"models/customer-service/onnx/{serving_file(cs_model).name}{GZIP}",
                 "models/customer-service/settings.json", "models/customer-service/tokenizer.json",
                 *(f"ort/{f}{GZIP if f == ORT_WEB_BINARY else ''}" for f in ORT_WEB_FILES)):
        assert (static_folder / name).is_file(), name
    # the large files are stored gzipped and inflate to exactly what they were
    assert gzip.decompress((static_folder / f"ort/{ORT_WEB_BINARY}{GZIP}").read_bytes()) == \
        (ort_web_dist() / ORT_WEB_BINARY).read_bytes()
    # the graph the export serves: int8 when it kept the parity bar (real defaults), else fp32 (a tiny random model)
    graph = static_folder / f"models/customer-service/onnx/{serving_file(cs_model).name}{GZIP}"
    assert gzip.decompress(graph.read_bytes()) == serving_file(cs_model).read_bytes()
    settings = json.loads((static_folder / "models/customer-service/settings.json").read_text())
    assert settings["onnx"] == f"onnx/{serving_file(cs_model).name}{GZIP}" and 0 < settings["oos_threshold"] < 1
    assert settings["faq"] and settings["label_names"] and settings["tokenizer"]["lowercase"] is True
    page = (static_folder / "index.html").read_text()
    assert "http://" not in page and "https://" not in page and "{{" not in page
    space = json.loads((static_folder / "space.json").read_text())
    assert list(space["scenarios"]) == ["customer-service"]
    assert str(static_folder.parent) not in json.dumps(space) + json.dumps(settings)  # no local paths published
    print(f"\nstatic customer-service folder: {folder_size(static_folder) / 1e6:.1f} MB")


def test_readme_yaml_is_a_static_space_card(static_folder):
    from huggingface_hub import SpaceCard

    data = SpaceCard((static_folder / "README.md").read_text()).data
    assert data.sdk == "static" and data.app_file == "index.html"
    assert data.to_dict()["custom_headers"] == SPACE_HEADERS
    assert "models" not in data.to_dict()  # a local folder is no Hub model
    linked = SpaceCard(static_readme(["customer-service"], {"customer-service": "tester/intents"})).data
    assert linked.sdk == "static" and linked.models == ["tester/intents"]


def test_build_refusals(cs_model, tmp_path, monkeypatch):
    _ort_web_or_skip()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FmhubError, match="not empty and was not created by fmhub"):
        build_static_space("customer-service", foreign, {"customer-service": str(cs_model)})
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    with pytest.raises(FmhubError, match="unknown|registered"):
        build_static_space("nope", tmp_path / "x")
    with pytest.raises(FmhubError, match="which this build does not hold"):
        build_static_space("customer-service", tmp_path / "x", {"voice-command": None})
    monkeypatch.setenv("FMHUB_NODE_MODULES", str(tmp_path / "empty"))
    with pytest.raises(FmhubError, match=r"onnxruntime-web.*\.ci/install-web"):
        build_static_space("customer-service", tmp_path / "y", {"customer-service": str(cs_model)})
    assert not (tmp_path / "y").exists()


@pytest.fixture(scope="module")
def all_models(cs_model, request) -> dict[str, str]:
    """The tiny models of the scenarios whose page exists (never the embedded defaults: nothing trains long)."""
    models = {"customer-service": str(cs_model)}
    for scenario, fixture in (("medical-image", "tiny_image_model"), ("voice-command", "tiny_audio_model")):
        if has_page(scenario):
            models[scenario] = str(request.getfixturevalue(fixture))
    return models


@pytest.fixture(scope="module")
def all_served(all_models, tmp_path_factory):
    _ort_web_or_skip()
    folder = build_static_space("all", tmp_path_factory.mktemp("static_all") / "space", all_models)
    with _serving(folder) as url:
        yield folder, url


def test_all_has_a_tab_per_scenario(all_served, browser):
    folder, url = all_served
    space = json.loads((folder / "space.json").read_text())
    assert list(space["scenarios"]) == ["customer-service", "medical-image", "voice-command"]
    for scenario, entry in space["scenarios"].items():
        assert (entry["folder"] is not None) == has_page(scenario)
        assert (folder / "models" / scenario).is_dir() == has_page(scenario)
    visit = Visit(browser, url)
    try:
        visit.open()
        _wait_for(visit.page, "fmhubStarted")
        tabs = visit.page.get_by_role("tab").all_inner_texts()
        assert tabs == ["Customer service", "Medical image", "Voice command"]
        for scenario in ("medical-image", "voice-command"):
            if not has_page(scenario):
                visit.page.locator(f"#tab-{scenario}").click()
                assert "not built" in visit.page.locator(f"#panel-{scenario}").inner_text()
        visit.page.screenshot(path=str(ARTIFACTS / "static-space-all.png"), full_page=True)
        visit.check_stayed_local()
    finally:
        visit.close()


def _upload_and_read(browser, url: str, scenario: str, upload: str, path: Path, result: str, shot: str) -> dict:
    visit = Visit(browser, url)
    try:
        visit.open()
        visit.page.locator(f"#tab-{scenario}").click()
        visit.page.locator(upload).set_input_files(str(path))
        visit.page.locator(f"{result}[data-label]").wait_for(timeout=LOAD_TIMEOUT_MS)
        shown = visit.page.evaluate(f"({{...document.querySelector('{result}').dataset}})")
        shown["text"] = visit.page.locator(result).inner_text()
        visit.page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
        visit.check_stayed_local()
        return shown
    finally:
        visit.close()


def test_image_tab_in_the_browser(all_served, all_models, browser, tmp_path):
    if not has_page("medical-image"):
        pytest.skip("fmhub/static/image.js is not in this checkout")
    import numpy as np
    from PIL import Image

    from fmhub.data import medical_synth
    from fmhub.serving import load_predictor

    images, labels, _ = medical_synth.generate(6, size=96, seed=3, split="test")
    path = tmp_path / "lesion.png"
    Image.fromarray(images[int(np.flatnonzero(labels == 1)[0])]).save(path)
    expected = load_predictor("medical-image", all_models["medical-image"], runtime="onnx").predict([path])[0]
    shown = _upload_and_read(browser, all_served[1], "medical-image", "#mi-file", path, "#mi-result",
                             "static-space-medical-image.png")
    assert shown["label"] == expected["label"], (shown, expected)


def test_voice_tab_in_the_browser(all_served, all_models, browser, tmp_path):
    if not has_page("voice-command"):
        pytest.skip("fmhub/static/voice.js is not in this checkout")
    from fmhub import audio
    from fmhub.data import speech_corpus
    from fmhub.data.audio_data import embedded_corpus_path
    from fmhub.serving import load_predictor

    waves, labels, _ = speech_corpus.load_corpus(embedded_corpus_path())["test"]
    path = audio.write_wav(tmp_path / "yes.wav", waves[labels.index("yes")])
    expected = load_predictor("voice-command", all_models["voice-command"], runtime="onnx").predict([str(path)])[0]
    shown = _upload_and_read(browser, all_served[1], "voice-command", "#vc-file", path, "#vc-result",
                             "static-space-voice-command.png")
    assert shown["label"] == expected["label"], (shown, expected)
    assert shown["command"] == (expected.get("command") or ""), (shown, expected)


def _agreement_in_page(browser, url: str, function: str, files: list[Path], mime: str) -> tuple[float, list[dict]]:
    """Every file's bytes through the page's `function` (the upload's decoding and model), one at a time; returns the
    seconds from the page load to the first answer and what the page answered for each file."""
    payloads = [base64.b64encode(path.read_bytes()).decode("ascii") for path in files]
    call = """async ([name, payloads, mime]) => {
        const results = [];
        for (const bytes of payloads) {
            const r = await window[name](bytes, mime);
            results.push({label: r.label, score: r.score, command: r.command || ""});
        }
        return results;
    }"""
    visit = Visit(browser, url)
    try:
        started = visit.open()
        _wait_for(visit.page, function)
        got = visit.page.evaluate(call, [function, payloads[:1], mime])
        first = time.perf_counter() - started
        got += visit.page.evaluate(call, [function, payloads[1:], mime])
        visit.check_stayed_local()
    finally:
        visit.close()
    return first, got


def _check_agreement(what: str, files: list[Path], got: list[dict], expected: list[dict], first: float,
                     fields: tuple[str, ...]) -> None:
    wrong = [(path.name, {f: g[f] for f in fields}, {f: e.get(f) or "" for f in fields}, g["score"], e["score"])
             for path, g, e in zip(files, got, expected) if any(g[f] != (e.get(f) or "") for f in fields)]
    agreement = 1 - len(wrong) / len(files)
    diff = max(abs(g["score"] - e["score"]) for g, e in zip(got, expected))
    shown = collections.Counter(e["label"] for e in expected)
    print(f"\nstatic page vs Python ONNX predictor, {what}: {len(files) - len(wrong)}/{len(files)} agree "
          f"({agreement:.1%}) on {', '.join(fields)}, largest score difference {diff:.4f}; Python's labels "
          f"{dict(shown)}; first answer {first:.2f} s after the page load started; "
          f"mismatches (file, page, Python, page score, Python score): {wrong}")
    assert len(got) == len(files)
    assert agreement >= MIN_AGREEMENT, wrong
    assert diff < 0.01  # the same graph on the same decoded input: wasm and the CPU provider differ only in rounding


def test_image_tab_agrees_with_the_python_onnx_predictor(all_served, all_models, browser, tmp_path):
    if not has_page("medical-image"):
        pytest.skip("fmhub/static/image.js is not in this checkout")
    from PIL import Image

    from fmhub.data import medical_synth
    from fmhub.serving import load_predictor

    # the embedded test split at its size (128 px; the tiny model takes 64, so the page resizes as Pillow does)
    images, labels, _ = medical_synth.generate(IMAGES, size=128, seed=0, split="test")
    files = []
    for n, image in enumerate(images):
        files.append(tmp_path / f"image-{n:02d}.png")
        Image.fromarray(image).save(files[-1])
    predictor = load_predictor("medical-image", all_models["medical-image"], runtime="onnx")
    expected = [predictor.predict([path])[0] for path in files]  # one per call, as the page classifies them
    first, got = _agreement_in_page(browser, all_served[1], "fmhubClassifyImageBytes", files, "image/png")
    _check_agreement(f"{IMAGES} test-split images", files, got, expected, first, ("label",))
    assert set(labels.tolist()) == {0, 1}  # both classes in the sample


def _test_clips(folder: Path) -> list[Path]:
    """CLIPS wav files from the espeak-ng test split: commands, other words, silence, and LONG_CLIPS of 2-3 clips."""
    import numpy as np

    from fmhub import audio
    from fmhub.data import audio_data, voice_corpus

    waves, labels, _ = voice_corpus.load_family("espeak-ng", audio_data.corpus_dir())["test"]
    rng = random.Random(0)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    commands = sorted(label for label in by_label if not label.startswith("_"))
    picked = [i for label in commands for i in rng.sample(by_label[label], 3)]  # 30 commands
    picked += rng.sample(by_label["_unknown_"], 8) + rng.sample(by_label["_silence_"], CLIPS - LONG_CLIPS - 38)
    clips = [waves[i] for i in picked]
    for _ in range(LONG_CLIPS):
        parts = rng.sample(range(len(waves)), rng.choice((2, 3)))
        clips.append(np.concatenate([waves[i] for i in parts]))
    return [audio.write_wav(folder / f"clip-{n:02d}.wav", clip.astype(np.float32) / 32768.0)
            for n, clip in enumerate(clips)]


def test_voice_tab_agrees_with_the_python_onnx_predictor(all_served, all_models, browser, tmp_path):
    if not has_page("voice-command"):
        pytest.skip("fmhub/static/voice.js is not in this checkout")
    import soundfile as sf

    from fmhub.serving import load_predictor

    files = _test_clips(tmp_path)
    assert len(files) == CLIPS and sum(sf.info(str(f)).frames > 16000 for f in files) == LONG_CLIPS
    predictor = load_predictor("voice-command", all_models["voice-command"], runtime="onnx")
    expected = [predictor.predict([str(path)])[0] for path in files]
    first, got = _agreement_in_page(browser, all_served[1], "fmhubClassifyAudioBytes", files, "audio/wav")
    _check_agreement(f"{CLIPS} test-split clips ({LONG_CLIPS} long)", files, got, expected, first,
                     ("label", "command"))


@pytest.mark.parametrize("scenario", ["medical-image", "voice-command"])
def test_a_single_scenario_folder_is_its_own_page(scenario, all_models, browser, tmp_path):
    """`--static --scenario medical-image|voice-command`: a page with that one tab and only its model, which answers as
    the Python ONNX predictor does (the 50-input comparisons above run on the all-scenario folder)."""
    if not has_page(scenario):
        pytest.skip(f"the {scenario} page is not in this checkout")
    from PIL import Image

    from fmhub.data import medical_synth
    from fmhub.serving import load_predictor

    _ort_web_or_skip()
    folder = build_static_space(scenario, tmp_path / "space", {scenario: all_models[scenario]})
    assert [p.name for p in (folder / "models").iterdir()] == [scenario]
    assert list(json.loads((folder / "space.json").read_text())["scenarios"]) == [scenario]
    if scenario == "medical-image":
        images, _, _ = medical_synth.generate(5, size=128, seed=1, split="test")
        files = [tmp_path / f"image-{n}.png" for n in range(len(images))]
        for path, image in zip(files, images):
            Image.fromarray(image).save(path)
        function, mime, fields = "fmhubClassifyImageBytes", "image/png", ("label",)
    else:
        files, function, mime, fields = _test_clips(tmp_path)[::10], "fmhubClassifyAudioBytes", "audio/wav", \
            ("label", "command")
    predictor = load_predictor(scenario, all_models[scenario], runtime="onnx")
    expected = [predictor.predict([str(path)])[0] for path in files]
    with _serving(folder) as url:
        first, got = _agreement_in_page(browser, url, function, files, mime)
        visit = Visit(browser, url)
        try:
            visit.open()
            _wait_for(visit.page, function)
            assert visit.page.get_by_role("tab").count() == 0  # one scenario: its panel alone, no tab bar
            assert visit.page.locator("[role=tabpanel]").evaluate_all("ps => ps.map(p => p.dataset.scenario)") \
                == [scenario]
            visit.page.screenshot(path=str(ARTIFACTS / f"static-space-only-{scenario}.png"), full_page=True)
            visit.check_stayed_local()
        finally:
            visit.close()
    _check_agreement(f"the {scenario} folder alone, {len(files)} inputs", files, got, expected, first, fields)


# -- the page in Chromium ---------------------------------------------------------------------------------------
def test_first_answer_and_the_chat_ui(served, browser, cs_model):
    from fmhub.serving import load_predictor

    ARTIFACTS.mkdir(exist_ok=True)
    predictor = load_predictor("customer-service", str(cs_model), runtime="onnx")
    visit = Visit(browser, served)
    try:
        started = visit.open()
        first = _ask(visit.page, "where is my package? it should have arrived yesterday", 0)
        print(f"\nstatic page: first answer {time.perf_counter() - started:.2f} s after the page load started")
        asked = ["where is my package? it should have arrived yesterday", "I want to talk to a real person",
                 "what is the capital of Australia?", "my card was charged twice for one order"]
        shown = [first] + [_ask(visit.page, text, n) for n, text in enumerate(asked[1:], start=1)]
        expected = predictor.predict(asked)
        assert [s["label"] for s in shown] == [e["label"] for e in expected]
        assert [s["handoff"] for s in shown] == [e["handoff"] for e in expected]
        for s, e in zip(shown, expected):
            assert e["answer"] in s["text"] and ("confidence" in s["text"])
        empty = _ask(visit.page, "   ", len(asked))
        assert empty["label"] == "empty" and "Please type a message" in empty["text"]
        assert visit.page.locator("#cs-message").input_value() == ""
        visit.page.screenshot(path=str(ARTIFACTS / "static-space-customer-service.png"), full_page=True)
        visit.check_stayed_local()
    finally:
        visit.close()


def test_page_agrees_with_the_python_onnx_predictor(served, browser, cs_model, static_folder):
    from fmhub.predictors.text import clean_text
    from fmhub.serving import load_predictor

    predictor = load_predictor("customer-service", str(cs_model), runtime="onnx")
    texts = _test_messages()
    # one message per call, as the chat sends them; a batch (what `fmhub predict` runs) is also compared, but int8
    # dynamic quantization picks one activation scale per batch tensor, so there a message's probabilities move with
    # its padded neighbours (by up to ~0.06 on this model): that is Python's batching, not the page
    expected = [predictor.predict([text])[0] for text in texts]
    batched = predictor.predict(texts)
    max_length = json.loads((static_folder / "models/customer-service/settings.json").read_text())[
        "tokenizer"]["max_length"]
    visit = Visit(browser, served)
    try:
        visit.open()
        _wait_for(visit.page, "fmhubClassifyMany")
        started = time.perf_counter()
        got = visit.page.evaluate("texts => window.fmhubClassifyMany(texts)", texts)
        seconds = time.perf_counter() - started
        # the tokenizer: the ids Python's tokenizer gives, on the test messages and on awkward ones
        probes = texts + TRICKY
        ids = visit.page.evaluate("texts => Promise.all(texts.map(t => window.fmhubTokenize(t)))", probes)
        visit.check_stayed_local()
    finally:
        visit.close()
    want_ids = [predictor.processor(clean_text(t), truncation=True, max_length=max_length)["input_ids"]
                for t in probes]
    wrong = [(t, i, w) for t, i, w in zip(probes, ids, want_ids) if i != w]
    assert not wrong, wrong[:3]

    same = [g["label"] == e["label"] for g, e in zip(got, expected)]
    agreement = sum(same) / len(same)
    diff = max(abs(g["score"] - e["score"]) for g, e in zip(got, expected))
    same_batched = sum(g["label"] == e["label"] for g, e in zip(got, batched))
    print(f"\nstatic page vs Python ONNX predictor, one message per call: {sum(same)}/{len(same)} labels agree "
          f"({agreement:.1%}), largest confidence difference {diff:.4f}; vs batches of 64: "
          f"{same_batched}/{len(same)}; {1000 * seconds / len(texts):.1f} ms per message in the page")
    assert agreement >= MIN_AGREEMENT, [(t, g["label"], e["label"]) for t, g, e, s in
                                        zip(texts, got, expected, same) if not s]
    assert diff < 0.01  # the same graph on the same ids: wasm and the CPU provider differ only in rounding
    for g, e in zip(got, expected):
        if g["label"] == e["label"]:
            assert g["handoff"] == e["handoff"] and g["answer"] == e["answer"]
    assert {e["label"] for e in expected} & {"out_of_scope"}  # the sample holds out-of-scope messages too
    distances = [(g["out_of_scope"]["distance"], e["out_of_scope"]["distance"]) for g, e in zip(got, expected)]
    assert all(d is not None for pair in distances for d in pair)  # the tiny model has a distance score: used
    assert max(abs(a - b) / max(abs(b), 1.0) for a, b in distances) < 0.02


# -- deploy ----------------------------------------------------------------------------------------------------------
def test_deploy_uploads_the_static_space_in_one_commit(static_folder, tiny_intent_model, tmp_path):
    """A model pushed without its ONNX export, then a static Space deployed with its Hub id: the download is exported
    in a copy (the Hub cache stays as downloaded), the Space is created with the static SDK and filled in one commit
    with the files a local build writes, and its card links the model."""
    from hub_server import LocalHub
    from huggingface_hub import SpaceCard

    user, token = "tester", "hf_fmhubStaticSpace0123456789abcd"
    model_id, space_id = f"{user}/intents", f"{user}/static-chat"
    pushed = tmp_path / "model"
    shutil.copytree(tiny_intent_model, pushed, ignore=shutil.ignore_patterns("checkpoint-*", "onnx"))
    with LocalHub(token=token, users=(user,)) as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_")) and k != "PYTHONPATH"}
        env.update(hub.client_env(tmp_path / "hf_home"))
        code = (f"from fmhub.cli import main\n"
                f"assert main(['push', '--model', {str(pushed)!r}, '--repo-id', {model_id!r}]) == 0\n"
                f"from fmhub.static_space import deploy_static_space\n"
                f"print(deploy_static_space('customer-service', {space_id!r}, {{'customer-service': {model_id!r}}}))\n"
                f"from huggingface_hub import HfApi\n"
                f"print(HfApi().space_info({space_id!r}).sdk)\n")
        proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert token not in proc.stdout + proc.stderr
        assert proc.stdout.split()[-2:] == [f"{hub.url}/spaces/{space_id}", "static"]
        commits = hub.commits(space_id, repo_type="space")
        assert [title for _, title in commits] == ["Deploy fmhub customer-service static Space", "initial commit"]
        files = hub.files(space_id, repo_type="space")
    assert not list((tmp_path / "hf_home").rglob("model_quantized.onnx"))  # exported in a copy, not in the cache
    built = {p.relative_to(static_folder).as_posix() for p in static_folder.rglob("*")
             if p.is_file() and not p.name.startswith(".fmhub-")}
    assert set(files) - {".gitattributes"} == built
    wasm = "ort/ort-wasm-simd-threaded.wasm.gz"
    assert files[wasm] == (static_folder / wasm).read_bytes()
    card = SpaceCard(files["README.md"].decode()).data
    assert card.sdk == "static" and card.models == [model_id]
    assert json.loads(files["space.json"])["scenarios"]["customer-service"]["model"] == model_id
