"""Local emulator of the Azure OpenAI Realtime GA WebSocket protocol (``/openai/v1/realtime``).

Run it with ``python -m devtools.realtime_emulator --port PORT`` and point the openai SDK at it:
``AsyncOpenAI(websocket_base_url="ws://127.0.0.1:PORT/openai/v1", api_key=KEY)``, then
``client.realtime.connect(model="gpt-realtime")``. Every server event it sends validates against the
SDK's ``RealtimeServerEvent`` types.

Protocol
    ``session.created`` (the service's defaults: voice alloy, PCM 24 kHz in and out, server VAD) opens
    each connection. ``session.update`` is validated like the service does it (unknown fields, types,
    voices, formats, ranges) and answered with ``session.updated`` (the merged session) or an
    ``error`` event, the session then unchanged. ``conversation.item.create`` answers
    ``conversation.item.added`` and ``conversation.item.done``. ``response.create`` streams
    ``response.created``, ``rate_limits.updated``, ``response.output_item.added``,
    ``conversation.item.added``, ``response.content_part.added``, transcript and audio deltas,
    ``response.output_audio.done``, ``response.output_audio_transcript.done``,
    ``response.content_part.done``, ``response.output_item.done``, ``conversation.item.done`` and
    ``response.done`` (status, output, usage). ``response.cancel`` ends the active response as
    ``cancelled``. Text-only responses (``output_modalities: ["text"]``) stream
    ``response.output_text.delta``/``done`` instead.

    Output audio is in the session's (or the response's) ``audio.output.format``: ``audio/pcm``
    (PCM16 LE 24 kHz mono) or ``audio/pcmu`` / ``audio/pcma`` (G.711 at 8 kHz: the same speech
    resampled by soxr, then coded by libsndfile; :func:`encode_audio` gives the bytes). Deltas carry
    100 ms, 150 ms, then 250 ms of audio (4800, 7200, 12000 bytes of PCM; 800, 1200, 2000 of G.711).

    Input audio: ``input_audio_buffer.append`` adds base64 audio in ``audio.input.format``
    (``audio/pcm`` 24 kHz, ``audio/pcmu``, ``audio/pcma``; bad base64 is an ``invalid_value`` error on
    param ``audio``); ``input_audio_buffer.clear`` empties it (``input_audio_buffer.cleared``);
    ``input_audio_buffer.commit`` turns it into a user message: ``input_audio_buffer.committed``
    (``item_id``, ``previous_item_id``), then ``conversation.item.added`` and ``conversation.item.done``
    for a message whose content is ``[{"type": "input_audio", "transcript": null}]``. Less than
    100 ms of audio is an ``input_audio_buffer_commit_empty`` error, a PCM buffer of an odd number of
    bytes an ``invalid_value`` error; the buffer is kept after either. With
    ``audio.input.transcription`` set, ``conversation.item.input_audio_transcription.delta`` (one per
    word) and ``.completed`` (``item_id``, ``content_index`` 0, ``transcript``, ``usage``) follow at
    once: usage ``{"type": "duration", "seconds"}`` for ``whisper*`` models, else ``{"type": "tokens"}``
    (input: the audio tokens, output: the transcript's text tokens). The next ``response.create``
    answers what was heard.

Speech
    The answer repeats the last user message (directives removed), or the text heard in the last
    committed audio. The audio is tones that carry the text (see :mod:`.tones`): one two-tone symbol
    per character (seven for a character outside printable ASCII), each lasting ``round(1560 / speed)``
    samples at 24 kHz (65 ms at ``audio.output.speed`` 1.0, so the duration is the duration at 1.0
    divided by the speed), under a hum at the voice's pitch. :func:`synthesize` computes the PCM.
    ``--speech espeak`` speaks with espeak-ng when it is installed (audio that does not read back).

    Hearing: the emulator hears in input audio the text its tones spell (:func:`hear`), so an answer
    it spoke, sent back in as PCM, resampled (16 kHz and back, MP3) or G.711-coded, is heard as the
    text that made it. Any other audio is heard as ``Unrecognized audio of S seconds.``, S its
    duration to a tenth of a second (:func:`heard_text` gives either).

Tokens
    Input: about four characters of instructions and item text per text token, four per item, and
    20 audio tokens per second of audio items. Output: one audio token per started 50 ms of audio sent
    (20 per second) plus ``ceil(characters / 4)`` text tokens of the transcript sent. With
    ``max_output_tokens`` (session or ``response.create``; an integer or ``"inf"``) below the cost of
    the whole answer, the answer is cut after the largest whole number of 50 ms steps whose cost fits
    and ends ``incomplete`` (reason ``max_output_tokens``), its usage being that cost
    (:func:`~.planning.token_limited_length`).

Authentication (at the handshake, else HTTP 401 with Azure's JSON error body)
    ``api-key: KEY`` or ``Authorization: Bearer KEY``; or ``Authorization: Bearer JWT`` signed RS256 by
    the key in ``--token-public-key``, audience ``https://cognitiveservices.azure.com`` (or with a
    trailing slash), not expired. With neither option given, any credential is accepted unverified.

Quota (at the handshake, after authentication)
    ``--max-sessions N`` (concurrent sessions) and ``--requests-per-minute M`` (handshakes admitted in
    the rolling last 60 seconds), both changeable with ``POST /_emulator/quota``. A handshake past a
    limit is refused with HTTP 429, Azure's JSON error body (code ``"429"``) and the wait, as Azure
    says it in ``retry-after-ms`` (milliseconds) and ``Retry-After`` (whole seconds, rounded up): the
    time until the oldest admission leaves the minute, or 1 s for the concurrency limit.

Scenarios
    Chosen per connection with the handshake query (``?model=gpt-realtime&scenario=drop&at=0.2``), or
    by a directive ``[[emulator:NAME key=value ...]]`` in a user message or in the session's
    ``instructions`` (``session.update``; the way to choose one for spoken questions), which applies
    from then on (the first directive of a text counts; a malformed one is an
    ``invalid_emulator_directive`` error on that text's param).

    normal       the whole answer at full speed; response.done completed
    error_mid    after part of the audio, an ``error`` event (type server_error, code null) and no
                 response.done; the session stays open and accepts a new response.create
    drop         after part of the audio, the TCP connection is closed without a close frame
    stall        after part of the audio, nothing more (no response.done) until response.cancel or
                 the client closes; the connection stays open and answers pings
    incomplete   audio cut short; response.done incomplete, status_details.reason max_output_tokens
                 (a session or response ``max_output_tokens`` below the answer's cost does the same)
    failed       audio cut short; response.done failed, status_details.error type server_error
    cancelled    audio cut short; response.done cancelled, reason client_cancelled (or reason=turn_detected)
    rate_limit   an ``error`` event (type tokens, code rate_limit_exceeded) instead of a response
    slow         audio paced against the clock: real time at ``pace=1.0`` (default), ten times faster
                 at ``pace=10``
    long         ``seconds`` of audio (default 300) at full speed
    transcript_late
                 the input transcription of audio committed under it is held until the next response
                 has ended, then sent ``delay`` seconds later (default 0.5); the answer is normal
    transcript_never
                 no input transcription events for audio committed under it; the answer is normal
    transcript_failed
                 the input transcription of audio committed under it fails:
                 ``conversation.item.input_audio_transcription.failed`` (``item_id``, ``content_index``
                 0, ``error`` with code ``audio_unintelligible``) instead of the deltas and
                 ``.completed``; the answer is normal
    handshake_400, handshake_401, handshake_403, handshake_404, handshake_429, handshake_500,
    handshake_503 (query only)
                 the handshake is refused with that status (404: Azure's ``DeploymentNotFound``);
                 429 and 503 carry Retry-After (``retry_after=S``, default 1), 429 also
                 ``retry-after-ms``

    Parameters: ``at`` (0-1, share of the audio sent before a cutting scenario acts, default 0.5),
    ``seconds`` (exact audio length, any response scenario), ``pace`` (real-time pacing factor, any
    response scenario), ``reason`` (cancelled), ``retry_after`` (handshake scenarios), ``delay``
    (transcript_late).

Limits
    No voice activity detection: with ``server_vad`` (the default) or ``semantic_vad`` on, audio is
    committed only by ``input_audio_buffer.commit``, no response starts by itself and no
    ``speech_started``/``speech_stopped`` events are sent. Audio inside ``conversation.item.create``
    is not heard (its ``transcript`` counts as text). No tools. ``output_audio_buffer.clear`` and the
    item retrieve/delete/truncate events are answered with an ``error`` of code
    ``unsupported_by_emulator`` (a code the service does not have).

Control routes (same port)
    ``POST /_emulator/handshake-faults`` ``{"status": 400|401|403|404|429|500|503, "count": N,
    "retry_after": S}`` refuses the next N handshakes (``"retry_after_ms": MS`` instead asks for a
    wait in milliseconds); ``POST /_emulator/scenario-faults`` ``{"scenario": NAME, "count": N}``
    starts the next N admitted connections under that response scenario. ``GET /_emulator/sessions``
    lists session records (see :class:`~devtools.realtime_emulator.session.SessionRecord`; credentials
    are never recorded); ``DELETE /_emulator/sessions`` clears them;
    ``GET /_emulator/sessions/{id}/input_audio`` returns the raw bytes of the session's last committed
    input audio (``?item_id=`` another one; 404 when none). ``GET /_emulator/quota`` gives
    ``{"max_sessions", "requests_per_minute", "open_sessions", "admitted_last_minute"}``;
    ``POST /_emulator/quota`` ``{"max_sessions": N, "requests_per_minute": M}`` sets the fields given
    (null: no limit). ``GET /_emulator/admissions`` lists every handshake's outcome: ``{"time" (Unix
    seconds), "outcome": "admitted"|"refused", "status" (101 when admitted), "reason" (null,
    max_sessions, requests_per_minute, handshake_fault, scenario, unauthorized, bad_request),
    "retry_after", "retry_after_ms", "open_sessions" (open when decided)}``;
    ``DELETE /_emulator/admissions`` clears it and the rolling minute. ``POST /_emulator/handshake-delay``
    ``{"ms": N}`` (also ``--handshake-delay-ms``) makes every handshake wait N ms before it is answered,
    refused or not: what Azure's network, TLS and authentication cost. ``POST /_emulator/idle-timeout``
    ``{"seconds": S}`` (also ``--idle-timeout-seconds``; null: never) closes, with a close frame
    (1000), every session that has had no client event and no response under way for S seconds
    (``ended_by`` ``emulator_idle_timeout``): how a test kills a session held open in advance. Both
    are read back with GET. ``GET /_emulator/health``; ``GET /_emulator/stats`` (with
    ``?wait_idle=S`` it answers once no session is open, or after S seconds, whichever comes first).
"""

from .audio_formats import decode_audio, encode_audio
from .scenarios import Scenario
from .speech import SAMPLE_RATE, VOICES, Speech, hear, heard_text, synthesize

__all__ = [
    "SAMPLE_RATE",
    "VOICES",
    "Scenario",
    "Speech",
    "decode_audio",
    "encode_audio",
    "hear",
    "heard_text",
    "synthesize",
]
