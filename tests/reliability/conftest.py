"""Fixtures of the reliability campaigns: the emulator world, a private Redis, a fleet of managers.

See ``harness.py`` for the machinery and ``README.md`` for how to run the short (CI) and the full
(``CHAOS_FULL=1`` / ``tox -e chaos``) forms with a given ``CHAOS_SEED``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.harness import FULL, SEED, Fleet, RedisProc, setup_world


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: a reliability campaign (tests/reliability)")


def pytest_report_header(config: pytest.Config) -> str:
    return f"reliability campaigns: CHAOS_SEED={SEED} form={'full' if FULL else 'short'}"


@pytest.fixture
def gh() -> Iterator[Any]:
    """A fresh emulator with the campaign world (org acme, repos acme/app and acme/lib, our token).

    GitHub's ``busy`` flag lags one second behind a job's start, as on github.com (the hazard that
    gets busy runners killed elsewhere); the secondary write limit is raised so that fleets churning
    through hundreds of ephemeral runners are not throttled (campaign 3 injects it on purpose).
    """
    from github_emulator.testing import start_emulator

    running = start_emulator(host="127.0.0.1", port=0, busy_lag=1.0, secondary_limit=5000)
    try:
        setup_world(running)
        yield running
    finally:
        running.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProc]:
    """A redis-server of this test only, persistent across its own stop/start."""
    server = RedisProc(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fleet(gh: Any, redis_url: str, tmp_path: Path) -> Iterator[Fleet]:
    """An empty fleet on the session Redis (clean DB) and ``gh``; every process is killed at the end."""
    fleet = Fleet(gh, redis_url, tmp_path)
    try:
        yield fleet
    finally:
        fleet.close()


@pytest.fixture
def private_fleet(gh: Any, private_redis: RedisProc, tmp_path: Path) -> Iterator[Fleet]:
    """A fleet on ``private_redis`` (for campaigns that stop or empty Redis)."""
    fleet = Fleet(gh, private_redis.url, tmp_path)
    try:
        yield fleet
    finally:
        fleet.close()
