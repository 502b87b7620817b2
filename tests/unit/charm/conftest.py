"""Fixtures for the charm tests: the manager is always the in-memory fake."""

from __future__ import annotations

import pytest
from ops import testing

from charm import GithubRunnerCharm
from charm_manager import FakeManager
from tests.unit.charm.helpers import context


@pytest.fixture
def fake_manager(monkeypatch: pytest.MonkeyPatch) -> FakeManager:
    """The one manager every charm instance in the test gets."""
    fake = FakeManager()
    monkeypatch.setattr(GithubRunnerCharm, "manager_factory", lambda: fake)
    return fake


@pytest.fixture
def ctx(fake_manager: FakeManager) -> testing.Context[GithubRunnerCharm]:
    """A Scenario context for the charm, wired to `fake_manager`."""
    return context()
