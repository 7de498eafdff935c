"""The playground page (`GET /api/playground`) in headless Chromium, driven through Selenium.

Against `tests.sse_replay_server` (a synthetic chat completions stream that follows the contract,
written in every awkward way SSE allows) and against the function app on the local stand-ins, with a
fake microphone that plays a WAV the emulator can hear. Screenshots go to `out/playground/`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from devtools.process import PORT_PLACEHOLDER, REPO_ROOT, ServiceProcess, http_probe
from devtools.realtime_emulator import synthesize
from realtime_speech.wav import WAV_HEADER_BYTES

from .sse_replay_server import AUDIO_ID, PAGE, SPLIT_FROM_ERROR, TRANSCRIPT, odd_deltas, tone_pcm
from .test_speech_api import parse_wav

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
WIDE, NARROW = (1280, 800), (390, 844)
SETTLED = ("done", "error")
SPOKEN_QUESTION = "Can you hear my microphone?"
SAMPLE_RATE = 24000


def spoken_question_wav(path: Path) -> Path:
    """The fake microphone's input: a breath of silence, the emulator's tones for `SPOKEN_QUESTION`,
    then silence long enough that the recording never loops back into the tones."""
    tones = np.frombuffer(synthesize(SPOKEN_QUESTION).pcm, dtype=np.int16)
    silence = np.zeros(SAMPLE_RATE * 30, dtype=np.int16)
    sf.write(
        path, np.concatenate([silence[: SAMPLE_RATE // 3], tones, silence]), SAMPLE_RATE, subtype="PCM_16"
    )
    return path


def chromium(profile: Path, *flags: str) -> WebDriver:
    assert CHROMIUM and CHROMEDRIVER, "chromium and chromedriver: run `python3 -m devtools.prerequisites`"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, *flags):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager never looks for (or downloads) a driver.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_window_size(*WIDE)
    return driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """Chromium with a fake microphone that says `SPOKEN_QUESTION` in the emulator's tones."""
    folder = tmp_path_factory.mktemp("chromium")
    wav = spoken_question_wav(folder / "microphone.wav")
    driver = chromium(
        folder / "profile",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
    )
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
    """The page in the browser: type or speak turns, read `window.playground` and the DOM."""

    def __init__(self, driver: WebDriver, base_url: str, key: str | None = None) -> None:
        self.driver = driver
        driver.set_window_size(*WIDE)
        driver.get(f"{base_url}/api/playground")
        loaded = driver.execute_script("return typeof window.playground === 'object'")
        assert loaded, f"no playground page (with its script running) at {base_url}/api/playground"
        driver.get_log("browser")  # start each page with an empty console
        if key is not None:
            driver.find_element(By.ID, "function-key").send_keys(key)

    def send(self, text: str, voice: str | None = None, timeout: float = 60) -> dict[str, Any]:
        """Type `text`, send it and wait for its answer to end; returns `window.playground`."""
        if voice is not None:
            Select(self.driver.find_element(By.ID, "voice")).select_by_value(voice)
        box = self.driver.find_element(By.ID, "text")
        box.clear()
        box.send_keys(text)
        self.driver.find_element(By.ID, "send").click()
        return self.settled(timeout)

    def speak(self, seconds: float, timeout: float = 60) -> dict[str, Any]:
        """Record `seconds` from the microphone (by the page's own count), send, wait for the answer."""
        mic = self.driver.find_element(By.ID, "mic")
        mic.click()
        WebDriverWait(self.driver, timeout).until(lambda _: self.state()["recordedSeconds"] >= seconds)
        assert mic.get_attribute("aria-pressed") == "true"
        mic.click()
        return self.settled(timeout)

    def settled(self, timeout: float = 60) -> dict[str, Any]:
        WebDriverWait(self.driver, timeout).until(lambda _: self.state()["state"] in SETTLED)
        return self.state()

    def state(self) -> dict[str, Any]:
        return self.driver.execute_script(
            "const p = window.playground;"
            "return {...p, turns: p.turns.map(({view, buffers, audio, ...turn}) => turn)}"
        )

    def bubbles(self) -> list[str]:
        return [e.text for e in self.driver.find_elements(By.CSS_SELECTOR, "#conversation .turn .bubble")]

    def console_errors(self) -> list[str]:
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]

    def screenshot(self, name: str, size: tuple[int, int] = WIDE) -> Path:
        """Save a PNG of the page at `size` and print where it is."""
        self.driver.set_window_size(*size)
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


def last_answer(state: dict[str, Any]) -> dict[str, Any]:
    answer = state["turns"][-1]
    assert answer["role"] == "assistant"
    return answer


def assert_played_everything(state: dict[str, Any], wav: bytes) -> None:
    """Every sample streamed was scheduled for playback, and they are the stored file's samples."""
    answer = last_answer(state)
    assert state["error"] is None
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    _, pcm = parse_wav(wav)
    assert state["scheduledSamples"] == state["streamedSamples"] == answer["samples"] == len(pcm) // 2 > 0
    assert len(wav) == WAV_HEADER_BYTES + 2 * answer["samples"]


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


def test_every_control_has_a_name_and_a_visible_focus(
    browser: WebDriver, replay_server: ServiceProcess
) -> None:
    """Keyboard users reach every control in order, see where the focus is, and hear the conversation."""
    page = Playground(browser, replay_server.url)
    controls = ["text", "mic", "send", "new-conversation", "model", "voice", "function-key"]
    reached: list[str] = []
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    for _ in range(20):
        focused = browser.switch_to.active_element
        identifier = focused.get_attribute("id")
        if identifier in controls and identifier not in reached:
            reached.append(identifier)
            outline = browser.execute_script(
                "const s = getComputedStyle(arguments[0]); return [s.outlineStyle, s.outlineWidth]", focused
            )
            assert outline[0] != "none" and outline[1] != "0px", f"{identifier} shows no focus"
        focused.send_keys(Keys.TAB)
    assert sorted(reached) == sorted(controls), "not every control is reachable with Tab"
    names = browser.execute_script(
        "return [...document.querySelectorAll('button, select, textarea, input')].map(e =>"
        " [e.id, (e.labels?.[0]?.textContent || e.getAttribute('aria-label') || e.textContent).trim()])"
    )
    assert all(name for _, name in names), names
    log = browser.find_element(By.ID, "conversation")
    assert log.get_attribute("role") == "log" and log.get_attribute("aria-live") == "polite"
    assert page.console_errors() == []


# --- against the replay server -----------------------------------------------------------------------


def test_replayed_stream_plays_every_sample_and_links_the_wav(
    browser: WebDriver, replay_server: ServiceProcess
) -> None:
    page = Playground(browser, replay_server.url, key="replay-function-key")
    question = "What does the replay server say?"
    state = page.send(question, voice="marin")
    assert state["state"] == "done", state["error"]

    answer = last_answer(state)
    wav = http_get(answer["url"])
    assert_played_everything(state, wav)
    assert answer["transcript"] == state["transcript"] == TRANSCRIPT == page.bubbles()[-1]
    assert state["scheduledSamples"] == len(tone_pcm()) // 2
    assert answer["audioId"] == AUDIO_ID and answer["finishReason"] == "stop"
    link = browser.find_element(By.CSS_SELECTOR, "#conversation .turn.assistant a.download")
    assert link.get_attribute("href") == answer["url"]
    sent = recorded_requests(replay_server)
    assert sent[-1]["headers"] == {
        "content-type": "application/json",
        "accept": "text/event-stream",
        "x-functions-key": "replay-function-key",
    }
    assert json.loads(sent[-1]["body"]) == {
        "model": "gpt-realtime",
        "messages": [{"role": "user", "content": question}],
        "modalities": ["text", "audio"],
        "audio": {"voice": "marin", "format": "pcm16"},
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert page.keeps_nothing()
    assert "replay-function-key" not in browser.current_url
    assert page.console_errors() == []


@pytest.mark.parametrize(
    ("text", "status", "message", "meta"),
    [
        (" ", 400, "messages[0].content: must not be blank", "invalid_request_error (messages[0].content)"),
        ("[[replay:busy]]", 429, "The model endpoint is rate limited", "retry after 7 s"),
    ],
)
def test_error_before_the_stream_is_shown_and_left_out(
    browser: WebDriver, replay_server: ServiceProcess, text: str, status: int, message: str, meta: str
) -> None:
    page = Playground(browser, replay_server.url)
    state = page.send(text)
    assert state["state"] == "error"
    assert state["error"]["status"] == status
    assert state["error"]["message"].startswith(message)
    problem = browser.find_element(By.CSS_SELECTOR, "#conversation .problem")
    assert state["error"]["message"] in problem.text and meta in problem.text
    assert all(turn["excluded"] for turn in state["turns"])
    assert not browser.find_element(By.ID, "send").get_attribute("disabled")


@pytest.mark.parametrize(
    ("directive", "message"),
    [
        ("[[replay:error]]", "The model stopped answering"),
        ("[[replay:cut]]", "The stream ended before the answer was complete."),
    ],
)
def test_stream_that_fails_midway_keeps_what_was_heard(
    browser: WebDriver, replay_server: ServiceProcess, directive: str, message: str
) -> None:
    page = Playground(browser, replay_server.url)
    state = page.send(f"Fail midway {directive}")
    assert state["state"] == "error"
    assert state["error"]["message"].startswith(message)
    heard = sum(len(delta) for delta in list(odd_deltas(tone_pcm()))[:SPLIT_FROM_ERROR])
    assert state["scheduledSamples"] == heard // 2
    assert last_answer(state)["transcript"] == "Hello from"
    assert last_answer(state)["excluded"] is True


def test_a_refused_or_missing_microphone_is_explained(replay_server: ServiceProcess, tmp_path: Path) -> None:
    """A browser with no microphone to give (no fake device, no prompt to answer) gets a clear notice."""
    driver = chromium(tmp_path / "profile", "--deny-permission-prompts")
    try:
        page = Playground(driver, replay_server.url)
        driver.find_element(By.ID, "mic").click()
        notice = driver.find_element(By.ID, "mic-notice")
        WebDriverWait(driver, 20).until(lambda _: notice.is_displayed())
        assert re.search(r"microphone was refused|No microphone was found", notice.text), notice.text
        assert page.state()["turns"] == [] and page.state()["state"] == "idle"
        assert driver.find_element(By.ID, "mic").get_attribute("aria-pressed") == "false"
    finally:
        driver.quit()
