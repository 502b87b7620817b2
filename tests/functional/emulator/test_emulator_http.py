"""HTTP behaviour a client sees: auth, pagination, conditional requests, rate limits, faults."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import requests
from emulator_testlib import AUTH, ORG, REPO, TOKEN

from github_emulator import token_key
from github_emulator.testing import RunningEmulator

RUNNERS = f"/orgs/{ORG}/actions/runners"


def test_conditional_get_returns_304_without_spending_budget(
    emu: RunningEmulator, gh: Callable[..., requests.Response]
) -> None:
    emu.control.add_runners(3, org=ORG)
    first = gh("GET", RUNNERS)
    assert first.status_code == 200
    etag = first.headers["ETag"]
    remaining = int(first.headers["x-ratelimit-remaining"])
    for _ in range(3):
        again = gh("GET", RUNNERS, headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["ETag"] == etag
        assert int(again.headers["x-ratelimit-remaining"]) == remaining
    stats = emu.control.stats()
    assert stats["not_modified"] == 3
    assert stats["rate_limit_units"][token_key(TOKEN)] == 1

    # A change to the listed runners changes the ETag: the next conditional GET is a 200.
    emu.control.add_runners(1, org=ORG, name_prefix="extra")
    changed = gh("GET", RUNNERS, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag
    assert int(changed.headers["x-ratelimit-remaining"]) == remaining - 1


def test_pagination_links_follow_github(
    emu: RunningEmulator, gh: Callable[..., requests.Response]
) -> None:
    emu.control.add_runners(250, org=ORG)
    base = f"{emu.url}{RUNNERS}"
    page1 = gh("GET", RUNNERS, params={"per_page": 100})
    assert page1.json()["total_count"] == 250
    assert len(page1.json()["runners"]) == 100
    assert page1.headers["Link"] == (
        f'<{base}?per_page=100&page=2>; rel="next", <{base}?per_page=100&page=3>; rel="last"'
    )
    page2 = gh("GET", RUNNERS, params={"per_page": 100, "page": 2})
    assert page2.headers["Link"] == (
        f'<{base}?per_page=100&page=1>; rel="prev", <{base}?per_page=100&page=3>; rel="next", '
        f'<{base}?per_page=100&page=3>; rel="last", <{base}?per_page=100&page=1>; rel="first"'
    )
    page3 = gh("GET", RUNNERS, params={"per_page": 100, "page": 3})
    assert len(page3.json()["runners"]) == 50
    assert page3.headers["Link"] == (
        f'<{base}?per_page=100&page=2>; rel="prev", <{base}?per_page=100&page=1>; rel="first"'
    )
    # Following "next" links collects every runner exactly once, in order.
    seen, url = [], f"{base}?per_page=100"
    while url:
        resp = requests.get(url, headers=AUTH, timeout=30)
        seen += [r["id"] for r in resp.json()["runners"]]
        url = resp.links.get("next", {}).get("url")
    assert len(seen) == len(set(seen)) == 250
    # Defaults and the cap: 30 per page by default, never more than 100.
    assert len(gh("GET", RUNNERS).json()["runners"]) == 30
    assert len(gh("GET", RUNNERS, params={"per_page": 1000}).json()["runners"]) == 100
    # Everything on one page: no Link header at all.
    assert "Link" not in gh("GET", f"/repos/{REPO}/actions/runners").headers


def test_auth_errors_look_like_github(emu: RunningEmulator) -> None:
    url = emu.url + RUNNERS
    missing = requests.get(url, timeout=30)
    assert missing.status_code == 401
    assert missing.json()["message"] == "Requires authentication"
    assert missing.json()["documentation_url"].startswith("https://docs.github.com/")
    unknown = requests.get(url, headers={"Authorization": "token ghp_nope"}, timeout=30)
    assert unknown.status_code == 401
    assert unknown.json()["message"] == "Bad credentials"
    assert (
        requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).status_code
        == 200
    )

    # A token scoped to one repo sees that repo but not the org or other repos: 404, as GitHub.
    emu.control.add_token("ghp_repo_only", repos=[REPO])
    scoped = {"Authorization": "token ghp_repo_only"}
    assert (
        requests.get(
            f"{emu.url}/repos/{REPO}/actions/runners", headers=scoped, timeout=30
        ).status_code
        == 200
    )
    denied = requests.get(url, headers=scoped, timeout=30)
    assert denied.status_code == 404
    assert denied.json()["message"] == "Not Found"
    assert (
        requests.get(
            f"{emu.url}/repos/acme/lib/actions/runners", headers=scoped, timeout=30
        ).status_code
        == 404
    )
    assert (
        requests.get(f"{emu.url}/orgs/nobody/actions/runners", headers=AUTH, timeout=30).status_code
        == 404
    )
    assert requests.get(f"{emu.url}/no/such/route", headers=AUTH, timeout=30).status_code == 404


def test_primary_budget_exhaustion(emulator_factory: Callable[..., RunningEmulator]) -> None:
    emu = emulator_factory(rate_limit=5)
    url = emu.url + RUNNERS
    first = requests.get(url, headers=AUTH, timeout=30)
    etag = first.headers["ETag"]
    assert requests.get(url, headers={**AUTH, "If-None-Match": etag}, timeout=30).status_code == 304
    assert (
        requests.get(f"{emu.url}/rate_limit", headers=AUTH, timeout=30).json()["rate"]["used"] == 1
    )
    remaining = [
        int(requests.get(url, headers=AUTH, timeout=30).headers["x-ratelimit-remaining"])
        for _ in range(4)
    ]
    assert remaining == [3, 2, 1, 0]
    over = requests.get(url, headers=AUTH, timeout=30)
    assert over.status_code == 403
    assert over.headers["x-ratelimit-remaining"] == "0"
    assert int(over.headers["x-ratelimit-reset"]) > time.time()
    assert over.json()["message"].startswith("API rate limit exceeded")
    assert "rate-limits" in over.json()["documentation_url"]
    assert emu.control.stats()["primary_limited"] == 1
    # Another token has its own budget.
    emu.control.add_token("ghp_other", orgs=[ORG])
    assert (
        requests.get(url, headers={"Authorization": "token ghp_other"}, timeout=30).status_code
        == 200
    )


def test_secondary_limit_on_writes(emulator_factory: Callable[..., RunningEmulator]) -> None:
    emu = emulator_factory(secondary_limit=10)
    url = f"{emu.url}{RUNNERS}/registration-token"
    assert [requests.post(url, headers=AUTH, timeout=30).status_code for _ in range(2)] == [
        201,
        201,
    ]
    limited = requests.post(url, headers=AUTH, timeout=30)
    assert limited.status_code == 403
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert "secondary rate limit" in limited.json()["message"]
    # Reads are not writes: still served.
    assert requests.get(emu.url + RUNNERS, headers=AUTH, timeout=30).status_code == 200
    assert emu.control.stats()["secondary_limited"] == 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_error_faults(emu: RunningEmulator, status: int) -> None:
    emu.control.fault(route="actions/list-self-hosted-runners-for-org", status=status, count=2)
    got = [requests.get(emu.url + RUNNERS, headers=AUTH, timeout=30) for _ in range(3)]
    assert [r.status_code for r in got] == [status, status, 200]
    assert "message" in got[0].json()
    assert emu.control.stats()["faults_injected"] == 2


@pytest.mark.parametrize("status", [403, 429])
def test_rate_limit_faults_carry_retry_after(emu: RunningEmulator, status: int) -> None:
    emu.control.fault(route="/orgs/*/actions/runners", status=status, retry_after=7, count=1)
    limited = requests.get(emu.url + RUNNERS, headers=AUTH, timeout=30)
    assert limited.status_code == status
    assert limited.headers["retry-after"] == "7"
    assert "secondary rate limit" in limited.json()["message"]
    assert "x-ratelimit-remaining" in limited.headers
    assert requests.get(emu.url + RUNNERS, headers=AUTH, timeout=30).status_code == 200


def test_latency_malformed_and_hang_faults(emu: RunningEmulator) -> None:
    url = emu.url + RUNNERS
    emu.control.fault(route="*", latency=0.4, count=1)
    started = time.monotonic()
    assert requests.get(url, headers=AUTH, timeout=30).status_code == 200
    assert time.monotonic() - started >= 0.4

    emu.control.fault(route="actions/list-self-hosted-runners-for-org", malformed=True, count=1)
    broken = requests.get(url, headers=AUTH, timeout=30)
    assert broken.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(broken.content)

    emu.control.fault(route="*", hang=True, count=1)
    with pytest.raises(requests.Timeout):
        requests.get(url, headers=AUTH, timeout=0.5)
    emu.control.clear_faults()
    assert requests.get(url, headers=AUTH, timeout=30).status_code == 200


def test_probability_faults_are_reproducible(
    emulator_factory: Callable[..., RunningEmulator],
) -> None:
    patterns = []
    for _ in range(2):
        emu = emulator_factory()
        emu.control.fault(route="*", status=503, probability=0.5, seed=42)
        patterns.append(
            [
                requests.get(emu.url + RUNNERS, headers=AUTH, timeout=30).status_code
                for _ in range(16)
            ]
        )
    assert patterns[0] == patterns[1]
    assert set(patterns[0]) == {200, 503}


def test_stats_never_reveal_tokens(
    emu: RunningEmulator, gh: Callable[..., requests.Response]
) -> None:
    gh("GET", RUNNERS)
    gh("POST", f"{RUNNERS}/registration-token")
    requests.get(
        emu.url + RUNNERS, headers={"Authorization": "token ghp_secret_unknown"}, timeout=30
    )
    raw = requests.get(f"{emu.url}/_emulator/stats", timeout=30).text
    tokens = requests.get(f"{emu.url}/_emulator/tokens", timeout=30).text
    for text in (raw, tokens):
        assert TOKEN not in text
        assert "ghp_secret_unknown" not in text
    stats = json.loads(raw)
    assert stats["requests"]["actions/create-registration-token-for-org"] == 1
    assert stats["requests_total"] == 3
    log = stats["request_log"][-1]
    assert {"method", "path", "operation_id", "time", "status"} <= set(log)
