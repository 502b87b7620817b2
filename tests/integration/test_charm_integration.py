"""Juju integration tests: deploy the packed charm, configure it, run its actions, flush.

They need a Juju controller and the ``juju`` binary. Neither can be installed on this project's machine kind
(no snap store), so here they skip with that reason; where a controller exists they run under jubilant.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("juju") is None, reason="no juju binary on this machine (Juju cannot be installed here)"
)


@pytest.fixture(scope="module")
def juju():  # noqa: ANN201 - jubilant.Juju
    jubilant = pytest.importorskip("jubilant", reason="jubilant (the juju client) is not installed")
    with jubilant.temp_model() as model:
        yield model


def test_deploy_configure_act_flush(juju) -> None:  # noqa: ANN001
    charm = ROOT / "github-runner.charm"
    assert charm.exists(), "run `tox -e pack` first"
    juju.deploy(str(charm), "github-runner", config={"path": "acme", "test-mode": True, "backend": "fake"})
    juju.wait(lambda status: status.apps["github-runner"].is_blocked or status.apps["github-runner"].is_active)
    juju.config("github-runner", {"virtual-machines": 2})
    task = juju.run("github-runner/0", "check-runners")
    assert {"online", "busy", "offline", "unknown", "runners"} <= set(task.results)
    task = juju.run("github-runner/0", "flush-runners", {"flush-busy": True})
    assert "flushed" in task.results
