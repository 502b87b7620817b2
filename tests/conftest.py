"""Session-wide fixtures for the real parts. Each pytest-xdist worker owns its own servers."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.parts import RedisServer, start_redis  # noqa: E402

#: Where GitHub's API description lives: ../shared/github-api beside the checkout, or $GITHUB_API_SPEC_DIR.
SPEC_DIR = Path(os.environ.get("GITHUB_API_SPEC_DIR", ROOT.parent / "shared" / "github-api"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server per test session (per xdist worker)."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A clean Redis database for one test (FLUSHDB before and after)."""
    client = redis_server.client()
    client.flushdb()
    yield redis_server.url
    try:
        client.flushdb()
    except Exception:
        pass


@pytest.fixture
def emulator() -> Iterator[object]:
    """A fresh in-process GitHub emulator on a free loopback port (``.url``, ``.control``, ``.state``)."""
    from github_emulator.testing import start_emulator

    running = start_emulator(host="127.0.0.1", port=0)
    try:
        yield running
    finally:
        running.stop()


# On CI nothing may be skipped except the Juju integration tests (no juju binary can be installed here).
_FORBIDDEN_SKIPS: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    from tests.parts import ON_CI

    if ON_CI and report.skipped and not getattr(report, "wasxfail", None):
        longrepr = report.longrepr
        reason = str(longrepr[-1]) if isinstance(longrepr, tuple) else str(longrepr)
        if "juju" not in reason.lower():
            _FORBIDDEN_SKIPS.append((report.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _FORBIDDEN_SKIPS and exitstatus == 0 and not hasattr(session.config, "workerinput"):
        for nodeid, reason in _FORBIDDEN_SKIPS:
            print(f"\nskipped on CI (not allowed): {nodeid}: {reason}")
        session.exitstatus = 1
