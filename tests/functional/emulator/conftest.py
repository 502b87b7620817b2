"""Fixtures for the emulator's functional tests: a fresh emulator per test, GitHub's published
API description (../shared/github-api), and a webhook receiver that validates every payload."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from emulator_testlib import ENTERPRISE, ORG, REPO, TOKEN, HookReceiver, spec_dir_or_none

from github_emulator.testing import RunningEmulator, start_emulator


@pytest.fixture(scope="session")
def spec_dir() -> Path:
    found = spec_dir_or_none()
    if found is None:
        message = (
            "GitHub's API description (../shared/github-api/github-runners-api.json) was not found; "
            "set GITHUB_API_SPEC_DIR"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def api_spec(spec_dir: Path) -> dict[str, Any]:
    return json.loads((spec_dir / "github-runners-api.json").read_text())


@pytest.fixture(scope="session")
def webhook_spec(spec_dir: Path) -> dict[str, Any]:
    return json.loads((spec_dir / "workflow_job-webhook.json").read_text())


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., RunningEmulator]]:
    started: list[RunningEmulator] = []

    def start(**options: Any) -> RunningEmulator:
        options.setdefault("orgs", [ORG])
        options.setdefault("repos", [REPO, "acme/lib", "solo/tool"])
        options.setdefault("enterprises", [ENTERPRISE])
        options.setdefault("tokens", [TOKEN])
        emu = start_emulator(**options)
        started.append(emu)
        return emu

    yield start
    for emu in started:
        emu.stop()


@pytest.fixture
def emu(emulator_factory: Callable[..., RunningEmulator]) -> RunningEmulator:
    return emulator_factory()


@pytest.fixture
def gh(emu: RunningEmulator) -> Callable[..., requests.Response]:
    """``gh("GET", "/orgs/acme/actions/runners", json=...)`` with the test token."""
    session = requests.Session()
    session.headers["Authorization"] = f"token {TOKEN}"
    session.headers["Accept"] = "application/vnd.github+json"

    def call(method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return session.request(method, emu.url + path, **kwargs)

    return call


@pytest.fixture
def hook_receiver(webhook_spec: dict[str, Any]) -> Iterator[HookReceiver]:
    receiver = HookReceiver(webhook_spec)
    yield receiver
    receiver.close()
    assert not receiver.errors, f"webhook payloads failed the octokit schema: {receiver.errors}"
