"""Juju integration tests: deploy the packed charm, configure it, run its actions, flush, remove.

They need a Juju controller and the ``juju`` binary. Neither can be installed on this project's machine kind
(no snap store), so here they skip with that reason; where a controller exists they run under jubilant.

The flows that need a GitHub the unit can reach take it from the environment: ``GITHUB_RUNNER_IT_PATH`` (an
org or owner/repo), ``GITHUB_RUNNER_IT_TOKEN`` (a token that may register runners there) and optionally
``GITHUB_RUNNER_IT_BACKEND`` (default ``lxd``). Without them only the flows that need no GitHub run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
APP = "github-runner"
UNIT = f"{APP}/0"

pytestmark = pytest.mark.skipif(
    shutil.which("juju") is None,
    reason="no juju binary on this machine (Juju cannot be installed here)",
)


@pytest.fixture(scope="module")
def juju() -> Iterator[Any]:
    jubilant = pytest.importorskip("jubilant", reason="jubilant (the juju client) is not installed")
    with jubilant.temp_model() as model:
        model.wait_timeout = 20 * 60
        yield model


@pytest.fixture(scope="module")
def charm() -> Path:
    path = ROOT / "github-runner.charm"
    assert path.exists(), "run `tox -e pack` first"
    return path


@pytest.fixture(scope="module")
def github() -> dict[str, str]:
    path, token = os.environ.get("GITHUB_RUNNER_IT_PATH"), os.environ.get("GITHUB_RUNNER_IT_TOKEN")
    if not path or not token:
        pytest.skip(
            "juju integration flows against GitHub need GITHUB_RUNNER_IT_PATH and GITHUB_RUNNER_IT_TOKEN"
        )
    return {
        "path": path,
        "token": token,
        "backend": os.environ.get("GITHUB_RUNNER_IT_BACKEND", "lxd"),
    }


def unit_status(juju: Any) -> tuple[str, str]:
    status = juju.status().apps[APP].units[UNIT].workload_status
    return status.current, status.message


def test_invalid_config_blocks_naming_the_option(juju: Any, charm: Path) -> None:
    juju.deploy(str(charm), APP, config={"path": "acme/app/extra", "test-mode": True, "token": "t"})
    juju.wait(lambda status: status.apps[APP].is_blocked)
    current, message = unit_status(juju)
    assert current == "blocked" and message.startswith("path: ")
    import jubilant

    with pytest.raises(jubilant.TaskError):  # actions refuse an invalid configuration
        juju.run(UNIT, "reconcile-runners")


def test_plain_token_outside_test_mode_blocks(juju: Any) -> None:
    juju.config(APP, {"path": "acme", "test-mode": False, "token": "ghp_plain"})
    juju.wait(lambda status: status.apps[APP].is_blocked)
    assert unit_status(juju)[1].startswith("token: a plain value is not accepted")


def test_token_from_a_juju_secret_configures_and_acts(juju: Any, github: dict[str, str]) -> None:
    secret = juju.add_secret("github-token", {"token": github["token"]})
    juju.grant_secret(secret, APP)
    juju.config(
        APP,
        {"path": github["path"], "token": str(secret), "test-mode": False,
         "backend": github["backend"], "virtual-machines": 1},
    )  # fmt: skip
    juju.wait(lambda status: status.apps[APP].is_active)
    assert unit_status(juju)[1].endswith(("idle, 0 busy", "busy"))

    task = juju.run(UNIT, "check-runners")
    assert set(task.results) >= {"online", "busy", "offline", "unknown", "runners"}
    task = juju.run(UNIT, "dump-config")
    dumped = yaml.safe_load(task.results["config"])
    assert dumped["github"]["token"] == "**********"
    assert github["token"] not in task.results["config"]
    task = juju.run(UNIT, "reconcile-runners")
    assert "delta" in task.results
    task = juju.run(UNIT, "update-runner-bin")
    assert len(task.results["sha256"]) == 64


def test_scale_and_flush(juju: Any, github: dict[str, str]) -> None:
    juju.config(APP, {"virtual-machines": 2})
    juju.wait(lambda status: status.apps[APP].is_active)
    juju.run(UNIT, "reconcile-runners")
    task = juju.run(UNIT, "flush-runners", {"flush-busy": True})
    assert int(task.results["flushed"]) >= 0
    task = juju.run(UNIT, "check-runners")
    assert int(task.results["busy"]) == 0


def test_second_unit_without_shared_redis_blocks(juju: Any, github: dict[str, str]) -> None:
    juju.add_unit(APP)
    juju.wait(lambda status: status.apps[APP].is_blocked)
    messages = {u.workload_status.message for u in juju.status().apps[APP].units.values()}
    assert "several units need a shared Redis: relate to a redis charm or set redis-url" in messages
    juju.remove_unit(f"{APP}/1")
    juju.wait(lambda status: len(status.apps[APP].units) == 1 and status.apps[APP].is_active)


def test_remove_flushes_everything(juju: Any, github: dict[str, str]) -> None:
    juju.remove_unit(UNIT)
    juju.wait(lambda status: not status.apps[APP].units)
