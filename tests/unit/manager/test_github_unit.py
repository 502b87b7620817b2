"""Pure logic of the GitHub client: header parsing, rate-limit waits, pacing and backoff (no I/O)."""

from __future__ import annotations

import email.utils

import pytest

from github_runner_manager.github import (
    RESET_MARGIN,
    SECONDARY_LIMIT_WAIT,
    JitConfig,
    RateLimitInfo,
    backoff_delay,
    pace_delay,
    parse_link_next,
    parse_rate_limit,
    parse_retry_after,
    parse_timestamp,
    parse_version,
    rate_limit_wait,
)

NOW = 1_700_000_000.0


# ------------------------------------------------------------------------------------ Link header
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        (
            '<https://api.github.com/orgs/a/actions/runners?per_page=100&page=2>; rel="next", '
            '<https://api.github.com/orgs/a/actions/runners?per_page=100&page=5>; rel="last"',
            "https://api.github.com/orgs/a/actions/runners?per_page=100&page=2",
        ),
        (
            '<https://x/r?page=1>; rel="prev", <https://x/r?page=3>; rel="next", <https://x/r?page=1>; rel="first"',
            "https://x/r?page=3",
        ),
        ('<https://x/r?page=5>; rel="last", <https://x/r?page=1>; rel="first"', None),
        ("<https://x/r?page=2>; rel=next", "https://x/r?page=2"),
        ('<https://x/r?page=2>; rel="next last"', "https://x/r?page=2"),
        ('<https://x/r?page=2>; title="n"; rel="NEXT"', "https://x/r?page=2"),
        ("garbage", None),
    ],
)
def test_parse_link_next(header: str | None, expected: str | None) -> None:
    assert parse_link_next(header) == expected


# ------------------------------------------------------------------------------ rate-limit headers
def test_parse_rate_limit_reads_headers_case_insensitively() -> None:
    info = parse_rate_limit(
        {
            "X-RateLimit-Limit": "5000",
            "x-ratelimit-remaining": "4321",
            "X-RATELIMIT-USED": "679",
            "x-ratelimit-reset": "1700003600",
            "x-ratelimit-resource": "core",
        }
    )
    assert info == RateLimitInfo(
        limit=5000, remaining=4321, used=679, reset=1_700_003_600.0, resource="core"
    )


def test_parse_rate_limit_tolerates_missing_and_garbage() -> None:
    assert parse_rate_limit({}) == RateLimitInfo()
    info = parse_rate_limit({"x-ratelimit-remaining": "lots", "x-ratelimit-limit": " 60 "})
    assert info.remaining is None and info.limit == 60


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        (" 30 ", 30.0),
        ("0", 0.0),
        ("-5", 0.0),
        ("1.5", 1.5),
        (None, None),
        ("soon", None),
    ],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_parse_retry_after_http_date() -> None:
    header = email.utils.formatdate(NOW + 90, usegmt=True)
    assert parse_retry_after(header, NOW) == pytest.approx(90.0, abs=1.0)
    past = email.utils.formatdate(NOW - 90, usegmt=True)
    assert parse_retry_after(past, NOW) == 0.0


# -------------------------------------------------------------------------------- rate-limit waits
def test_retry_after_wins_over_everything() -> None:
    headers = {
        "retry-after": "2",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": str(int(NOW + 999)),
    }
    assert rate_limit_wait(403, headers, NOW) == 2.0
    assert rate_limit_wait(429, headers, NOW) == 2.0


def test_spent_budget_waits_until_reset() -> None:
    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW + 120))}
    assert rate_limit_wait(403, headers, NOW) == pytest.approx(120 + RESET_MARGIN)
    assert rate_limit_wait(429, headers, NOW) == pytest.approx(120 + RESET_MARGIN)
    # a reset already past: retry (almost) at once
    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW - 5))}
    assert rate_limit_wait(403, headers, NOW) == pytest.approx(RESET_MARGIN)


def test_secondary_limit_without_headers_waits_a_minute_then_doubles() -> None:
    assert rate_limit_wait(429, {}, NOW) == SECONDARY_LIMIT_WAIT
    assert rate_limit_wait(429, {}, NOW, repeat=2) == SECONDARY_LIMIT_WAIT * 4
    message = (
        "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
    )
    assert (
        rate_limit_wait(403, {"x-ratelimit-remaining": "4000"}, NOW, message=message)
        == SECONDARY_LIMIT_WAIT
    )


def test_plain_403_is_not_a_rate_limit() -> None:
    assert (
        rate_limit_wait(
            403, {"x-ratelimit-remaining": "4999"}, NOW, message="Resource not accessible"
        )
        is None
    )
    assert rate_limit_wait(403, {}, NOW) is None


@pytest.mark.parametrize("status", [200, 304, 401, 404, 500, 502])
def test_other_statuses_are_not_rate_limits(status: int) -> None:
    assert rate_limit_wait(status, {"retry-after": "5", "x-ratelimit-remaining": "0"}, NOW) is None


# -------------------------------------------------------------------------------------- pacing
def test_no_pacing_above_the_reserve_or_without_headers() -> None:
    assert pace_delay(RateLimitInfo(), NOW) == 0.0
    assert pace_delay(RateLimitInfo(limit=5000, remaining=251, reset=NOW + 3600), NOW) == 0.0


def test_pacing_under_the_reserve_spreads_the_rest_until_reset() -> None:
    info = RateLimitInfo(limit=5000, remaining=100, reset=NOW + 50)
    assert pace_delay(info, NOW, max_delay=10) == pytest.approx(0.5)
    # capped: calls are spread, not stopped
    info = RateLimitInfo(limit=5000, remaining=10, reset=NOW + 3600)
    assert pace_delay(info, NOW, max_delay=2.0) == 2.0
    # a reset in the past: no reason to wait
    assert pace_delay(RateLimitInfo(limit=5000, remaining=10, reset=NOW - 1), NOW) == 0.0


def test_spent_budget_is_not_paced_here() -> None:
    assert pace_delay(RateLimitInfo(limit=5000, remaining=0, reset=NOW + 3600), NOW) == 0.0


def test_reserve_fraction_is_honoured() -> None:
    info = RateLimitInfo(limit=1000, remaining=150, reset=NOW + 150)
    assert pace_delay(info, NOW, reserve_fraction=0.05) == 0.0
    assert pace_delay(info, NOW, reserve_fraction=0.2, max_delay=5) == pytest.approx(1.0)


# -------------------------------------------------------------------------------------- backoff
def test_backoff_doubles_within_jitter_bounds() -> None:
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0)]:
        assert backoff_delay(attempt, initial=0.5, rand=lambda: 0.0) == pytest.approx(ceiling / 2)
        assert backoff_delay(attempt, initial=0.5, rand=lambda: 1.0) == pytest.approx(ceiling)


def test_backoff_is_capped() -> None:
    assert backoff_delay(30, initial=0.5, maximum=30.0, rand=lambda: 1.0) == 30.0
    assert backoff_delay(30, initial=0.5, maximum=30.0, rand=lambda: 0.0) == 15.0


def test_backoff_jitter_varies() -> None:
    delays = {backoff_delay(3, initial=1.0) for _ in range(50)}
    assert len(delays) > 1
    assert all(2.0 <= d <= 4.0 for d in delays)


# ---------------------------------------------------------------------------- misc pure helpers
@pytest.mark.parametrize(
    ("app", "version"),
    [
        ({"filename": "actions-runner-linux-x64-2.164.0.tar.gz"}, "2.164.0"),
        ({"filename": "actions-runner-win-x64-2.321.0.zip"}, "2.321.0"),
        (
            {
                "filename": "runner.tar.gz",
                "download_url": "https://github.com/actions/runner/releases/download/v2.300.1/runner.tar.gz",
            },
            "2.300.1",
        ),
        ({"filename": "runner.tar.gz"}, "unknown"),
    ],
)
def test_parse_version(app: dict[str, str], version: str) -> None:
    assert parse_version(app) == version


def test_parse_timestamp() -> None:
    assert parse_timestamp("2023-11-14T22:13:20Z") == NOW
    assert parse_timestamp("2023-11-14T22:13:20+00:00") == NOW
    assert parse_timestamp(None) is None
    assert parse_timestamp("yesterday") is None


def test_jit_config_repr_hides_the_secret() -> None:
    config = JitConfig(runner_id=7, runner_name="ghr-small-abc", encoded="c2VjcmV0")
    assert "c2VjcmV0" not in repr(config)
    assert "ghr-small-abc" in repr(config)
