"""The emulator's decisions as plain data: routing, limits, faults, the runner archive."""

from __future__ import annotations

import base64
import json

import pytest

from github_emulator.faults import FaultInjector
from github_emulator.ratelimit import RateLimiter
from github_emulator.runner_app import build_tarball
from github_emulator.settings import Seed, Settings
from github_emulator.state import EmulatorError, EmulatorState, token_key


@pytest.fixture
def state() -> EmulatorState:
    return EmulatorState(
        Settings(), Seed(orgs=["acme"], repos=["acme/app", "acme/lib"], tokens={"t": None})
    )


def online(state: EmulatorState, org: str, labels: list[str], group: int = 1) -> int:
    runner = state.create_runner(
        "org", org, f"r{len(state.runners)}", labels, runner_group_id=group
    )
    state.agent_seen(runner)
    return runner.id


def test_labels_must_cover_the_job_case_insensitively(state: EmulatorState) -> None:
    small = state.runners[online(state, "acme", ["Linux", "small"])]
    job = state.queue_job("acme/app", ["self-hosted", "linux", "LARGE"], ["true"])
    assert state.take_job(small) is None
    large = state.runners[online(state, "acme", ["linux", "large"])]
    assert state.take_job(large) is job
    assert (job.status, job.runner_name) == ("in_progress", large.name)


def test_groups_restrict_repos(state: EmulatorState) -> None:
    group = state.add_runner_group("acme", "lib-only", ["acme/lib"])
    runner = state.runners[online(state, "acme", ["x"], group.id)]
    for_app = state.queue_job("acme/app", ["x"], ["true"])
    assert state.take_job(runner) is None and for_app.status == "queued"
    for_lib = state.queue_job("acme/lib", ["x"], ["true"])
    assert state.take_job(runner) is for_lib


def test_ephemeral_runner_is_removed_after_its_job(state: EmulatorState) -> None:
    runner = state.runners[online(state, "acme", ["x"])]
    job = state.queue_job("acme/app", ["x"], ["exit 3"])
    assert state.take_job(runner) is job
    state.step_finished(runner, job, 1, 3, "", None)
    assert state.complete_job(runner, job, None) is True
    assert job.conclusion == "failure" and runner.id not in state.runners


def test_busy_runner_cannot_be_deleted_and_busy_flag_lags(state: EmulatorState) -> None:
    state.settings.busy_lag = 5.0
    runner = state.runners[online(state, "acme", ["x"])]
    state.queue_job("acme/app", ["x"], ["true"])
    job = state.take_job(runner)
    assert job is not None and job.started_at is not None
    assert state.reported_busy(runner, job.started_at + 1) is False
    assert state.reported_busy(runner, job.started_at + 6) is True
    with pytest.raises(EmulatorError) as exc:
        state.delete_runner(runner)
    assert exc.value.status == 422


def test_unused_jit_registrations_expire_on_tick(state: EmulatorState) -> None:
    runner = state.create_runner("org", "acme", "jit", ["x"])
    state.tick(runner.created_at + state.settings.jit_expiry - 1)
    assert runner.id in state.runners
    state.tick(runner.created_at + state.settings.jit_expiry + 1)
    assert runner.id not in state.runners


def test_duplicate_names_conflict_per_scope(state: EmulatorState) -> None:
    state.create_runner("org", "acme", "same", ["x"])
    with pytest.raises(EmulatorError) as exc:
        state.create_runner("org", "acme", "same", ["x"])
    assert exc.value.status == 409
    state.create_runner("repo", "acme/app", "same", ["x"])  # another scope: fine


def test_jit_config_carries_the_agent_secret_not_the_token(state: EmulatorState) -> None:
    runner = state.create_runner("org", "acme", "jit", ["x"])
    config = json.loads(base64.b64decode(state.jit_config(runner, "http://10.0.0.1:8080/")))
    assert config["agent_url"] == "http://10.0.0.1:8080"
    assert config["agent_secret"] == runner.secret
    assert "t" not in config.values()


def test_primary_budget_and_refund() -> None:
    limiter = RateLimiter(Settings(rate_limit=2))
    assert limiter.reserve("k")[0] and limiter.reserve("k")[0]
    ok, budget = limiter.reserve("k")
    assert not ok and budget.remaining == 0
    assert limiter.refund("k").remaining == 1


def test_secondary_limit_gives_a_retry_after() -> None:
    limiter = RateLimiter(Settings(secondary_limit=10, write_cost=5))
    assert limiter.charge_write("k") is None
    assert limiter.charge_write("k") is None
    wait = limiter.charge_write("k")
    assert wait is not None and 1 <= wait <= 60
    assert RateLimiter(Settings(secondary_limit=0)).charge_write("k") is None


def test_fault_matching_by_operation_glob_and_count() -> None:
    faults = FaultInjector()
    faults.add({"route": "/orgs/*/actions/runners", "status": 503, "count": 1})
    faults.add({"route": "actions/get-self-hosted-runner-for-org", "status": 500})
    assert faults.match("GET", "/orgs/acme/actions/runners", "x") is not None
    assert faults.match("GET", "/orgs/acme/actions/runners", "x") is None
    assert faults.match(
        "GET", "/orgs/acme/actions/runners/1", "actions/get-self-hosted-runner-for-org"
    )
    with pytest.raises(EmulatorError):
        faults.add({"route": "*"})


def test_runner_archive_is_reproducible() -> None:
    assert build_tarball("2.321.0") == build_tarball("2.321.0")
    assert build_tarball("2.321.0") != build_tarball("2.322.0")
    with pytest.raises(ValueError):
        build_tarball("../../etc")


def test_token_key_hides_the_token() -> None:
    key = token_key("ghp_abcdefghijklmnop")
    assert "abcdefghijklmnop" not in key and key.startswith("ghp_")
