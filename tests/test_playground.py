"""The playground page (`GET /api/playground`) in headless Chromium, driven through Selenium.

Against `tests.sse_replay_server` (a synthetic chat completions stream that follows the contract,
written in every awkward way SSE allows) and against the function app on the local stand-ins, with a
fake microphone that plays a WAV the emulator can hear. Screenshots go to `out/playground/`.
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

import numpy as np
import pytest
import pytest_asyncio
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

from .conftest import SpeechHost
from .speech_client import SpeechClient
from .sse_replay_server import AUDIO_ID, PAGE, SPLIT_FROM_ERROR, TRANSCRIPT, odd_deltas, tone_pcm
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


# --- against the function app --------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def playground_host(speech_host: SpeechHost) -> AsyncIterator[SpeechClient]:
    async with speech_host(PLAYGROUND_ENABLED="true") as client:
        yield client


def said(session: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The conversation items the emulator received and answered: role, content type, text."""
    return [
        (
            item["role"],
            item["content"][0]["type"],
            item["content"][0].get("text") or item["content"][0].get("transcript"),
        )
        for item in session["items"]
    ]


async def test_three_typed_turns_are_one_conversation(
    browser: WebDriver, playground_host: SpeechClient
) -> None:
    """Each turn goes with the turns before it (earlier answers by their audio id); the model sees them
    as items in order, and every sample streamed is played and stored."""
    texts = [unique_text("First turn"), unique_text("Second turn"), unique_text("Third turn")]

    def converse() -> tuple[Playground, dict[str, Any]]:
        page = Playground(browser, playground_host.host_url)
        for text in texts:
            state = page.send(text, voice="coral")
            assert state["state"] == "done", state["error"]
        return page, state

    page, state = await asyncio.to_thread(converse)
    answers = [turn for turn in state["turns"] if turn["role"] == "assistant"]
    assert [answer["transcript"] for answer in answers] == texts  # the emulator answers each question
    last_request = state["requests"][-1]
    assert last_request["messages"] == [
        {"role": "user", "content": texts[0]},
        {"role": "assistant", "audio": {"id": answers[0]["audioId"]}},
        {"role": "user", "content": texts[1]},
        {"role": "assistant", "audio": {"id": answers[1]["audioId"]}},
        {"role": "user", "content": texts[2]},
    ]
    session = await playground_host.emulator_session(texts[2])
    assert said(session) == [
        ("user", "input_text", texts[0]),
        ("assistant", "output_text", texts[0]),
        ("user", "input_text", texts[1]),
        ("assistant", "output_text", texts[1]),
        ("user", "input_text", texts[2]),
        ("assistant", "output_audio", texts[2]),
    ]
    assert session["session"]["audio"]["output"]["voice"] == "coral"
    assert_played_everything(state, await playground_host.download(answers[-1]["url"]))
    assert page.bubbles() == [text for pair in zip(texts, texts, strict=True) for text in pair]
    assert page.console_errors() == []
    page.screenshot("conversation")
    page.screenshot("conversation-phone", NARROW)
    assert not page.overflows_horizontally()


async def test_a_spoken_turn_is_heard_and_answered(browser: WebDriver, playground_host: SpeechClient) -> None:
    """The fake microphone says `SPOKEN_QUESTION` in the emulator's tones: the page records it as a WAV,
    sends it as `input_audio`, shows what was heard and plays the answer."""
    tones_seconds = len(synthesize(SPOKEN_QUESTION).pcm) / 2 / SAMPLE_RATE

    def speak() -> tuple[Playground, dict[str, Any]]:
        page = Playground(browser, playground_host.host_url)
        return page, page.speak(tones_seconds + 1.0)

    page, state = await asyncio.to_thread(speak)
    assert state["state"] == "done", state["error"]
    user, answer = state["turns"]
    assert user["spoken"] and user["heard"] == SPOKEN_QUESTION
    assert answer["transcript"] == SPOKEN_QUESTION  # the emulator repeats what it heard
    [part] = state["requests"][-1]["messages"][0]["content"]
    assert part["type"] == "input_audio" and part["input_audio"]["format"] == "wav"
    [session] = [s for s in await playground_host.emulator_sessions() if s["user_text"] == SPOKEN_QUESTION]
    [heard] = session["input_audio"]
    assert heard["heard"] == SPOKEN_QUESTION
    assert f"Heard: “{SPOKEN_QUESTION}”" in page.bubbles()[0]
    assert_played_everything(state, await playground_host.download(answer["url"]))
    page.screenshot("spoken-turn")


async def test_a_failed_turn_is_shown_and_the_next_turn_leaves_it_out(
    browser: WebDriver, playground_host: SpeechClient
) -> None:
    failing, after = unique_text("[[emulator:error_mid]] Fail"), unique_text("Carry on")

    def converse() -> tuple[Playground, dict[str, Any], dict[str, Any]]:
        page = Playground(browser, playground_host.host_url)
        failed = page.send(failing)
        return page, failed, page.send(after)

    page, failed, state = await asyncio.to_thread(converse)
    # after the stream began: the error event, OpenAI-shaped, with no HTTP status of its own
    assert failed["state"] == "error", failed
    assert (failed["error"]["type"], failed["error"]["code"]) == ("server_error", "upstream_failed")
    problem = browser.find_element(By.CSS_SELECTOR, "#conversation .problem")
    assert failed["error"]["message"] in problem.text and "not kept in the conversation" in problem.text
    assert state["state"] == "done", state["error"]
    assert state["requests"][-1]["messages"] == [{"role": "user", "content": after}]
    assert said(await playground_host.emulator_session(after))[0] == ("user", "input_text", after)
    page.screenshot("failed-turn")


async def test_a_new_conversation_sends_no_history(browser: WebDriver, playground_host: SpeechClient) -> None:
    before, fresh = unique_text("Forget me"), unique_text("Fresh start")

    def converse() -> dict[str, Any]:
        page = Playground(browser, playground_host.host_url)
        assert page.send(before)["state"] == "done"
        browser.find_element(By.ID, "new-conversation").click()
        assert page.state()["turns"] == [] and page.bubbles() == []
        return page.send(fresh)

    state = await asyncio.to_thread(converse)
    assert state["state"] == "done", state["error"]
    assert state["requests"][-1]["messages"] == [{"role": "user", "content": fresh}]
    assert said(await playground_host.emulator_session(fresh)) == [
        ("user", "input_text", fresh),
        ("assistant", "output_audio", fresh),
    ]


async def test_stop_cancels_the_answer_and_keeps_nothing(
    browser: WebDriver, playground_host: SpeechClient
) -> None:
    """Stop while the model is still speaking (30 s in real time): the page leaves the stream, the
    app cancels the model's response and closes the session, and nothing is committed."""
    text = unique_text("[[emulator:slow pace=1 seconds=30]] Stop me during")
    blobs_before = await playground_host.blob_names()

    def ask_then_stop() -> dict[str, Any]:
        page = Playground(browser, playground_host.host_url)
        page.driver.find_element(By.ID, "text").send_keys(text)
        page.driver.find_element(By.ID, "send").click()
        WebDriverWait(browser, 60).until(lambda _: page.state()["scheduledSamples"] > 0)
        assert page.state()["state"] == "streaming"
        page.driver.find_element(By.ID, "stop").click()
        WebDriverWait(browser, 10).until(lambda _: page.state()["state"] != "streaming")
        assert page.driver.find_element(By.ID, "status-text").text == "Stopped"
        return page.state()

    state = await asyncio.to_thread(ask_then_stop)
    assert state["state"] == "idle" and state["error"] is None
    user, answer = state["turns"]
    assert user["excluded"] and answer["excluded"] and "url" not in answer
    outcome = await playground_host.request_outcome(answer["requestId"])
    assert (outcome["status"], outcome["error"], outcome["stream"]) == (499, "client-closed-request", True)
    await playground_host.assert_sessions_closed()
    session = await playground_host.emulator_session(text)
    assert "response.cancel" in session["client_event_types"]
    assert session["ended_by"] == "client_close"
    assert await playground_host.blob_names() == blobs_before


async def test_the_page_may_use_the_microphone_and_nothing_more(playground_host: SpeechClient) -> None:
    async with playground_host.http.get(f"{playground_host.host_url}/api/playground") as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/html")
        policy = dict(
            part.strip().split("=", 1) for part in response.headers["Permissions-Policy"].split(",")
        )
    assert policy.pop("microphone") == "(self)"
    assert set(policy.values()) == {"()"}
    assert response.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
