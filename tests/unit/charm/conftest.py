"""Fixtures for the charm tests: the manager is always the in-memory fake."""

from __future__ import annotations

import functools
import importlib
import types
from collections.abc import Iterator

import pytest
import yaml
from ops import testing

from charm import GithubRunnerCharm
from charm_manager import FakeManager
from tests.unit.charm.helpers import context


@pytest.fixture(scope="session", autouse=True)
def _libyaml_for_scenario() -> Iterator[None]:
    """Let Scenario write its per-run metadata files with libyaml instead of pure Python.

    Scenario dumps metadata/config/actions for every `ctx.run`; with PyYAML's pure-Python
    emitter that is half of each run's CPU time, which the 500-example config fuzz test feels.
    Only the speed changes; where libyaml or the hook is missing the tests run as they are.
    """
    runtime = importlib.import_module("scenario._runtime")
    if not yaml.__with_libyaml__ or getattr(runtime, "yaml", None) is not yaml:
        yield
        return
    fast = types.SimpleNamespace(**{name: getattr(yaml, name) for name in dir(yaml)})
    fast.safe_dump = functools.partial(yaml.dump, Dumper=yaml.CSafeDumper)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime, "yaml", fast)
        yield


@pytest.fixture(autouse=True)
def _never_the_real_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests never drive the real manager (it would touch the machine and the network)."""
    monkeypatch.setattr(GithubRunnerCharm, "manager_factory", FakeManager)


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
