"""Sizes and durations as operators write them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from github_runner_manager.units import (
    GIB,
    MIB,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7GiB", 7 * GIB),
        ("7G", 7 * GIB),
        ("7GB", 7 * GIB),
        ("512MiB", 512 * MIB),
        ("4096", 4096 * MIB),
        (16000, 16000 * MIB),
        ("1.5GiB", int(1.5 * GIB)),
        ("2TiB", 2 * 1024 * GIB),
    ],
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["7 gigs", "", "-1G", "0", 0, True, None, "9" * 400, float("inf"), "GiB"]
)
def test_bad_sizes_name_the_value_and_the_form(text: object) -> None:
    with pytest.raises(ValueError, match="size like 7GiB"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("60s", 60.0),
        ("10m", 600.0),
        ("6h", 21600.0),
        ("1d", 86400.0),
        ("500ms", 0.5),
        (30, 30.0),
        ("45", 45.0),
    ],
)
def test_durations(text: object, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["soon", "-5s", -1, True, None, "9" * 400, "6 hours"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration like 60s"):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=2**40))
def test_format_size_round_trips(num: int) -> None:
    assert parse_size(format_size(num * 1024)) == num * 1024
    assert parse_size(format_size(num)) == num


@given(st.integers(min_value=0, max_value=10**6))
def test_format_duration_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds
