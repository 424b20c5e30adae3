"""A real browser (Debian's Chromium driven by Playwright) uses every tab of the launched hub app.

Screenshots land in test-artifacts/ so a person can look at what users see.
"""

from __future__ import annotations

import shutil

import pytest
from conftest import ARTIFACTS

from fmhub.ui.app import AppConfig, available_tabs, build_app, launch

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is missing (bash .ci/test installs it)")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def browser_page(request, tiny_intent_model):
    from playwright.sync_api import sync_playwright

    models = {"customer-service": str(tiny_intent_model)}
    # more tabs join here as their scenarios land (each with a tiny-model session fixture in conftest.py)
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
        page.goto(demo.local_url, wait_until="networkidle")
        yield page, models
        browser.close()
    demo.close()


def test_customer_service_chat_in_the_browser(browser_page):
    page, _ = browser_page
    page.get_by_role("tab", name="Customer service").click()
    box = page.locator("#cs-message textarea")
    box.fill("where is my package? it should have arrived yesterday")
    page.locator("#cs-send").click()
    page.get_by_text("confidence").first.wait_for(timeout=60_000)
    text = page.locator(".message-wrap, [data-testid='bot']").first.inner_text()
    assert "confidence" in text or "out of scope" in text
    page.screenshot(path=str(ARTIFACTS / "browser-customer-service.png"), full_page=True)
    # the box is cleared and the app still answers a second message
    assert box.input_value() == ""
    box.fill("I want to speak to a human")
    page.locator("#cs-send").click()
    page.wait_for_function("document.body.innerText.split('confidence').length > 2", timeout=60_000)
