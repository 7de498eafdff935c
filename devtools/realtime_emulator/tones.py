"""Text carried by tones: each character becomes a two-tone symbol that a Fourier measurement reads back.

A text is written as symbols: printable ASCII characters (space to ``~``) are one symbol each; any other
character is an escape symbol followed by its code point as six hexadecimal digits (seven symbols).
Symbol ``s`` sounds as two sines at once, ``LOW_HZ[s // 10]`` and ``HIGH_HZ[s % 10]``, 400-3300 Hz,
inside the band that survives resampling to 8 kHz, G.711 and MP3. Each symbol fills one slot: a tone
over the first 85 % (with 2 ms fades), then silence, so tones can be told apart by their gaps whatever
the slot length (the speaking speed). A hum at the voice's pitch (below the symbol band) sounds under
every tone: voices differ, the text reads back the same.

:func:`read_tones` finds the tones by their energy, measures each at the twenty symbol frequencies and
returns the text, or None when anything does not read cleanly as symbols (speech, noise, silence).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

LOW_HZ = tuple(400.0 + 100.0 * index for index in range(10))
HIGH_HZ = tuple(1500.0 + 200.0 * index for index in range(10))
FIRST_CHARACTER = 32  # space
LAST_CHARACTER = 126  # tilde
ESCAPE = LAST_CHARACTER - FIRST_CHARACTER + 1
CODE_POINT_DIGITS = 6
HEX_DIGITS = frozenset("0123456789abcdef")
MAX_CODE_POINT = 0x10FFFF
TONE_SHARE = 0.85
FADE_SECONDS = 0.002
SYMBOL_AMPLITUDE = 0.12
HUM_AMPLITUDE = 0.08

ENVELOPE_FRAME_SECONDS = 0.001
ENVELOPE_SMOOTHING_FRAMES = 4
ON_LEVEL = 0.15
"""A frame belongs to a tone when its level is above this share of the loudest frame's level."""
MIN_TONE_SECONDS = 0.012
TRIM_SHARE = 0.15
"""Each tone is measured without its first and last 15 %: fades and filter ringing live there."""
MAX_MEASURED_SECONDS = 0.03
"""At most the middle 30 ms of a tone is measured: enough to tell frequencies 100 Hz apart."""
MIN_PEAK_RATIO = 4.0
"""The strongest frequency of a group must carry this many times the power of the next one."""
MIN_EXPLAINED_SHARE = 0.5
"""The two symbol frequencies must carry this share of a tone's power (the hum carries about 20 %)."""


def symbols(text: str) -> list[int]:
    """The symbols that spell ``text``."""
    spelled: list[int] = []
    for character in text:
        code = ord(character)
        if FIRST_CHARACTER <= code <= LAST_CHARACTER:
            spelled.append(code - FIRST_CHARACTER)
        else:
            digits = f"{code:0{CODE_POINT_DIGITS}x}"
            spelled += [ESCAPE, *(ord(digit) - FIRST_CHARACTER for digit in digits)]
    return spelled


def text_of(spelled: list[int]) -> str | None:
    """The text that ``symbols`` spells, or None when the symbols spell nothing (a bad escape)."""
    characters: list[str] = []
    position = 0
    while position < len(spelled):
        symbol = spelled[position]
        if symbol != ESCAPE:
            characters.append(chr(symbol + FIRST_CHARACTER))
            position += 1
            continue
        end = position + 1 + CODE_POINT_DIGITS
        digits = "".join(chr(code + FIRST_CHARACTER) for code in spelled[position + 1 : end])
        if len(digits) != CODE_POINT_DIGITS or not all(digit in HEX_DIGITS for digit in digits):
            return None
        code = int(digits, 16)
        if code > MAX_CODE_POINT:
            return None
        characters.append(chr(code))
        position += 1 + CODE_POINT_DIGITS
    return "".join(characters)


@lru_cache(maxsize=4096)
def tone_slot(symbol: int, slot_samples: int, hum_hz: float, rate: int) -> bytes:
    """One symbol's slot as PCM16 LE: the tone, faded in and out, then silence."""
    tone_samples = round(slot_samples * TONE_SHARE)
    t = np.arange(tone_samples) / rate
    wave = (
        HUM_AMPLITUDE * np.sin(2 * math.pi * hum_hz * t)
        + SYMBOL_AMPLITUDE * np.sin(2 * math.pi * LOW_HZ[symbol // 10] * t)
        + SYMBOL_AMPLITUDE * np.sin(2 * math.pi * HIGH_HZ[symbol % 10] * t)
    )
    fade = min(round(FADE_SECONDS * rate), tone_samples // 2)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
    wave[:fade] *= ramp
    wave[tone_samples - fade :] *= ramp[::-1]
    slot = np.zeros(slot_samples)
    slot[:tone_samples] = wave
    return np.round(slot * 32767).astype("<i2").tobytes()


def read_tones(samples: np.ndarray, rate: int) -> str | None:
    """The text that tones spell in ``samples`` (float, -1..1, at ``rate``), or None."""
    tones = find_tones(samples, rate)
    if not tones:
        return None
    spelled = []
    for start, end in tones:
        symbol = read_symbol(samples[start:end], rate)
        if symbol is None:
            return None
        spelled.append(symbol)
    return text_of(spelled)


def find_tones(samples: np.ndarray, rate: int) -> list[tuple[int, int]]:
    """Start and end (sample indices) of each stretch loud enough to be a tone, the short ones left out."""
    frame = max(round(ENVELOPE_FRAME_SECONDS * rate), 1)
    frames = len(samples) // frame
    if frames == 0:
        return []
    power = np.mean(samples[: frames * frame].reshape(frames, frame) ** 2, axis=1)
    kernel = np.ones(ENVELOPE_SMOOTHING_FRAMES) / ENVELOPE_SMOOTHING_FRAMES
    level = np.sqrt(np.convolve(power, kernel, mode="same"))
    loud = float(level.max())
    if loud <= 0:
        return []
    on = np.concatenate(([False], level > ON_LEVEL * loud, [False]))
    edges = np.flatnonzero(np.diff(on.astype(np.int8)))
    minimum = MIN_TONE_SECONDS * rate
    return [
        (int(start) * frame, int(end) * frame)
        for start, end in zip(edges[::2], edges[1::2], strict=True)
        if (end - start) * frame >= minimum
    ]


def read_symbol(tone: np.ndarray, rate: int) -> int | None:
    """The symbol one tone sounds, or None when its two strongest frequencies do not stand out."""
    trim = round(len(tone) * TRIM_SHARE)
    length = min(len(tone) - 2 * trim, round(MAX_MEASURED_SECONDS * rate))
    start = (len(tone) - length) // 2
    cosines, sines, window = _analysis(length, rate)
    windowed = tone[start : start + length] * window
    total_power = float(np.mean(windowed**2))
    if total_power <= 0:
        return None
    # Elementwise products, not a matrix product: BLAS threads cost more than they save at this size.
    amplitudes = 2 * np.hypot((cosines * windowed).sum(axis=1), (sines * windowed).sum(axis=1)) / window.sum()
    window_power = float(np.mean(window**2))
    choices = []
    explained = 0.0
    for group in (amplitudes[: len(LOW_HZ)], amplitudes[len(LOW_HZ) :]):
        ranked = np.sort(group)
        if ranked[-1] ** 2 < MIN_PEAK_RATIO * ranked[-2] ** 2:
            return None
        choices.append(int(np.argmax(group)))
        explained += ranked[-1] ** 2 / 2 * window_power
    if explained < MIN_EXPLAINED_SHARE * total_power:
        return None
    symbol = choices[0] * 10 + choices[1]
    return symbol if symbol <= ESCAPE else None


@lru_cache(maxsize=64)
def _analysis(length: int, rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosines and sines of the symbol frequencies over a measured stretch, and its Hann window (the
    tones of one text have one length, so each is built once)."""
    phases = 2 * math.pi * np.outer(np.array(LOW_HZ + HIGH_HZ), np.arange(length) / rate)
    return np.cos(phases), np.sin(phases), np.hanning(length)
