"""``github-runner-manager demo`` as the operator runs it: a subprocess, its exit status and its JSON summary.

The demo starts its own redis-server, GitHub emulator and manager, queues real jobs and removes everything
it started; these tests check what it reports (every job completed, no runner left, pickup figures and
GitHub calls measured) and that it says clearly what it cannot do. The LXD run needs a running LXD
(``scripts/start-lxd.sh``, as the LXD tests start it): skipped locally without one, failed on CI.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.parts import unavailable

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("GHRM_TEST_CACHE", "/var/cache/github-runner-tests"))
KEYS = ("backend", "jobs_total", "jobs_completed", "pickup_p50_s", "pickup_p95_s",
        "github_requests", "rate_limit_units", "runners_left")  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.pop("GITHUB_TOKEN", None)
    env.pop("GITHUB_RUNNER_MANAGER_CONFIG", None)
    env.update(extra)
    return env


def run_demo(*args: str, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "github_runner_manager.cli", "demo", *args],
        capture_output=True, text=True, timeout=timeout, env=_env(**env), check=False, cwd=ROOT,
    )  # fmt: skip


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_summary(summary: dict[str, Any], backend: str, jobs: int) -> None:
    for key in KEYS:
        assert key in summary, f"summary lacks {key}"
    assert summary["backend"] == backend
    assert summary["jobs_total"] == jobs
    assert summary["jobs_completed"] == jobs
    assert summary["jobs_succeeded"] == jobs
    assert summary["runners_left"] == 0, summary["runners_left_detail"]
    assert summary["runners_left_detail"] == {"instances": 0, "github": 0, "records": 0}
    assert _is_number(summary["pickup_p50_s"]) and _is_number(summary["pickup_p95_s"])
    assert 0 <= summary["pickup_p50_s"] <= summary["pickup_p95_s"]
    assert summary["github_requests"] > 0
    assert _is_number(summary["rate_limit_units"]) and summary["rate_limit_units"] > 0
    assert summary["webhook_deliveries"] >= 3 * jobs  # queued, in_progress, completed per job
    assert summary["error"] is None and not summary["timed_out"]
    groups = {job["group"] for job in summary["jobs"]}
    assert groups == {"small", "large"}, "jobs go over both label sets"
    for job in summary["jobs"]:
        assert job["conclusion"] == "success"
        assert job["runner"] and job["runner"].split("-")[1] == job["group"]
        assert job["hello"].startswith("hello from ")


def start_part(script: str, what: str) -> None:
    """Run ``scripts/<script>`` (idempotent) under the lock the other tests use, or the part is unavailable."""
    if os.geteuid() != 0:
        unavailable(f"the {what} demo needs root (scripts/{script} starts the daemon)")
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed (scripts/dev-setup.sh installs it)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{script.removesuffix('.sh')}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = subprocess.run(
            ["bash", str(ROOT / "scripts" / script)],
            capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
    if started.returncode != 0:
        unavailable(
            f"scripts/{script} failed ({started.returncode}): "
            f"{(started.stderr or started.stdout)[-600:]}"
        )


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr


def test_help_says_what_the_demo_does_and_its_flags() -> None:
    result = run_demo("--help", timeout=60, COLUMNS="200")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for flag in ("--jobs", "--backend", "--json", "--timeout"):
        assert flag in text
    assert "auto|lxd|docker|local" in text
    assert "emulator" in text and "Redis" in text and "summary" in text
    assert "no --config needed" in text


def test_readme_first_command_shows_the_same_help() -> None:
    # scripts/demo.sh is the README's first command; with --help it shows the demo's help at once
    assert os.access(ROOT / "scripts" / "demo.sh", os.X_OK)
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh"), "--help"],
        capture_output=True, text=True, timeout=600, env=_env(COLUMNS="200"), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "github-runner-manager demo" in result.stdout
    for flag in ("--jobs", "--backend", "--json", "--timeout"):
        assert flag in result.stdout


def test_bad_flags_are_usage_errors() -> None:
    for args in (["--jobs", "0"], ["--backend", "kubernetes"]):
        result = run_demo(*args, timeout=60)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        _no_traceback(result)


def test_a_part_that_cannot_start_is_one_clear_line(tmp_path: Path) -> None:
    # no redis-server on PATH: the demo says so in one line and leaves nothing behind
    empty = tmp_path / "bin"
    empty.mkdir()
    out = tmp_path / "summary.json"
    result = run_demo("--backend", "local", "--jobs", "2", "--json", str(out), timeout=120,
                      PATH=str(empty))  # fmt: skip
    assert result.returncode == 1
    _no_traceback(result)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors and "redis-server is not installed" in errors[0], result.stderr
    summary = json.loads(out.read_text())
    assert summary["error"] and summary["jobs_completed"] == 0


def test_demo_with_local_processes(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed (scripts/dev-setup.sh installs it)")
    out = tmp_path / "summary.json"
    result = run_demo("--backend", "local", "--jobs", "4", "--json", str(out), "--timeout", "240",
                      timeout=300)  # fmt: skip
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
    _no_traceback(result)
    summary = json.loads(out.read_text())
    check_summary(summary, "local", 4)
    # the warm group picks up from its pool of two: its first jobs start within a second or two
    assert summary["pickup_by_group"]["small"]["p50_s"] < 2.0
    assert "runners left" in result.stdout and "OK" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_with_lxd(tmp_path: Path) -> None:
    start_part("start-lxd.sh", "LXD")
    out = tmp_path / "summary.json"
    result = run_demo("--backend", "lxd", "--jobs", "4", "--json", str(out), "--timeout", "1000",
                      timeout=1100)  # fmt: skip
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    _no_traceback(result)
    summary = json.loads(out.read_text())
    check_summary(summary, "lxd", 4)
    assert summary["image"] == "ghrm-demo-debian-bookworm"
    for job in summary["jobs"]:
        # the step ran inside the runner's container: its hostname is the runner's name
        assert job["hello"] == f"hello from {job['runner']}"
    listed = subprocess.run(["lxc", "list", "--format", "json"], capture_output=True, text=True,
                            timeout=60, check=True)  # fmt: skip
    prefixes = {job["runner"].split("-")[0] for job in summary["jobs"]}
    assert not [i["name"] for i in json.loads(listed.stdout) if i["name"].split("-")[0] in prefixes]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_with_docker(tmp_path: Path) -> None:
    start_part("start-dockerd.sh", "Docker")
    out = tmp_path / "summary.json"
    result = run_demo("--backend", "docker", "--jobs", "4", "--json", str(out), "--timeout", "1000",
                      timeout=1100)  # fmt: skip
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    _no_traceback(result)
    summary = json.loads(out.read_text())
    check_summary(summary, "docker", 4)
    assert summary["image"].startswith("ghrm-demo-runner:")
    for job in summary["jobs"]:
        assert job["hello"] == f"hello from {job['runner']}"
    listed = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True,
                            text=True, timeout=60, check=True)  # fmt: skip
    prefixes = {job["runner"].split("-")[0] for job in summary["jobs"]}
    assert not [n for n in listed.stdout.split() if n.split("-")[0] in prefixes]
