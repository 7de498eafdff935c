"""How quantities are written in RESULTS.md and on the plots."""

from __future__ import annotations

from .records import MIB


def audio(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


def ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def mib(value: float) -> str:
    return f"{value / MIB:.1f} MiB"
