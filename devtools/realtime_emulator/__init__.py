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
    ``conversation.item.added``, ``response.content_part.added``, transcript and audio deltas
    (base64 PCM16 LE 24 kHz mono, chunks of 4800, 7200, then 12000 bytes), ``response.output_audio.done``,
    ``response.output_audio_transcript.done``, ``response.content_part.done``,
    ``response.output_item.done``, ``conversation.item.done`` and ``response.done`` (status, output,
    usage). ``response.cancel`` ends the active response as ``cancelled``. Text-only responses
    (``output_modalities: ["text"]``) stream ``response.output_text.delta``/``done`` instead.

Speech
    The answer repeats the last user message (directives removed); the audio is one tone per word,
    deterministic for a given text, voice and speed: :func:`synthesize` computes the same bytes.
    ``--speech espeak`` speaks with espeak-ng when it is installed.

Authentication (at the handshake, else HTTP 401 with Azure's JSON error body)
    ``api-key: KEY`` or ``Authorization: Bearer KEY``; or ``Authorization: Bearer JWT`` signed RS256 by
    the key in ``--token-public-key``, audience ``https://cognitiveservices.azure.com`` (or with a
    trailing slash), not expired. With neither option given, any credential is accepted unverified.

Scenarios
    Chosen per connection with the handshake query (``?model=gpt-realtime&scenario=drop&at=0.2``), or
    by a directive anywhere in a user message, which applies to the responses after it (the first
    directive of a message counts; a malformed one is an ``invalid_emulator_directive`` error):
    ``[[emulator:NAME key=value ...]]``.

    normal       the whole answer at full speed; response.done completed
    error_mid    after part of the audio, an ``error`` event (type server_error, code null) and no
                 response.done; the session stays open and accepts a new response.create
    drop         after part of the audio, the TCP connection is closed without a close frame
    stall        after part of the audio, nothing more (no response.done) until response.cancel or
                 the client closes; the connection stays open and answers pings
    incomplete   audio cut short; response.done incomplete, status_details.reason max_output_tokens
                 (a session or response ``max_output_tokens`` below the answer's size does the same)
    failed       audio cut short; response.done failed, status_details.error type server_error
    cancelled    audio cut short; response.done cancelled, reason client_cancelled (or reason=turn_detected)
    rate_limit   an ``error`` event (type tokens, code rate_limit_exceeded) instead of a response
    slow         audio paced against the clock: real time at ``pace=1.0`` (default), ten times faster
                 at ``pace=10``
    long         ``seconds`` of audio (default 300) at full speed
    handshake_401, handshake_403, handshake_429, handshake_500, handshake_503 (query only)
                 the handshake is refused with that status; 429 and 503 carry Retry-After
                 (``retry_after=S``, default 1)

    Parameters: ``at`` (0-1, share of the audio sent before a cutting scenario acts, default 0.5),
    ``seconds`` (exact audio length, any response scenario), ``pace`` (real-time pacing factor, any
    response scenario), ``reason`` (cancelled), ``retry_after`` (handshake scenarios).

Limits
    The emulator never understands input audio or calls tools: ``input_audio_buffer.commit`` of real
    audio, G.711 output formats and the item retrieve/delete/truncate events are answered with an
    ``error`` of code ``unsupported_by_emulator`` (a code the service does not have).

Control routes (same port)
    ``POST /_emulator/handshake-faults`` ``{"status": 401|403|429|500|503, "count": N, "retry_after": S}``
    refuses the next N handshakes; ``GET /_emulator/sessions`` lists session records (see
    :class:`~devtools.realtime_emulator.session.SessionRecord`; credentials are never recorded);
    ``DELETE /_emulator/sessions`` clears them; ``GET /_emulator/health``; ``GET /_emulator/stats``.
"""

from .scenarios import Scenario
from .speech import SAMPLE_RATE, VOICES, Speech, synthesize

__all__ = ["SAMPLE_RATE", "VOICES", "Scenario", "Speech", "synthesize"]
