"""Parsing of human-written sizes and durations ("7GiB", "6h"), shared by the charm and the manager.

Errors are ``ValueError`` whose message quotes the input and shows an accepted form, so callers can
prefix the option name and hand the text to an operator unchanged.
"""

from __future__ import annotations

import math
import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?)B?\s*$", re.IGNORECASE)
_SIZE_POWERS = {"": 2, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

MIB = 1024**2
GIB = 1024**3


def parse_size(text: object) -> int:
    """Return a size in bytes.

    Accepts ``7GiB``, ``7G``, ``7GB`` (all binary multiples, as LXD and Juju read them),
    ``512MiB``, ``2TiB`` and plain numbers, which are MiB. ``bool`` is refused.

    Raises:
        ValueError: the text is not a size; the message quotes it and shows the expected form.
    """
    if isinstance(text, bool) or text is None:
        raise ValueError(f"{text!r} is not a size like 7GiB")
    if isinstance(text, int | float):
        if not math.isfinite(text) or text > 2**40:
            raise ValueError(f'"{text}" is not a size like 7GiB')
        if text <= 0:
            raise ValueError(f'"{text}" is not a size like 7GiB (it must be positive)')
        return int(text * MIB)
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ValueError(f'"{text}" is not a size like 7GiB')
    number, unit = float(match.group(1)), match.group(2).upper()
    if not math.isfinite(number) or number > 2**60:
        raise ValueError(f'"{text}" is not a size like 7GiB (it is far too large)')
    power = 0 if not unit and str(text).strip()[-1:] in "bB" else _SIZE_POWERS[unit]
    value = int(number * 1024**power)
    if value <= 0:
        raise ValueError(f'"{text}" is not a size like 7GiB (it must be positive)')
    return value


def parse_duration(text: object) -> float:
    """Return a duration in seconds.

    Accepts ``500ms``, ``60s``, ``10m``, ``6h``, ``1d``, ``2w`` and plain numbers (seconds).

    Raises:
        ValueError: the text is not a duration; the message quotes it and shows the expected form.
    """
    if isinstance(text, bool) or text is None:
        raise ValueError(f"{text!r} is not a duration like 60s, 10m or 6h")
    if isinstance(text, int | float):
        if not math.isfinite(text) or text > 10 * 365 * 86400:
            raise ValueError(f'"{text}" is not a duration like 60s, 10m or 6h')
        if text < 0:
            raise ValueError(f'"{text}" is not a duration like 60s (it must not be negative)')
        return float(text)
    match = _DURATION_RE.match(str(text))
    if not match:
        raise ValueError(f'"{text}" is not a duration like 60s, 10m or 6h')
    seconds = float(match.group(1)) * _DURATION_FACTORS[(match.group(2) or "s").lower()]
    if not math.isfinite(seconds) or seconds > 10 * 365 * 86400:
        raise ValueError(f'"{text}" is not a duration like 60s (it is longer than ten years)')
    return seconds


def format_size(num_bytes: int) -> str:
    """Render bytes as the shortest exact binary unit (``7GiB``, ``512MiB``)."""
    for unit, power in (("TiB", 4), ("GiB", 3), ("MiB", 2), ("KiB", 1)):
        if num_bytes % 1024**power == 0:
            return f"{num_bytes // 1024**power}{unit}"
    return f"{num_bytes}B"


def format_duration(seconds: float) -> str:
    """Render seconds as the largest exact unit (``6h``, ``90s``)."""
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{seconds}s"
