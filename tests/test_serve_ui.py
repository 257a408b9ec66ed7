"""The web playground of ``lit-genai serve --ui``, end to end in headless Chromium.

One server (an image, an audio and a text model, all tiny; the session's, shared with
tests/test_serve.py) on 127.0.0.1; the page is loaded, refused ``/info`` until the API key is typed
in, its fields are checked against ``/info`` (classes, sampling defaults and limits), and samples
are asked for through its form: the images it shows are the PNGs ``/predict`` returns for the same request,
the audio plays in an ``<audio>`` element, the text streams into the page, and a refused request
shows the service's message. Skipped when Playwright or a Chromium binary is missing (CI installs
Debian's ``chromium``, .ci/run).
"""

from __future__ import annotations

import base64
import shutil

import pytest
from serve_helpers import KEY

requests = pytest.importorskip("requests")
pytest.importorskip("litserve")
sync_api = pytest.importorskip("playwright.sync_api", reason="the page test needs Playwright (the dev extra)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium to test the page in: apt-get install chromium", allow_module_level=True)

# Chromium as a test browser: no sandbox (CI runs as root), no GPU, nothing fetched from outside.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def served(serve_server):
    return serve_server


@pytest.fixture(scope="module")
def page(served):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{served.url}/ui")
        page.wait_for_selector("#status.error")  # the server wants a key: GET /info is refused
        page.fill("#key", KEY)
        page.click("#reload")
        page.wait_for_selector("#model option", state="attached")
        yield page
        browser.close()


def predicted(served, body):
    headers = {"X-API-Key": KEY}
    response = requests.post(
        f"{served.url}/predict", json={**body, "format": "json"}, headers=headers, timeout=120
    )
    assert response.status_code == 200, response.text
    return response.json()["samples"]


def test_the_form_holds_the_models_classes_and_sampling_defaults(page):
    models = page.eval_on_selector_all("#model option", "els => els.map(e => e.value)")
    assert models == ["image", "text", "audio"]
    page.select_option("#model", "image")
    classes = page.eval_on_selector_all("#label option", "els => els.map(e => e.textContent)")
    assert classes[1:] == [str(i) for i in range(10)]
    steps = page.locator("#option-steps")
    assert (steps.input_value(), steps.get_attribute("max")) == ("3", "50")
    assert page.locator("#option-sampler").input_value() == "dpm_solver++"


def test_the_page_shows_the_images_of_predict(page, served):
    page.select_option("#model", "image")
    page.select_option("#label", "3")
    page.fill("#n", "2")
    page.fill("#seed", "5")
    page.click("#generate")
    loaded = "[...document.querySelectorAll('#results img')].filter(i => i.complete && i.naturalWidth === 28)"
    page.wait_for_function(f"{loaded}.length === 2")
    shown = page.eval_on_selector_all("#results img", "els => els.map(e => e.src)")
    expected = predicted(served, {"model": "image", "n": 2, "seed": 5, "label": 3})
    assert shown == [f"data:image/png;base64,{png}" for png in expected]
    assert base64.b64decode(expected[0]).startswith(b"\x89PNG")


def test_the_page_plays_audio(page):
    page.select_option("#model", "audio")
    page.click("#generate")
    page.wait_for_function(
        "(a => a && a.readyState >= 1 && a.duration > 0)(document.querySelector('#results audio'))"
    )
    assert page.eval_on_selector("#results audio", "a => a.controls") is True


def test_the_page_streams_text(page, served):
    page.select_option("#model", "text")
    page.fill("#prompt", "The ")
    page.fill("#seed", "2")
    page.click("#generate")
    expected = predicted(served, {"model": "text", "seed": 2, "prompt": "The "})[0]
    page.wait_for_function("t => document.querySelector('#results pre')?.textContent === t", arg=expected)
    assert expected.startswith("The ") and len(expected) > len("The ")


def test_a_refused_request_shows_the_services_message(page):
    page.select_option("#model", "text")
    page.fill("#prompt", "x" * 41)  # the fields with a max are checked by the browser itself
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').className === 'error'")
    assert page.text_content("#status") == "422: the prompt has 41 characters; the limit is 40"
