"""The rows of the README's error table that need more than a scripted model fault, through a function
host against the stand-ins: the playground switched off, a bug inside the app, a handshake refused
with a 4xx other than 401/403, and a deadline reached after a backend refused.

(The other rows: tests/test_speech_errors.py, tests/test_bad_input.py, tests/test_speech_audio_in.py,
tests/test_idempotency.py and tests/test_speech_pool.py.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from .conftest import SpeechHost
from .faulty_function_app import FAULT_SECRET, FAULT_WORD
from .speech_client import SpeechClient, assert_problem
from .test_speech_api import unique_text
from .test_speech_errors import assert_answers, fails_cleanly, refusals

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAULTY_APP = "tests.faulty_function_app"
DEADLINE_SECONDS = 4  # short, yet roomy for a normal answer on a busy machine


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def faulty(speech_host: SpeechHost) -> AsyncIterator[SpeechClient]:
    """The real app with one planted bug (`tests.faulty_function_app`) and a short deadline."""
    async with speech_host(app=FAULTY_APP, REALTIME_TIMEOUT_SECONDS=str(DEADLINE_SECONDS)) as client:
        yield client


# --- 404 not-found --------------------------------------------------------------------------------------


async def test_the_playground_is_a_404_problem_while_it_is_off(speech: SpeechClient) -> None:
    url = f"{speech.host_url}/api/playground"
    async with speech.http.get(url, headers={"x-request-id": "playground-off"}) as response:
        problem = assert_problem((response.status, await response.json(), response.headers), 404, "not-found")
    assert problem["request_id"] == "playground-off"
    assert "PLAYGROUND_ENABLED" in problem["detail"]


# --- 500 internal-error ------------------------------------------------------------------------------


async def test_a_bug_inside_the_app_is_a_500_without_its_details_and_commits_nothing(
    faulty: SpeechClient,
) -> None:
    text = unique_text("Tell me about") + f" {FAULT_WORD}."
    problem, (_, _, headers) = await fails_cleanly(faulty, text, 500, "internal-error")
    for shown in (problem["title"], problem["detail"], str(headers)):
        assert FAULT_SECRET not in shown and "planted" not in shown and "RuntimeError" not in shown
    session = await faulty.emulator_session(text)
    assert session["audio_bytes"] > 0  # the bug struck in the middle of the answer
    assert "response.cancel" in session["client_event_types"]
    summary = await faulty.request_outcome(problem["request_id"])
    assert (summary["status"], summary["error"]) == (500, "internal-error")
    log = faulty.host.log_path.read_text()
    assert "planted bug" in log and FAULT_SECRET.removeprefix("sig=") not in log  # logged, redacted


async def test_a_bug_after_the_stream_began_is_a_500_error_event(faulty: SpeechClient) -> None:
    before = await faulty.blob_names()
    text = unique_text("Stream me") + f" {FAULT_WORD}."
    stream = await faulty.stream({"text": text}, {"x-request-id": "sse-bug"})
    assert stream.status == 200 and stream.types[0] == "speech.started"
    assert stream.types[-1] == "error" and "speech.done" not in stream.types
    problem = stream.last()["error"]
    assert problem["type"] == "urn:realtime-speech:problem:internal-error" and problem["status"] == 500
    assert problem["request_id"] == "sse-bug" and problem["title"] and problem["detail"]
    assert FAULT_SECRET not in str(stream.events) and "Traceback" not in str(stream.events)
    await faulty.assert_sessions_closed()
    assert await faulty.blob_names() == before
    summary = await faulty.request_outcome("sse-bug")
    assert (summary["status"], summary["error"], summary["stream"]) == (500, "internal-error", True)
    await assert_answers(faulty)


# --- 502 upstream-failed: a handshake refused with another 4xx ----------------------------------------


@pytest.mark.parametrize(("refused", "detail"), [(404, "404"), (400, "HTTP 400")])
async def test_a_handshake_refused_with_another_4xx_is_a_502_not_retried(
    speech: SpeechClient, refused: int, detail: str
) -> None:
    before = await refusals(speech, refused)
    await speech.refuse_handshakes(refused, 5)
    try:
        blobs_before = await speech.blob_names()
        problem = assert_problem(await speech.post({"text": unique_text()}), 502, "upstream-failed")
        stream = await speech.stream({"text": unique_text()})
        assert await speech.blob_names() == blobs_before
    finally:
        await speech.refuse_handshakes(refused, 0)
    assert detail in problem["detail"]
    assert await refusals(speech, refused) - before == 2  # one attempt each: a 4xx is not retried
    assert stream.status == 502 and not stream.events  # refused before any stream began
    assert stream.problem["type"] == "urn:realtime-speech:problem:upstream-failed"
    await assert_answers(speech)


# --- a deadline after a backend refused reports the backend's problem -------------------------------


@pytest.mark.parametrize(
    ("refused", "status", "code"), [(429, 429, "upstream-rate-limited"), (503, 503, "upstream-unavailable")]
)
async def test_a_deadline_after_a_refused_handshake_reports_the_refusal(
    faulty: SpeechClient, refused: int, status: int, code: str
) -> None:
    """The handshake is refused once, the retry is admitted, then the model stalls until the
    deadline: the caller learns about the refusal (its status and Retry-After), not a bare 504."""
    before = await refusals(faulty, refused)
    await faulty.refuse_handshakes(refused, 1, retry_after=0)
    text = unique_text("[[emulator:stall]] Tell me about")
    problem, (_, _, headers) = await fails_cleanly(faulty, text, status, code)
    assert await refusals(faulty, refused) - before == 1
    assert f"HTTP {refused}" in problem["detail"]
    assert problem["detail"].endswith(f"No answer within {DEADLINE_SECONDS} s.")
    assert headers["Retry-After"] == "1"
    session = await faulty.emulator_session(text)  # the retry was admitted, and the model stalled
    assert session["scenario"] == "stall" and session["audio_bytes"] > 0
