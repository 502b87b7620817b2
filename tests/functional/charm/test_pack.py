"""The packed charm: the layout Juju expects, an executable dispatch, and a venv that imports the workload."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "github-runner.charm"
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "pack-charm.sh"), "--force-script", "--output", str(out)],
        check=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    target = out.parent / "unpacked"
    with zipfile.ZipFile(out) as zf:
        zf.extractall(target)
        modes = {info.filename: info.external_attr >> 16 for info in zf.infolist()}
    (target / ".modes").write_text(repr(modes))
    return target


def test_charm_contains_the_yaml_files_and_an_executable_dispatch(unpacked: Path) -> None:
    for name in (
        "metadata.yaml",
        "config.yaml",
        "actions.yaml",
        "manifest.yaml",
        "src/charm.py",
        "dispatch",
    ):
        assert (unpacked / name).is_file(), name
    modes = eval((unpacked / ".modes").read_text())
    assert modes["dispatch"] & stat.S_IXUSR, "dispatch must be executable inside the .charm"
    assert "src/charm.py" in (unpacked / "dispatch").read_text()


def test_charm_venv_imports_ops_and_the_manager(unpacked: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            "import sys; sys.path[:0] = ['venv', 'src'];"
            "import ops, github_runner_manager, github_runner_manager.manager, charm;"
            "print(ops.__file__); print(github_runner_manager.__file__)",
        ],
        cwd=unpacked,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    ops_path, manager_path = result.stdout.split()
    assert ops_path.startswith(str(unpacked / "venv"))
    assert manager_path.startswith(str(unpacked / "venv"))


def test_charm_ships_what_the_unit_runs(unpacked: Path) -> None:
    """The service supervisor, the image builder and the COS rules and dashboard are inside."""
    for name in (
        "src/charm_service.py",
        "src/charm_manager.py",
        "src/cos/__init__.py",
        "src/cos/grafana_dashboards/github-runner.json",
        "src/cos/prometheus_alert_rules/github-runner.rules",
        "src/cos/loki_alert_rules/github-runner.rules",
        "scripts/build-runner-image.sh",
    ):
        assert (unpacked / name).is_file(), name
    result = subprocess.run(
        [sys.executable, "-I", "src/charm_service.py", "--help"],
        cwd=unpacked,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and "supervise" in result.stdout, result.stderr
