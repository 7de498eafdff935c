"""The playground page (`GET /api/playground`) in headless Chromium, driven through Selenium.

Against `tests.sse_replay_server` (a synthetic stream that follows the event contract, written in
every awkward way SSE allows) and against the function app on the local stand-ins. Screenshots go to
`out/playground/`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import shutil
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from devtools.process import PORT_PLACEHOLDER, REPO_ROOT, ServiceProcess, http_probe
from realtime_speech.wav import WAV_HEADER_BYTES

from .conftest import SpeechHost
from .speech_client import SpeechClient
from .sse_replay_server import PAGE, SPLIT_FROM_ERROR, TRANSCRIPT, odd_deltas, tone_pcm
from .test_speech_api import parse_wav, unique_text

# Installed by `make test` (devtools/prerequisites.py) where apt allows; it names them otherwise.
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)
ARTEFACTS = REPO_ROOT / "out" / "playground"
WIDE, NARROW = (1280, 900), (390, 844)
SETTLED = ("done", "error")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    assert CHROMIUM and CHROMEDRIVER, "chromium and chromedriver: run `python3 -m devtools.prerequisites`"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager never looks for (or downloads) a driver.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_window_size(*WIDE)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def replay_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    argv = [sys.executable, "-m", "tests.sse_replay_server", "--port", PORT_PLACEHOLDER]
    with ServiceProcess(
        "sse-replay", argv, probe=http_probe("/api/playground"), log_dir=tmp_path_factory.mktemp("replay")
    ) as server:
        yield server


class Playground:
    """The page in the browser: fill the form, press Speak, read `window.playground` and the DOM."""

    def __init__(self, driver: WebDriver, base_url: str) -> None:
        self.driver = driver
        driver.set_window_size(*WIDE)
        driver.get(f"{base_url}/api/playground")
        loaded = driver.execute_script("return typeof window.playground === 'object'")
        assert loaded, f"no playground page (with its script running) at {base_url}/api/playground"
        driver.get_log("browser")  # start each page with an empty console

    def speak(
        self, text: str, voice: str = "alloy", key: str | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        """Ask `text` and wait for the answer to end; returns `window.playground`."""
        box = self.driver.find_element(By.ID, "text")
        box.clear()
        box.send_keys(text)
        Select(self.driver.find_element(By.ID, "voice")).select_by_value(voice)
        if key is not None:
            self.driver.find_element(By.ID, "function-key").send_keys(key)
        self.driver.find_element(By.ID, "speak").click()
        WebDriverWait(self.driver, timeout).until(lambda _: self.state()["state"] in SETTLED)
        return self.state()

    def state(self) -> dict[str, Any]:
        return self.driver.execute_script("return window.playground")

    def text_of(self, element_id: str) -> str:
        return self.driver.find_element(By.ID, element_id).text

    def download_url(self) -> str:
        return self.driver.find_element(By.ID, "download").get_attribute("href")

    def console_errors(self) -> list[str]:
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]

    def screenshot(self, name: str, size: tuple[int, int] = WIDE) -> Path:
        """Save a PNG of the whole page at `size` (width, height at least) and print where it is."""
        self.driver.set_window_size(*size)
        height = self.driver.execute_script(
            "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight"
        )
        self.driver.set_window_size(size[0], max(size[1], height))
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTEFACTS / f"{name}.png"
        assert self.driver.save_screenshot(str(path))
        print(f"screenshot: {path}")
        return path

    def overflows_horizontally(self) -> bool:
        return self.driver.execute_script(
            "return document.documentElement.scrollWidth > document.documentElement.clientWidth"
        )

    def keeps_nothing(self) -> bool:
        """No storage, no cookie: a function key typed in lives only in the page's memory."""
        return self.driver.execute_script(
            "return localStorage.length === 0 && sessionStorage.length === 0 && document.cookie === ''"
        )


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def recorded_requests(server: ServiceProcess) -> list[dict[str, Any]]:
    return json.loads(http_get(f"{server.url}/_replay/requests"))


def assert_streamed_answer(page: Playground, state: dict[str, Any], wav: bytes) -> None:
    """The checks every successful answer must pass, whoever served it."""
    done = state["done"]
    assert state["error"] is None
    assert state["transcript"] == done["transcript"] == page.text_of("transcript") != ""
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    _, pcm = parse_wav(wav)
    assert state["scheduledSamples"] == (len(wav) - WAV_HEADER_BYTES) // 2 == len(pcm) // 2 > 0
    assert len(wav) == done["audio"]["bytes"]
    assert page.text_of("fact-duration") == f"{done['audio']['duration_seconds']:.2f} s"
    assert page.text_of("request-id") == done["request_id"]
    assert not page.driver.find_element(By.ID, "problem").is_displayed()


# --- the page itself ---------------------------------------------------------------------------------


def inline_hash(html: str, tag: str) -> str:
    (body,) = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
    return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"


def test_page_policy_allows_exactly_its_own_inline_script_and_style() -> None:
    html = PAGE.read_text(encoding="utf-8")
    (policy,) = re.findall(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', html)
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["connect-src"] == "'self'"
    assert directives["script-src"] == inline_hash(html, "script"), "update the page's script-src hash"
    assert directives["style-src"] == inline_hash(html, "style"), "update the page's style-src hash"
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html


# --- against the replay server -----------------------------------------------------------------------


def test_replayed_stream_plays_every_sample_and_links_the_wav(
    browser: WebDriver, replay_server: ServiceProcess
) -> None:
    page = Playground(browser, replay_server.url)
    question = "What does the replay server say?"
    state = page.speak(question, voice="marin", key="replay-function-key")
    assert state["state"] == "done", state["error"]

    wav = http_get(page.download_url())
    assert page.download_url() == state["done"]["audio_url"]
    assert_streamed_answer(page, state, wav)
    assert state["transcript"] == TRANSCRIPT
    assert state["scheduledSamples"] == len(tone_pcm()) // 2
    sent = recorded_requests(replay_server)[-1]
    assert sent["headers"] == {
        "content-type": "application/json",
        "accept": "text/event-stream",
        "x-functions-key": "replay-function-key",
    }
    assert json.loads(sent["body"]) == {"text": question, "voice": "marin"}
    assert page.keeps_nothing()
    assert "replay-function-key" not in browser.current_url
    assert page.console_errors() == []
    page.screenshot("replay-done")
    page.screenshot("replay-done-narrow", NARROW)
    assert not page.overflows_horizontally()


@pytest.mark.parametrize(
    ("text", "status", "detail", "meta"),
    [
        ("", 400, "text: must not be blank", "urn:realtime-speech:problem:invalid-request"),
        ("[[replay:busy]]", 429, "The model endpoint is rate limited", "retry after 7 s"),
    ],
)
def test_problem_before_the_stream_is_shown(
    browser: WebDriver, replay_server: ServiceProcess, text: str, status: int, detail: str, meta: str
) -> None:
    page = Playground(browser, replay_server.url)
    state = page.speak(text)
    assert state["state"] == "error"
    assert state["done"] is None
    assert state["error"]["status"] == status
    assert state["error"]["detail"].startswith(detail)
    assert page.text_of("problem-detail") == state["error"]["detail"]
    assert page.text_of("problem-title") == state["error"]["title"]
    assert meta in page.text_of("problem-meta")
    assert state["error"]["request_id"] in page.text_of("problem-meta")
    assert not browser.find_element(By.ID, "speak").get_attribute("disabled")
    if status == 400:
        page.screenshot("replay-bad-request")


@pytest.mark.parametrize(
    ("directive", "title"),
    [("[[replay:error]]", "The model endpoint failed"), ("[[replay:cut]]", "The answer was cut off")],
)
def test_stream_that_fails_midway_keeps_what_was_heard(
    browser: WebDriver, replay_server: ServiceProcess, directive: str, title: str
) -> None:
    page = Playground(browser, replay_server.url)
    state = page.speak(f"Fail midway {directive}")
    assert state["state"] == "error"
    assert state["error"]["title"] == page.text_of("problem-title") == title
    heard = sum(len(delta) for delta in list(odd_deltas(tone_pcm()))[:SPLIT_FROM_ERROR])
    assert state["scheduledSamples"] == heard // 2
    assert state["transcript"] == page.text_of("transcript") == "Hello from"
    assert state["done"] is None
    assert browser.find_element(By.ID, "result").is_displayed() is False


# --- against the function app --------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def playground_host(speech_host: SpeechHost) -> AsyncIterator[SpeechClient]:
    async with speech_host(PLAYGROUND_ENABLED="true") as client:
        yield client


async def test_function_app_page_streams_the_answer(
    browser: WebDriver, playground_host: SpeechClient
) -> None:
    async with playground_host.http.get(f"{playground_host.host_url}/api/playground") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")
    text = unique_text("Playground question")

    def ask() -> tuple[Playground, dict[str, Any]]:
        page = Playground(browser, playground_host.host_url)
        return page, page.speak(text, voice="coral")

    page, state = await asyncio.to_thread(ask)
    assert state["state"] == "done", state["error"]
    wav = await playground_host.download(page.download_url())
    assert_streamed_answer(page, state, wav)
    session = await playground_host.emulator_session(text)
    assert state["transcript"] == session["transcript"]
    assert page.console_errors() == []
    page.screenshot("function-app-done")


async def test_function_app_page_shows_why_a_request_is_bad(
    browser: WebDriver, playground_host: SpeechClient
) -> None:
    _, expected, _ = await playground_host.post({"text": "", "voice": "alloy"})

    def ask() -> tuple[Playground, dict[str, Any]]:
        page = Playground(browser, playground_host.host_url)
        return page, page.speak("")

    page, state = await asyncio.to_thread(ask)
    assert state["state"] == "error"
    assert state["error"]["status"] == expected["status"] == 400
    assert state["error"]["detail"] == page.text_of("problem-detail") == expected["detail"]
    assert state["error"]["type"] == expected["type"]


async def test_function_app_page_stop_cancels_the_answer_and_keeps_nothing(
    browser: WebDriver, playground_host: SpeechClient
) -> None:
    """Stop while the model is still speaking (30 s in real time): the page leaves the stream, the
    app cancels the model's response and closes the session, and nothing is committed."""
    text = unique_text("[[emulator:slow pace=1 seconds=30]] Stop me during")
    blobs_before = await playground_host.blob_names()

    def ask_then_stop() -> tuple[dict[str, Any], str]:
        page = Playground(browser, playground_host.host_url)
        page.driver.find_element(By.ID, "text").send_keys(text)
        page.driver.find_element(By.ID, "speak").click()
        WebDriverWait(browser, 60).until(lambda _: page.state()["scheduledSamples"] > 0)
        assert page.state()["state"] == "streaming"
        # set from speech.started on (in a panel still hidden, so read as the DOM has it)
        request_id = page.driver.find_element(By.ID, "request-id").get_attribute("textContent")
        page.driver.find_element(By.ID, "stop").click()
        WebDriverWait(browser, 10).until(lambda _: page.state()["state"] != "streaming")
        assert page.text_of("status-text") == "Stopped"
        return page.state(), request_id

    state, request_id = await asyncio.to_thread(ask_then_stop)
    assert state["state"] == "idle" and state["done"] is None and state["error"] is None
    outcome = await playground_host.request_outcome(request_id)
    assert (outcome["status"], outcome["error"], outcome["stream"]) == (499, "client-closed-request", True)
    await playground_host.assert_sessions_closed()
    session = await playground_host.emulator_session(text)
    assert "response.cancel" in session["client_event_types"]
    assert session["ended_by"] == "client_close"
    assert 0 < session["audio_bytes"] < 30 * 48_000
    assert await playground_host.blob_names() == blobs_before
