"""`function_app` with one planted bug, served by a dev host as `tests.faulty_function_app`.

An answer whose transcript holds the word `FAULT_WORD` makes the answer's listener raise an exception
the app does not expect, in the middle of the answer (audio already received and staged), the way a
bug would. Its message carries `FAULT_SECRET`, shaped like a SAS signature, so a test can check that
neither the exception nor its message reaches the caller or the log. Everything else is the real app.
"""

from function_app import app
from realtime_speech.answer import AnswerStream

FAULT_WORD = "Kaboom"
FAULT_SECRET = "sig=planted0bug0secret0signature"

_transcript_delta = AnswerStream.transcript_delta


async def _transcript_delta_with_a_bug(self: AnswerStream, delta: str) -> None:
    if FAULT_WORD in delta:
        raise RuntimeError(f"planted bug while holding {FAULT_SECRET}")
    await _transcript_delta(self, delta)


AnswerStream.transcript_delta = _transcript_delta_with_a_bug  # type: ignore[method-assign]

__all__ = ["app"]
