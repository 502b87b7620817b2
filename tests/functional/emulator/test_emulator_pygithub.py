"""PyGithub, unmodified, against the emulator: the client the manager is built on."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from emulator_testlib import ORG, REPO, TOKEN
from github import Auth, Github, GithubException

from github_emulator.testing import RunningEmulator


@pytest.fixture
def client(emu: RunningEmulator) -> Iterator[Github]:
    g = Github(base_url=emu.url, auth=Auth.Token(TOKEN), **FAST)
    yield g
    g.close()


# PyGithub throttles itself (0.25 s between requests, 1 s between writes) by default.
FAST: dict[str, Any] = {
    "retry": None,
    "timeout": 30,
    "seconds_between_requests": 0,
    "seconds_between_writes": 0,
}


def _decode(encoded: str) -> dict[str, Any]:
    return json.loads(base64.b64decode(encoded))


def test_org_runners_tokens_and_jit(client: Github, emu: RunningEmulator) -> None:
    org = client.get_organization(ORG)
    assert list(org.get_self_hosted_runners()) == []

    jit = org.create_self_hosted_runner_jitconfig(
        "org-runner-1", 1, ["self-hosted", "linux", "large"]
    )
    assert jit.runner.name == "org-runner-1"
    assert jit.runner.status == "offline"
    config = _decode(jit.encoded_jit_config)
    assert config["agent_url"] == emu.url
    assert config["runner_id"] == jit.runner.id
    assert TOKEN not in base64.b64decode(jit.encoded_jit_config).decode()

    runners = list(org.get_self_hosted_runners())
    assert [r.name for r in runners] == ["org-runner-1"]
    fetched = org.get_self_hosted_runner(jit.runner.id)
    assert fetched.id == jit.runner.id
    assert {label["name"] for label in fetched.labels} == {"self-hosted", "linux", "large"}
    assert fetched.busy is False

    registration = org.create_self_hosted_runner_registration_token()
    remove = org.create_self_hosted_runner_remove_token()
    assert registration.token and remove.token and registration.token != remove.token
    assert registration.expires_at is not None

    org.delete_self_hosted_runner(jit.runner.id)
    assert list(org.get_self_hosted_runners()) == []
    with pytest.raises(GithubException) as exc:
        org.get_self_hosted_runner(jit.runner.id)
    assert exc.value.status == 404


def test_repo_runners_tokens_and_jit_through_the_requester(
    client: Github, emu: RunningEmulator
) -> None:
    repo = client.get_repo(REPO)
    assert repo.full_name == REPO
    assert repo.url.startswith(emu.url)

    # PyGithub has no repo-level JIT helper; go through its requester, as the manager does.
    _, data = repo._requester.requestJsonAndCheck(
        "POST",
        f"{repo.url}/actions/runners/generate-jitconfig",
        input={"name": "repo-runner-1", "runner_group_id": 1, "labels": ["self-hosted", "small"]},
    )
    runner_id = data["runner"]["id"]
    assert _decode(data["encoded_jit_config"])["scope"] == f"repo:{REPO}"

    runners = list(repo.get_self_hosted_runners())
    assert [r.id for r in runners] == [runner_id]
    assert repo.get_self_hosted_runner(runner_id).name == "repo-runner-1"

    for kind in ("registration-token", "remove-token"):
        _, token = repo._requester.requestJsonAndCheck("POST", f"{repo.url}/actions/runners/{kind}")
        assert token["token"] and token["expires_at"]

    assert repo.remove_self_hosted_runner(runner_id) is True
    assert list(repo.get_self_hosted_runners()) == []
    # An org-level listing never shows repo-level runners.
    assert list(client.get_organization(ORG).get_self_hosted_runners()) == []


def test_250_runners_page_correctly_at_100_per_page(
    emulator_factory: Callable[..., RunningEmulator],
) -> None:
    emu = emulator_factory()
    ids = emu.control.add_runners(250, org=ORG, name_prefix="bulk")
    g = Github(base_url=emu.url, auth=Auth.Token(TOKEN), per_page=100, **FAST)
    emu.control.reset_stats()
    runners = list(g.get_organization(ORG).get_self_hosted_runners())
    assert [r.id for r in runners] == ids
    assert len({r.name for r in runners}) == 250
    stats = emu.control.stats()
    assert stats["requests"]["actions/list-self-hosted-runners-for-org"] == 3
    listed = [e for e in stats["request_log"] if e["path"].endswith("/actions/runners")]
    assert [e["status"] for e in listed] == [200, 200, 200]
    g.close()


def test_rate_limit_and_unknown_token(client: Github, emu: RunningEmulator) -> None:
    overview = client.get_rate_limit()
    assert overview.resources.core.limit == 5000
    bad = Github(base_url=emu.url, auth=Auth.Token("ghp_unknown"), **FAST)
    with pytest.raises(GithubException) as exc:
        bad.get_repo(REPO)
    assert exc.value.status == 401
    assert exc.value.data["message"] == "Bad credentials"
    bad.close()
