"""Every row of the README's error table, through a function host against the stand-ins' scripted
faults: the status and problem document, no blob written, every realtime connection closed, and the
next normal request answered.

The hosts here serve `tests.verbose_function_app` (DEBUG logging), so the last tests can read their
logs for secrets after all these failures.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from devtools.process import free_port
from devtools.stack import Stack

from .conftest import SpeechHost
from .speech_client import Response, SpeechClient, assert_problem
from .test_speech_api import parse_wav, unique_text

pytestmark = pytest.mark.asyncio(loop_scope="session")

VERBOSE_APP = "tests.verbose_function_app"
SHORT_DEADLINE_SECONDS = 2


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def faults(speech_host: SpeechHost) -> AsyncIterator[SpeechClient]:
    """A host of its own (managed identity, DEBUG logging) for the fault tests."""
    async with speech_host(app=VERBOSE_APP) as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def short_deadline(speech_host: SpeechHost) -> AsyncIterator[SpeechClient]:
    async with speech_host(app=VERBOSE_APP, REALTIME_TIMEOUT_SECONDS=str(SHORT_DEADLINE_SECONDS)) as client:
        yield client


async def fails_cleanly(client: SpeechClient, text: str, status: int, code: str) -> tuple[dict, Response]:
    """Ask `text`; check the problem, that nothing was written, that every realtime connection was
    closed and that a normal request right after succeeds. Returns the problem and the response."""
    blobs_before = await client.blob_names()
    response = await client.post({"text": text})
    problem = assert_problem(response, status, code)
    await client.assert_sessions_closed()
    assert await client.blob_names() == blobs_before
    await assert_answers(client)
    return problem, response


async def assert_answers(client: SpeechClient) -> set[str]:
    """A normal request succeeds; returns the names of the blobs it wrote (WAV and record)."""
    status, body, _ = await client.post({"text": unique_text("And now a normal question about")})
    assert status == 200, body
    return {body["blob_name"], body["blob_name"].removesuffix(".wav") + ".json"}


async def refusals(client: SpeechClient, status: int) -> int:
    return (await client.emulator_stats())["handshake_refusals_by_status"].get(str(status), 0)


# --- the model fails after the handshake ---------------------------------------------------------


@pytest.mark.parametrize(
    ("directive", "status", "code", "detail", "ended_by"),
    [
        ("[[emulator:error_mid]]", 502, "upstream-failed", "server_error", "client_close"),
        ("[[emulator:failed]]", 502, "upstream-failed", "status 'failed'", "client_close"),
        ("[[emulator:cancelled]]", 502, "upstream-failed", "client_cancelled", "client_close"),
        (
            "[[emulator:cancelled reason=turn_detected]]",
            502,
            "upstream-failed",
            "turn_detected",
            "client_close",
        ),
        ("[[emulator:drop]]", 502, "upstream-failed", "dropped", "emulator_drop"),
        ("[[emulator:rate_limit]]", 429, "upstream-rate-limited", "rate limit", "client_close"),
    ],
)
async def test_a_model_failure_after_the_handshake_is_its_documented_status(
    faults: SpeechClient, directive: str, status: int, code: str, detail: str, ended_by: str
) -> None:
    text = unique_text(f"{directive} Tell me about")
    problem, _ = await fails_cleanly(faults, text, status, code)
    assert detail in problem["detail"]
    session = await faults.emulator_session(text)
    assert session["ended_by"] == ended_by


async def test_a_rate_limit_event_passes_on_the_wait_the_model_asked_for(faults: SpeechClient) -> None:
    _, (_, _, headers) = await fails_cleanly(
        faults, unique_text("[[emulator:rate_limit]]"), 429, "upstream-rate-limited"
    )
    assert headers["Retry-After"] == "20"  # "Please retry after 20 seconds."


async def test_no_response_done_before_the_deadline_is_a_504(short_deadline: SpeechClient) -> None:
    text = unique_text("[[emulator:stall]] Tell me about")
    started = time.monotonic()
    problem, _ = await fails_cleanly(short_deadline, text, 504, "deadline-exceeded")
    assert SHORT_DEADLINE_SECONDS <= time.monotonic() - started < SHORT_DEADLINE_SECONDS + 10
    assert f"{SHORT_DEADLINE_SECONDS} s" in problem["detail"]
    session = await short_deadline.emulator_session(text)
    assert session["ended_by"] == "client_close" and session["audio_bytes"] > 0


async def test_an_incomplete_response_keeps_what_was_said_and_says_so(faults: SpeechClient) -> None:
    text = unique_text("[[emulator:incomplete at=0.4]] Tell me a story about")
    status, body, _ = await faults.post({"text": text})
    assert status == 200, body
    assert (body["status"], body["status_reason"]) == ("incomplete", "max_output_tokens")
    session = await faults.emulator_session(text)
    _, pcm = parse_wav(await faults.download(body["audio_url"]))
    assert hashlib.sha256(pcm).hexdigest() == session["audio_sha256"]
    assert body["transcript"] == session["transcript"]
    full = await faults.post({"text": text.replace("[[emulator:incomplete at=0.4]]", "")})
    assert 0 < len(pcm) < full[1]["audio"]["bytes"] - 44


# --- the handshake is refused ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("refused", "retry_after", "status", "code", "attempts"),
    [
        (429, 0, 429, "upstream-rate-limited", 4),
        (503, 0, 503, "upstream-unavailable", 4),
        (500, None, 503, "upstream-unavailable", 4),
        (401, None, 502, "upstream-auth-failed", 1),
        (403, None, 502, "upstream-auth-failed", 1),
        (404, None, 502, "upstream-failed", 1),
    ],
)
async def test_a_refused_handshake_is_retried_when_it_may_pass_then_reported(
    faults: SpeechClient, refused: int, retry_after: int | None, status: int, code: str, attempts: int
) -> None:
    before = await refusals(faults, refused)
    await faults.refuse_handshakes(refused, 10, retry_after)
    try:
        blobs_before = await faults.blob_names()
        problem = assert_problem(await faults.post({"text": unique_text()}), status, code)
        assert await faults.blob_names() == blobs_before
    finally:
        await faults.refuse_handshakes(refused, 0)
    assert await refusals(faults, refused) - before == attempts
    assert f"HTTP {refused}" in problem["detail"]
    await assert_answers(faults)


async def test_auth_failures_say_which_side_is_misconfigured(faults: SpeechClient) -> None:
    details = {}
    for refused in (401, 403):
        await faults.refuse_handshakes(refused, 1)
        response = await faults.post({"text": unique_text()})
        details[refused] = assert_problem(response, 502, "upstream-auth-failed")["detail"]
    assert "token" in details[401] and "API key" in details[401]
    assert "role" in details[403] and "Cognitive Services OpenAI User" in details[403]


async def test_a_transient_refusal_is_retried_honouring_retry_after(faults: SpeechClient) -> None:
    before = await refusals(faults, 429)
    await faults.refuse_handshakes(429, 2, retry_after=1)
    started = time.monotonic()
    status, body, _ = await faults.post({"text": unique_text()})
    assert status == 200, body
    assert time.monotonic() - started >= 2.0  # two waits of Retry-After: 1
    assert await refusals(faults, 429) - before == 2


async def test_no_retry_waits_past_the_deadline(short_deadline: SpeechClient) -> None:
    before = await refusals(short_deadline, 429)
    await short_deadline.refuse_handshakes(429, 1, retry_after=SHORT_DEADLINE_SECONDS + 3)
    started = time.monotonic()
    _, (_, _, headers) = await fails_cleanly(short_deadline, unique_text(), 429, "upstream-rate-limited")
    assert time.monotonic() - started < SHORT_DEADLINE_SECONDS + 10
    assert headers["Retry-After"] == str(SHORT_DEADLINE_SECONDS + 3)
    assert await refusals(short_deadline, 429) - before == 1


async def test_an_unreachable_model_endpoint_is_a_503_after_retries(speech_host: SpeechHost) -> None:
    async with speech_host(AZURE_OPENAI_ENDPOINT=f"http://127.0.0.1:{free_port()}") as unreachable:
        started = time.monotonic()
        problem = assert_problem(await unreachable.post({"text": unique_text()}), 503, "upstream-unavailable")
        assert time.monotonic() - started < 10
    assert "could not be reached" in problem["detail"]


async def test_missing_settings_are_a_500_naming_them(speech_host: SpeechHost) -> None:
    async with speech_host(AUDIO_STORAGE_ACCOUNT_URL=None) as misconfigured:
        problem = assert_problem(await misconfigured.post({"text": unique_text()}), 500, "not-configured")
    assert "AUDIO_STORAGE_ACCOUNT_URL" in problem["detail"]


# --- identity and storage outages ------------------------------------------------------------------


async def test_identity_outage_is_a_503_for_a_process_without_a_token_until_it_returns(
    stack: Stack, faults: SpeechClient, speech_host: SpeechHost
) -> None:
    """A credential serves cached tokens until they expire, so a running process only notices an
    identity outage later; a process that starts during one (scale-out, restart) fails at once."""
    await assert_answers(faults)  # tokens cached
    blobs_before = await faults.blob_names()  # so are the test's own
    await stack.identity.astop()
    try:
        async with speech_host() as fresh:
            problem = assert_problem(await fresh.post({"text": unique_text()}), 503, "identity-unavailable")
            await fresh.assert_sessions_closed()
            assert await fresh.blob_names() == blobs_before
            await assert_answers(faults)  # cached tokens keep working
            await stack.identity.astart()
            await assert_answers(fresh)
    finally:
        if not stack.identity.running:
            await stack.identity.astart()
    assert "token" in problem["detail"]


async def test_storage_outage_is_a_quick_503_until_it_returns(
    stack: Stack, faults: SpeechClient, speech_host: SpeechHost
) -> None:
    await assert_answers(faults)  # container and delegation key ready
    blobs_before = await faults.blob_names()
    await stack.azurite.astop()
    try:
        started = time.monotonic()
        problem = assert_problem(await faults.post({"text": unique_text()}), 503, "storage-unavailable")
        assert time.monotonic() - started < 15  # the SDK's default retries would take a minute
        async with speech_host() as fresh:  # no container or delegation key yet
            assert_problem(await fresh.post({"text": unique_text()}), 503, "storage-unavailable")
            await fresh.assert_sessions_closed()
            await stack.azurite.astart()
            written = await assert_answers(fresh)
    finally:
        if not stack.azurite.running:
            await stack.azurite.astart()
    assert "could not be reached" in problem["detail"]
    written |= await assert_answers(faults)
    assert await faults.blob_names() - blobs_before == written


async def test_a_deadline_during_a_storage_outage_reports_storage_not_the_deadline(
    stack: Stack, speech_host: SpeechHost
) -> None:
    """With a deadline shorter than the storage retries, the answer is always the storage problem
    (it used to flip between 503 and 504 with the retry jitter)."""
    async with speech_host(REALTIME_TIMEOUT_SECONDS="3") as short:
        await assert_answers(short)
        await stack.azurite.astop()
        try:
            for _ in range(3):
                problem = assert_problem(
                    await short.post({"text": unique_text()}), 503, "storage-unavailable"
                )
                assert "Blob Storage" in problem["detail"]
        finally:
            await stack.azurite.astart()
        await assert_answers(short)


async def test_a_slow_model_is_still_a_504(short_deadline: SpeechClient) -> None:
    problem = assert_problem(
        await short_deadline.post({"text": f"[[emulator:slow pace=0.5 seconds=4]] {unique_text()}"}),
        504,
        "deadline-exceeded",
    )
    assert f"{SHORT_DEADLINE_SECONDS} s" in problem["detail"]


# --- logs ----------------------------------------------------------------------------------------------

JWT = re.compile(r"eyJ[\w-]{6,}\.[\w-]{6,}\.")


async def test_logs_after_the_faults_hold_no_token_key_or_signature(
    stack: Stack, faults: SpeechClient, speech_host: SpeechHost
) -> None:
    async with speech_host(app=VERBOSE_APP, AZURE_OPENAI_API_KEY=stack.emulator_api_key) as keyed:
        for client in (faults, keyed):
            await assert_answers(client)
            await client.post({"text": unique_text("[[emulator:error_mid]]")})
            await client.refuse_handshakes(401, 1)
            await client.post({"text": unique_text()})
        logs = {client.host.log_path: client.host.log_path.read_text() for client in (faults, keyed)}
    for path, text in logs.items():
        assert stack.emulator_api_key not in text, path
        assert stack.identity_header not in text, path
        assert not JWT.search(text), path
        assert not re.search(r"\bsig=(?!REDACTED)", text), path
    assert "Authorization: Bearer REDACTED" in logs[faults.host.log_path]  # DEBUG logging was on
    assert "api-key: REDACTED" in logs[keyed.host.log_path]


SUMMARY = re.compile(r" speech (\{.*\})$")


async def test_one_structured_log_line_per_request(faults: SpeechClient) -> None:
    ok, failed = f"log-ok-{time.time_ns()}", f"log-failed-{time.time_ns()}"
    assert (await faults.post({"text": unique_text()}, request_id=ok))[0] == 200
    await faults.post({"text": unique_text("[[emulator:drop]]")}, request_id=failed)
    summaries = [
        json.loads(match[1])
        for line in faults.host.log_path.read_text().splitlines()
        if (match := SUMMARY.search(line))
    ]
    success, failure = ([s for s in summaries if s["request_id"] == rid] for rid in (ok, failed))
    assert len(success) == len(failure) == 1
    assert success[0]["status"] == 200 and success[0]["audio_seconds"] > 0
    assert {"connect_ms", "first_audio_ms", "stream_ms", "commit_ms", "total_ms"} <= success[0].keys()
    assert failure[0]["status"] == 502 and failure[0]["error"] == "upstream-failed"
    assert {"connect_ms", "first_audio_ms", "total_ms"} <= failure[0].keys()
    assert "commit_ms" not in failure[0]
