"""GitHubClient against the real GitHub emulator: pagination, ETags, rate limits, faults, auth."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from github_runner_manager.config import GitHubPath
from github_runner_manager.github import (
    GitHubAuthError,
    GitHubClient,
    GitHubError,
    JitConfig,
    RateLimited,
)

TOKEN = "ghp_s3cret-token-for-tests-0123456789"
ORG = GitHubPath.parse("acme")
REPO = GitHubPath.parse("acme/app")


@pytest.fixture
def world(emulator: Any) -> Any:
    """An emulator with org ``acme``, repos ``acme/app`` and ``acme/lib`` and a token for them."""
    control = emulator.control
    control.add_org("acme")
    control.add_repo("acme", "app")
    control.add_repo("acme", "lib")
    control.add_token(TOKEN, orgs=["acme"], repos=["acme/app", "acme/lib"])
    return emulator


@pytest.fixture
def make_client(world: Any) -> Iterator[Callable[..., GitHubClient]]:
    clients: list[GitHubClient] = []

    def make(**kwargs: Any) -> GitHubClient:
        kwargs.setdefault("timeout", 5)
        kwargs.setdefault("backoff_initial", 0.05)
        kwargs.setdefault("backoff_max", 0.2)
        client = GitHubClient(world.url, kwargs.pop("token", TOKEN), **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def _log(emulator: Any) -> list[dict[str, Any]]:
    return list(emulator.control.stats()["request_log"])


def _units(emulator: Any) -> int:
    return int(emulator.control.stats()["rate_limit_units_total"])


# ------------------------------------------------------------------------------------ listing
@pytest.mark.parametrize("path", [ORG, REPO], ids=["org", "repo"])
def test_list_runners_follows_pages_then_304s_cost_nothing(
    world: Any, make_client: Callable[..., GitHubClient], path: GitHubPath
) -> None:
    kind = {"org": "org", "repo": "repo"}[path.kind]
    world.control.add_runners(250, **{kind: str(path)}, name_prefix=f"bulk-{path.kind}")
    world.control.reset_stats()
    client = make_client()

    runners = client.list_runners(path)

    assert len(runners) == 250
    assert len({r.id for r in runners}) == 250
    assert {r.owner for r in runners} == {str(path)}
    assert all(r.status in ("online", "offline") and isinstance(r.busy, bool) for r in runners)
    assert "self-hosted" in runners[0].labels
    stats = client.stats()
    assert stats["requests"] == 3  # 100 + 100 + 50
    assert stats["rate_limit_units"] == 3
    assert stats["not_modified"] == 0
    pages = [e for e in _log(world) if e["path"].endswith("/actions/runners")]
    assert [e["status"] for e in pages] == [200, 200, 200]
    units_before = _units(world)

    again = client.list_runners(path)

    assert sorted(r.id for r in again) == sorted(r.id for r in runners)
    stats = client.stats()
    assert stats["requests"] == 6
    assert stats["not_modified"] == 3
    assert stats["rate_limit_units"] == 3  # unchanged: 304s are free
    assert stats["by_operation"]["list_runners"]["not_modified"] == 3
    assert _units(world) == units_before  # the emulator charged nothing either
    assert world.control.stats()["not_modified"] == 3


def test_listing_sees_changes_after_304s(
    world: Any, make_client: Callable[..., GitHubClient]
) -> None:
    world.control.add_runners(3, org="acme", name_prefix="few")
    client = make_client()
    first = client.list_runners(ORG)
    assert client.list_runners(ORG) == first
    world.control.add_runners(2, org="acme", name_prefix="more")
    assert len(client.list_runners(ORG)) == 5


# ------------------------------------------------------------------------- single runner calls
def test_get_and_delete_runner(world: Any, make_client: Callable[..., GitHubClient]) -> None:
    (runner_id,) = world.control.add_runners(1, org="acme", name_prefix="one")
    client = make_client()

    runner = client.get_runner(ORG, runner_id)
    assert runner is not None and runner.id == runner_id and runner.owner == "acme"

    assert client.delete_runner(ORG, runner_id) is True
    assert client.delete_runner(ORG, runner_id) is False
    assert client.get_runner(ORG, runner_id) is None
    assert client.list_runners(ORG) == []


@pytest.mark.parametrize("path", [ORG, REPO], ids=["org", "repo"])
def test_generate_jit_config(
    world: Any, make_client: Callable[..., GitHubClient], path: GitHubPath
) -> None:
    client = make_client()

    config = client.generate_jit_config(
        path, "ghr-small-abc123", ["self-hosted", "linux", "x64", "small"]
    )

    assert isinstance(config, JitConfig)
    assert config.runner_name == "ghr-small-abc123"
    assert config.encoded and config.encoded not in repr(config)
    listed = {r.name: r for r in client.list_runners(path)}
    assert listed["ghr-small-abc123"].id == config.runner_id
    assert "small" in listed["ghr-small-abc123"].labels


def test_jit_name_collision_with_a_never_connected_runner_is_resolved(
    world: Any, make_client: Callable[..., GitHubClient]
) -> None:
    client = make_client()
    first = client.generate_jit_config(ORG, "ghr-small-dup", ["self-hosted"])

    second = client.generate_jit_config(ORG, "ghr-small-dup", ["self-hosted"])

    assert second.runner_id != first.runner_id
    runners = client.list_runners(ORG)
    assert [(r.name, r.id) for r in runners] == [("ghr-small-dup", second.runner_id)]


def test_jit_name_collision_with_an_online_runner_is_refused(
    world: Any, make_client: Callable[..., GitHubClient]
) -> None:
    (runner_id,) = world.control.add_runners(1, org="acme", name_prefix="live", online=True)
    name = next(r["name"] for r in world.control.runners() if r["id"] == runner_id)
    client = make_client()

    with pytest.raises(GitHubError) as info:
        client.generate_jit_config(ORG, name, ["self-hosted"])

    assert info.value.status == 409
    assert client.get_runner(ORG, runner_id) is not None  # someone else's runner left alone


def test_jit_config_retried_after_5xx(world: Any, make_client: Callable[..., GitHubClient]) -> None:
    world.control.fault(route="/orgs/*/actions/runners/generate-jitconfig", status=502, count=2)
    client = make_client()

    config = client.generate_jit_config(ORG, "ghr-small-retry", ["self-hosted"])

    assert client.get_runner(ORG, config.runner_id) is not None
    assert client.stats()["by_operation"]["generate_jit_config"]["retries"] == 2


@pytest.mark.parametrize("path", [ORG, REPO], ids=["org", "repo"])
def test_registration_and_remove_tokens(
    world: Any, make_client: Callable[..., GitHubClient], path: GitHubPath
) -> None:
    client = make_client()
    reg = client.registration_token(path)
    rem = client.remove_token(path)
    assert reg and rem and reg != rem
    assert TOKEN not in (reg, rem)


def test_runner_applications(world: Any, make_client: Callable[..., GitHubClient]) -> None:
    version = world.control.settings()["runner_version"]
    client = make_client()

    apps = client.runner_applications(ORG)

    linux = [a for a in apps if a.os == "linux" and a.architecture == "x64"]
    assert len(linux) == 1
    app = linux[0]
    assert app.version == version
    assert app.filename.endswith(".tar.gz") and version in app.filename
    assert app.download_url.startswith(world.url)
    assert app.sha256_checksum is not None and len(app.sha256_checksum) == 64
    assert client.runner_applications(REPO)


def test_runner_group_id(world: Any, make_client: Callable[..., GitHubClient]) -> None:
    group_id = world.control.add_runner_group("acme", "big-machines")
    client = make_client()
    assert client.runner_group_id("acme", "default") == 1
    assert client.stats()["requests"] == 0
    assert client.runner_group_id("acme", "big-machines") == group_id
    assert client.runner_group_id("acme", "big-machines") == group_id
    assert client.stats()["by_operation"]["runner_group_id"]["requests"] == 1  # cached
    with pytest.raises(GitHubError, match="no runner group named 'nope'"):
        client.runner_group_id("acme", "nope")


def test_list_org_repos(world: Any, make_client: Callable[..., GitHubClient]) -> None:
    assert sorted(make_client().list_org_repos("acme")) == ["acme/app", "acme/lib"]


# ---------------------------------------------------------------------------- queued jobs poll
def test_queued_jobs_finds_jobs_and_repeats_cheaply(
    world: Any, make_client: Callable[..., GitHubClient]
) -> None:
    job_a = world.control.queue_job("acme/app", ["self-hosted", "linux", "large"], ["echo a"])
    job_b = world.control.queue_job("acme/lib", ["self-hosted", "mem=16000"], ["echo b"])
    client = make_client()

    jobs = client.queued_jobs(["acme/app", "acme/lib"])

    by_id = {j.id: j for j in jobs}
    assert set(by_id) == {job_a, job_b}
    assert by_id[job_a].repo == "acme/app"
    assert by_id[job_a].labels == ("self-hosted", "linux", "large")
    assert by_id[job_b].labels == ("self-hosted", "mem=16000")
    assert all(j.status == "queued" and j.runner_name is None for j in jobs)
    assert all(abs(j.created_at - time.time()) < 300 for j in jobs)
    units = client.stats()["rate_limit_units"]

    assert {j.id for j in client.queued_jobs(["acme/app", "acme/lib"])} == {job_a, job_b}
    stats = client.stats()
    assert stats["rate_limit_units"] == units  # nothing changed: every request was a 304
    assert stats["by_operation"]["queued_jobs"]["not_modified"] >= 4

    world.control.cancel_job(job_a)
    assert {j.id for j in client.queued_jobs(["acme/app", "acme/lib"])} == {job_b}


def test_queued_jobs_rejects_bad_repo_names(make_client: Callable[..., GitHubClient]) -> None:
    with pytest.raises(ValueError, match="owner/name"):
        make_client().queued_jobs(["acme"])


# ----------------------------------------------------------------------------------- errors
def test_bad_token_is_an_auth_error_without_the_token(
    world: Any, make_client: Callable[..., GitHubClient]
) -> None:
    bad = "ghp_wrong-token-do-not-print-0000"
    client = make_client(token=bad)

    with pytest.raises(GitHubAuthError) as info:
        client.list_runners(ORG)

    assert str(info.value) == "GitHub rejected the token (401): check the token's scopes"
    assert bad not in str(info.value) and TOKEN not in str(info.value)
    assert info.value.status == 401
    assert client.stats()["requests"] == 1  # not retried


def test_malformed_json_names_the_path(
    world: Any, make_client: Callable[..., GitHubClient]
) -> None:
    world.control.fault(route="/orgs/*/actions/runners", malformed=True, count=1)
    with pytest.raises(GitHubError) as info:
        make_client().list_runners(ORG)
    assert "/orgs/acme/actions/runners" in str(info.value)
    assert "malformed JSON" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_other_client_errors_name_the_status(
    world: Any, make_client: Callable[..., GitHubClient]
) -> None:
    world.control.fault(route="/orgs/*/actions/runners", status=422, count=1)
    with pytest.raises(GitHubError) as info:
        make_client().list_runners(ORG)
    assert info.value.status == 422
    assert "GET /orgs/acme/actions/runners" in str(info.value)


def test_plain_403_is_an_auth_error(world: Any, make_client: Callable[..., GitHubClient]) -> None:
    world.control.fault(route="/orgs/*/actions/runners", status=403, count=1)
    client = make_client()
    with pytest.raises(GitHubAuthError) as info:
        client.list_runners(ORG)
    assert info.value.status == 403
    assert TOKEN not in str(info.value)
    assert client.stats()["requests"] == 1


# ------------------------------------------------------------------------------ 5xx and hangs
def test_5xx_burst_succeeds_after_backoff(
    world: Any, make_client: Callable[..., GitHubClient]
) -> None:
    world.control.add_runners(2, org="acme", name_prefix="burst")
    world.control.fault(route="/orgs/*/actions/runners", status=502, count=3)
    client = make_client(backoff_initial=0.1, backoff_max=1.0)

    started = time.monotonic()
    runners = client.list_runners(ORG)
    elapsed = time.monotonic() - started

    assert len(runners) == 2
    stats = client.stats()
    assert stats["requests"] == 4
    assert stats["retries"] == 3
    assert elapsed >= 0.05 + 0.1 + 0.2  # the minimum of three jittered backoffs: it did wait


def test_5xx_forever_gives_up_after_bounded_attempts(
    world: Any, make_client: Callable[..., GitHubClient]
) -> None:
    world.control.fault(route="/orgs/*/actions/runners", status=503)
    client = make_client(max_attempts=3)
    with pytest.raises(GitHubError, match=r"503 \(gave up after 3 attempts\)") as info:
        client.list_runners(ORG)
    assert info.value.status == 503
    assert client.stats()["requests"] == 3


def test_hang_raises_a_timeout_in_bounded_time(
    world: Any, make_client: Callable[..., GitHubClient]
) -> None:
    world.control.fault(route="/orgs/*/actions/runners", hang=True, hang_seconds=30)
    client = make_client(timeout=0.5, max_attempts=2)

    started = time.monotonic()
    with pytest.raises(GitHubError, match="timeout") as info:
        client.list_runners(ORG)
    elapsed = time.monotonic() - started

    assert info.value.status is None
    assert elapsed < 3.0
    assert client.stats()["requests"] == 2


# ------------------------------------------------------------------------------- rate limits
def _nearly_spent(world: Any, client: GitHubClient, left: int) -> None:
    """Shrink the token's hourly budget so only ``left`` units remain."""
    client.list_org_repos("acme")
    used = int(client.stats()["used"])
    world.control.settings(rate_limit=used + left)


@pytest.mark.parametrize("status", [403, 429])
def test_retry_after_is_honoured_with_no_request_meanwhile(
    world: Any, make_client: Callable[..., GitHubClient], status: int
) -> None:
    world.control.add_runners(2, org="acme", name_prefix="rl")
    client = make_client()
    _nearly_spent(world, client, left=5)
    world.control.fault(route="/orgs/*/actions/runners", status=status, retry_after=2, count=1)
    world.control.reset_stats()

    started = time.time()
    runners = client.list_runners(ORG)
    finished = time.time()

    assert len(runners) == 2
    assert finished - started >= 2.0
    stats = world.control.stats()
    assert stats["faults_injected"] == 1
    log = stats["request_log"]
    # The emulator may or may not log the faulted answer; either way the only other request is the
    # retry, sent once the 2 s were over: nothing was sent during the wait.
    assert [e["status"] for e in log] in ([200], [status, 200])
    first = log[0]["time"] if len(log) == 2 else started
    assert log[-1]["time"] - first >= 2.0 - 0.05
    stats = client.stats()
    assert stats["rate_limit_waits"] == 1
    assert stats["remaining"] is not None and stats["remaining"] <= 5


def test_retry_after_longer_than_max_wait_raises_and_fails_fast(
    world: Any, make_client: Callable[..., GitHubClient]
) -> None:
    world.control.fault(route="/orgs/*/actions/runners", status=429, retry_after=120, count=1)
    client = make_client(max_wait=5)

    started = time.time()
    with pytest.raises(RateLimited) as info:
        client.list_runners(ORG)
    assert time.time() - started < 2.0
    assert info.value.retry_at == pytest.approx(started + 120, abs=3)

    world.control.reset_stats()
    with pytest.raises(RateLimited):  # still blocked: not a single request is sent
        client.registration_token(ORG)
    assert _log(world) == []


def test_spent_primary_budget_raises_rate_limited_and_stops_sending(
    world: Any, make_client: Callable[..., GitHubClient]
) -> None:
    client = make_client(max_wait=30)
    _nearly_spent(world, client, left=2)

    client.list_runners(ORG)
    client.list_runners(REPO)  # the last unit: remaining is 0 now
    assert client.stats()["remaining"] == 0
    world.control.reset_stats()

    with pytest.raises(RateLimited) as info:
        client.list_runners(ORG)

    reset = client.stats()["reset"]
    assert info.value.retry_at >= reset
    assert _log(world) == []  # the client knew the budget was spent and sent nothing


def test_spent_budget_answer_from_github_raises_rate_limited(
    world: Any, make_client: Callable[..., GitHubClient]
) -> None:
    other = make_client(max_wait=30)
    client = make_client(max_wait=30)
    _nearly_spent(world, other, left=0)
    world.control.reset_stats()

    with pytest.raises(RateLimited) as info:
        client.list_runners(ORG)  # this client has not seen the budget yet: GitHub says 403

    assert info.value.status == 403
    assert info.value.retry_at > time.time() + 30
    assert [e["status"] for e in _log(world)] == [403]
    with pytest.raises(RateLimited):
        client.list_runners(ORG)
    assert len(_log(world)) == 1


def test_requests_are_spread_out_under_the_reserve(
    world: Any, make_client: Callable[..., GitHubClient]
) -> None:
    client = make_client(reserve_fraction=0.5, pace_max=0.5)
    for _ in range(10):
        client.registration_token(ORG)
    assert client.stats()["waited_seconds"] == 0  # plenty left: nothing spread out

    used = int(client.stats()["used"])
    world.control.settings(rate_limit=used + 8)  # 8 of ~21 left: under the 50 % reserve
    client.registration_token(ORG)  # learns the low budget
    world.control.reset_stats()
    for _ in range(4):
        client.registration_token(ORG)

    times = [e["time"] for e in _log(world)]
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # sends are 0.5 s apart; the log stamps completions, so allow for uneven handling times
    assert min(gaps) >= 0.5 - 0.1, gaps
    assert client.stats()["remaining"] == 3
    assert client.stats()["waited_seconds"] > 0


# ------------------------------------------------------------------------- webhook deliveries
def test_failed_deliveries_are_listed_and_redelivered(
    world: Any, make_client: Callable[..., GitHubClient]
) -> None:
    from tests.parts import free_port

    dead_url = f"http://127.0.0.1:{free_port()}/webhook"  # nothing listens: every delivery fails
    hook_id = world.control.add_hook(dead_url, "hook-secret", org="acme")
    world.control.queue_job("acme/app", ["self-hosted"], ["echo hi"])
    assert world.control.wait_deliveries(timeout=30)
    client = make_client()

    hooks = client.list_hooks(ORG)
    assert [(h.id, h.url) for h in hooks] == [(hook_id, dead_url)]
    deliveries = client.hook_deliveries(ORG, hook_id)
    assert deliveries and all(not d.ok for d in deliveries)
    queued = next(d for d in deliveries if d.event == "workflow_job" and d.action == "queued")
    assert client.hook_deliveries(ORG, hook_id, since=time.time() + 60) == []

    assert client.redeliver(ORG, hook_id, queued.id) is True
    assert world.control.wait_deliveries(timeout=30)
    again = client.hook_deliveries(ORG, hook_id)
    assert any(d.redelivery and d.guid == queued.guid for d in again)
    assert client.redeliver(ORG, hook_id, 999_999) is False
    with pytest.raises(GitHubError, match="enterprises have no webhook"):
        client.hook_deliveries(GitHubPath.parse("enterprise:big"), 1)
